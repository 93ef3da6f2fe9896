"""Ray Serve's own autoscaling policy as a decision process, for ``autoscale-trace``.

Run with the Python of a venv that has ``ray[serve]`` (``trace.ensure_ray`` makes one
in ``load/out/ray``). One JSON object a line on stdin, ``{"now", "running", "target",
"ongoing"}`` (virtual seconds; running replicas; the last decision; ongoing requests,
running and queued, averaged over Ray's 30 s look-back), one decision a line on stdout.
The policy is Ray's default, ``replica_queue_length_autoscaling_policy``, wrapped as
Ray's controller wraps it (``_apply_autoscaling_config``: scaling factors, the 30 s
upscale and 600 s downscale delays, the cold-start fast path), with its defaults but
the trace's target and bounds. Its delays read ``time.time()``; that clock is the
trace's virtual one here, and nothing else of Ray is changed.
"""

from __future__ import annotations

import json
import sys
import types

import ray.serve.autoscaling_policy as policy  # type: ignore[import-not-found]
from ray.serve._private.common import DeploymentID  # type: ignore[import-not-found]
from ray.serve.config import AutoscalingConfig, AutoscalingContext  # type: ignore[import-not-found]


def main() -> None:
    target, most = float(sys.argv[1]), int(sys.argv[2])
    config = AutoscalingConfig(min_replicas=0, max_replicas=most, target_ongoing_requests=target)
    clock = types.SimpleNamespace(now=0.0)
    policy.time = types.SimpleNamespace(time=lambda: clock.now)  # the trace's clock
    decide = policy._apply_autoscaling_config(policy.replica_queue_length_autoscaling_policy)
    state: dict[str, object] = {}
    deployment = DeploymentID(name="pool", app_name="trace")
    for line in sys.stdin:
        seen = json.loads(line)
        clock.now = seen["now"]
        ctx = AutoscalingContext(
            deployment_id=deployment, deployment_name="pool", app_name="trace",
            current_num_replicas=seen["running"], target_num_replicas=seen["target"],
            running_replicas=[], total_num_requests=seen["ongoing"], total_queued_requests=None,
            aggregated_metrics=None, raw_metrics=None, capacity_adjusted_min_replicas=0,
            capacity_adjusted_max_replicas=most, policy_state=state, last_scale_up_time=None,
            last_scale_down_time=None, current_time=seen["now"], config=config,
        )  # fmt: skip
        desired, state = decide(ctx)
        print(min(max(int(desired), 0), most), flush=True)


if __name__ == "__main__":
    main()
