"""An LLM engine's own account of its load, read from its Prometheus ``/metrics`` text.

The gateway counts what it sent; the engine knows what it holds: requests from other
clients, its queue when its KV cache is full, how full that cache is. The names read:

* vLLM (docs.vllm.ai, "Production Metrics"): ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (V1; V0's
  ``vllm:gpu_cache_usage_perc``), a share 0..1;
* SGLang (docs.sglang.io, "Production Metrics"): ``sglang:num_running_reqs``,
  ``sglang:num_queue_reqs``, ``sglang:token_usage`` (0..1).

And the size of the KV cache, in tokens, which bounds what the prefix index may believe
an engine holds: vLLM's ``vllm:cache_config_info`` (its labels ``num_gpu_blocks`` x
``block_size``), SGLang's ``sglang:max_total_num_tokens``.

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
KV_TOKENS = "sglang:max_total_num_tokens"
CACHE_INFO = "vllm:cache_config_info"
_NAMES = RUNNING | WAITING | KV_USAGE | {KV_TOKENS}


MAX_SAMPLES = 256  # series of one name read at most: an engine has a few, not thousands
MAX_LINE = 4096  # a longer sample line is skipped


def parse(body: bytes, at: float) -> EngineLoad | None:
    """The load ``body`` reports, stamped ``at``; None when it names none of it. Each name
    is looked for with ``bytes.find`` at line starts, so a huge body of other lines costs
    a scan, never a Python step per line (4 MiB of junk: milliseconds)."""
    text = b"\n" + body
    running = waiting = None
    kv: list[float] = []
    tokens: float | None = None
    for name in _NAMES:
        for _, value in _samples(text, name.encode()):
            if name in RUNNING:
                running = (running or 0.0) + value
            elif name in WAITING:
                waiting = (waiting or 0.0) + value
            elif name in KV_USAGE:
                kv.append(value)
            else:
                tokens = (tokens or 0.0) + value
    if running is None and waiting is None:
        return None
    usage = min(max(sum(kv) / len(kv), 0.0), 1.0) if kv else None
    return EngineLoad(running or 0.0, waiting or 0.0, usage, at, tokens or _cache_info(text))


def _cache_info(text: bytes) -> float | None:
    """vLLM's KV size in tokens, from its cache config's labels, summed over engines."""
    total = 0.0
    for labels, _ in _samples(text, CACHE_INFO.encode()):
        blocks, size = _label(labels, b"num_gpu_blocks"), _label(labels, b"block_size")
        if blocks is not None and size is not None:
            total += blocks * size
    return total or None


def _label(labels: bytes, name: bytes) -> float | None:
    """A label's value as a number (``name="123"``), if it is one."""
    i = labels.find(b"," + name + b'="') + 1 or labels.find(b"{" + name + b'="') + 1
    if not i:
        return None
    start = i + len(name) + 2
    try:
        value = float(labels[start : labels.find(b'"', start)])
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _samples(text: bytes, name: bytes) -> list[tuple[bytes, float]]:
    """The labels and finite, non-negative values of the samples of ``name`` in
    ``text`` (which starts with a newline), at most MAX_SAMPLES of them."""
    key, start = b"\n" + name, 0
    samples: list[tuple[bytes, float]] = []
    while len(samples) < MAX_SAMPLES:
        i = text.find(key, start)
        if i < 0:
            break
        end = text.find(b"\n", i + 1)
        line = text[i + len(key) : end if end >= 0 else len(text)]
        start = i + 1
        if len(line) > MAX_LINE or not line or line[:1] not in (b"{", b" "):
            continue  # too long, or a longer name that begins with this one
        labels = b""
        if line[:1] == b"{":
            close = line.rfind(b"}")
            labels, line = (line[: close + 1], line[close + 1 :]) if close > 0 else (b"", b"")
        fields = line.split()
        try:
            value = float(fields[0]) if fields else math.nan
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            samples.append((labels, value))
    return samples
