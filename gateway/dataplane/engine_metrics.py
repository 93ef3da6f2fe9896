"""An LLM engine's own account of its load, read from its Prometheus ``/metrics`` text.

The gateway counts what it sent; the engine knows what it holds: requests from other
clients, its queue when its KV cache is full, how full that cache is. The names read:

* vLLM (docs.vllm.ai, "Production Metrics"): ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (V1; V0's
  ``vllm:gpu_cache_usage_perc``), a share 0..1;
* SGLang (docs.sglang.io, "Production Metrics"): ``sglang:num_running_reqs``,
  ``sglang:num_queue_reqs``, ``sglang:token_usage`` (0..1).

Samples of one name are summed over their labels (an engine may export one series per
model or data-parallel rank); KV usage, a share, is averaged. Pure and tolerant: junk
lines, comments, other metrics, NaN and missing names are passed over; with no running
or waiting figure at all the text is not an engine's (None).
"""

from __future__ import annotations

import math

from gateway.dataplane.replica import EngineLoad

RUNNING = frozenset({"vllm:num_requests_running", "sglang:num_running_reqs"})
WAITING = frozenset({"vllm:num_requests_waiting", "sglang:num_queue_reqs"})
KV_USAGE = frozenset(
    {"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"}
)
_NAMES = RUNNING | WAITING | KV_USAGE


def parse(text: str, at: float) -> EngineLoad | None:
    """The load ``text`` reports, stamped ``at``; None when it names none of it."""
    running = waiting = None
    kv: list[float] = []
    for line in text.splitlines():
        if not line.startswith(("vllm:", "sglang:")):
            continue
        sample = _sample(line)
        if sample is None:
            continue
        name, value = sample
        if name in RUNNING:
            running = (running or 0.0) + value
        elif name in WAITING:
            waiting = (waiting or 0.0) + value
        else:
            kv.append(value)
    if running is None and waiting is None:
        return None
    usage = min(max(sum(kv) / len(kv), 0.0), 1.0) if kv else None
    return EngineLoad(running or 0.0, waiting or 0.0, usage, at)


def _sample(line: str) -> tuple[str, float] | None:
    """(name, value) of one exposition line if it is one of ours with a finite value."""
    brace = line.find("{")
    if brace >= 0:
        name, close = line[:brace], line.rfind("}")
        rest = line[close + 1 :] if close > brace else ""
    else:
        name, _, rest = line.partition(" ")
    if name not in _NAMES:
        return None
    fields = rest.split()
    try:
        value = float(fields[0]) if fields else math.nan
    except ValueError:
        return None
    return (name, value) if math.isfinite(value) and value >= 0 else None
