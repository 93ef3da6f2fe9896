"""Reading an engine's load from its /metrics text: vLLM's and SGLang's names, summed
over labels, junk passed over."""

from __future__ import annotations

import time

import pytest

from gateway.dataplane.engine_metrics import MAX_LINE, MAX_SAMPLES, parse
from gateway.dataplane.replica import EngineLoad

VLLM = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 12.0
vllm:num_requests_running{engine="1",model_name="llama"} 3.0
vllm:num_requests_waiting{engine="0",model_name="llama"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.7
vllm:prefix_cache_hits_total{engine="0",model_name="llama"} 1e6
"""
SGLANG = """sglang:num_running_reqs{model_name="qwen"} 7
sglang:num_queue_reqs{model_name="qwen"} 0 1733000000000
sglang:token_usage{model_name="qwen"} 0.28
sglang:cache_hit_rate{model_name="qwen"} 0.9
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VLLM, EngineLoad(15.0, 2.0, 0.6, 1.0)),
        (SGLANG, EngineLoad(7.0, 0.0, 0.28, 1.0)),
        ("vllm:num_requests_running 4\nvllm:gpu_cache_usage_perc 0.25\n", EngineLoad(4, 0, 0.25, 1.0)),
        ("vllm:num_requests_waiting 3\n", EngineLoad(0.0, 3.0, None, 1.0)),
        # junk, NaN, negative, a bad number, a label with a brace in it, over-full usage
        ("vllm:num_requests_running NaN\nvllm:num_requests_running -1\nvllm:num_requests_running x\n"
         'vllm:num_requests_running{a="}"} 5\nvllm:kv_cache_usage_perc 1.5\ngarbage {{{\n',
         EngineLoad(5.0, 0.0, 1.0, 1.0)),
        ("model_requests 4\n# vllm:num_requests_running 9\n", None),  # not an engine's
        ("", None),
    ],
)  # fmt: skip
def test_parse(text: str, expected: EngineLoad | None) -> None:
    got = parse(text.encode(), at=1.0)
    if expected is None or got is None:
        assert got == expected
    else:
        assert (got.running, got.waiting, got.at) == (expected.running, expected.waiting, 1.0)
        assert got.kv_usage == pytest.approx(expected.kv_usage)


@pytest.mark.parametrize(
    ("text", "kv_tokens"),
    [
        (VLLM, None),  # not exported
        (VLLM + 'vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="2048"} 1.0\n',
         32768.0),
        (VLLM + 'vllm:cache_config_info{num_gpu_blocks="100",block_size="32",engine="0"} 1.0\n'
         'vllm:cache_config_info{num_gpu_blocks="100",block_size="32",engine="1"} 1.0\n',
         6400.0),  # two engines: both caches
        (VLLM + 'vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1.0\n'
         'vllm:cache_config_info{xnum_gpu_blocks="9",block_size="16"} 1.0\n', None),  # junk
        (SGLANG + 'sglang:max_total_num_tokens{model_name="qwen"} 471258\n', 471258.0),
    ],
)  # fmt: skip
def test_the_kv_cache_size(text: str, kv_tokens: float | None) -> None:
    got = parse(text.encode(), at=1.0)
    assert got is not None and got.kv_tokens == kv_tokens


def test_a_huge_body_costs_a_scan_and_is_bounded() -> None:
    junk = b"vllm:junk 1\n" * 350_000 + b"vllm:num_requests_running 2\n"  # 4 MiB
    started = time.perf_counter()
    got = parse(junk, at=0.0)
    assert got is not None and got.running == 2
    assert time.perf_counter() - started < 0.1  # a scan, not a Python step per line
    many = b"vllm:num_requests_running 1\n" * 10_000
    got = parse(many, at=0.0)
    assert got is not None and got.running == MAX_SAMPLES
    long = b"vllm:num_requests_running{" + b"a" * MAX_LINE + b"} 5\n"
    assert parse(long, at=0.0) is None
    assert parse(b"vllm:num_requests_running_total 5\n", at=0.0) is None  # another name
