"""The real model server (backends/model): ONNX Runtime, dynamic batching, input checks.

Servers run over real sockets on 127.0.0.1: in-process where a test needs to look inside
(counters, a load it holds back), as ``python -m backends.model`` where it tests what is
shipped (accuracy through the gateway, exit codes, SIGTERM). The model is the committed
``digits.onnx``; the held-out split is the committed ``digits_test.npz``.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

pytest.importorskip(
    "onnxruntime", reason="the model server needs onnxruntime: pip install -e '.[model]'"
)

import numpy as np

from backends.model import runtime
from backends.model.batcher import Batcher, QueueFull, Stopped
from backends.model.server import ModelServer, Settings, make_app
from tests.component.conftest import pool_config
from tests.conftest import eventually, free_port

TEST_SPLIT = Path(runtime.DEFAULT_MODEL).with_name("digits_test.npz")
MakeServer = Callable[..., Awaitable[tuple[str, ModelServer]]]


def held_out() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(TEST_SPLIT)
    return data["X"].astype(np.float32), data["y"].astype(np.int64)


def body(rows: Any) -> bytes:
    return orjson.dumps({"inputs": np.asarray(rows, dtype=np.float64).tolist()})


@pytest.fixture
async def model_server() -> AsyncIterator[MakeServer]:
    """``url, server = await model_server(**settings)``: in-process, ready (or not, with
    ``wait=False``), stopped afterwards."""
    runners: list[web.AppRunner] = []

    async def make(wait: bool = True, **settings: Any) -> tuple[str, ModelServer]:
        server = ModelServer(Settings(**settings))
        runner = web.AppRunner(make_app(server), shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        if wait:
            await eventually(lambda: server.ready, within=30)
        return f"http://127.0.0.1:{runner.addresses[0][1]}", server

    yield make
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def model_process() -> Iterator[Callable[..., tuple[str, subprocess.Popen[bytes]]]]:
    """Start ``python -m backends.model`` on a free port; SIGTERM must stop it with status 0."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*flags: str) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        command = [sys.executable, "-m", "backends.model", "--port", str(port), *flags]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        return f"http://127.0.0.1:{port}", proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(10) == 0, "the model server did not exit cleanly on SIGTERM"
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], within: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + within
    async with aiohttp.ClientSession() as client:
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                async with client.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert asyncio.get_running_loop().time() < deadline, "model server not healthy"
            await asyncio.sleep(0.1)


async def stats(client: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with client.get(f"{url}/stats") as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def test_held_out_digits_through_the_gateway_are_at_least_90_percent_right(
    model_process: Callable[..., tuple[str, subprocess.Popen[bytes]]], gateway: Any
) -> None:
    url, proc = model_process()
    await wait_healthy(url, proc)
    gw = await gateway(pool_config([url], max_inflight_per_replica=64))
    images, labels = held_out()
    chunks = [(images[i : i + 10], labels[i : i + 10]) for i in range(0, len(images), 10)]

    async def predict(client: aiohttp.ClientSession, rows: np.ndarray) -> dict[str, Any]:
        async with client.post(f"{gw.url}/predict", data=body(rows)) as resp:
            assert resp.status == 200, await resp.text()
            answer: dict[str, Any] = await resp.json()
            return answer

    async with aiohttp.ClientSession() as client:
        answers = await asyncio.gather(*(predict(client, rows) for rows, _ in chunks))
        served = await stats(client, url)
    predicted = np.concatenate([a["predictions"] for a in answers])
    accuracy = float((predicted == labels).mean())
    assert accuracy >= 0.9, f"held-out accuracy {accuracy:.3f}"
    probabilities = np.concatenate([a["probabilities"] for a in answers])
    assert probabilities.shape == (len(labels), 10)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert (probabilities.argmax(axis=1) == predicted).all()
    assert served["rows"] == len(labels) and served["requests"] == len(chunks)


BAD_INPUTS = [
    (b"", 400, "empty body"),
    (b"not json", 400, "not valid JSON"),
    (b"[[1, 2]]", 422, "must be a JSON object"),
    (b'{"rows": [[1]]}', 422, 'no "inputs" field'),
    (b'{"inputs": "0123"}', 422, "inputs must be a list of rows, got str"),
    (b'{"inputs": []}', 422, "inputs is empty"),
    (b'{"inputs": [1, 2, 3]}', 422, "inputs[0] is a number, not a row"),
    (b'{"inputs": [[1, 2, 3]]}', 422, "inputs[0] has 3 values; the model expects 64"),
    (orjson.dumps({"inputs": [[0] * 64, [0] * 63]}), 422, "inputs[1] has 63 values"),
    (orjson.dumps({"inputs": [[0] * 5 + ["7"] + [0] * 58]}), 422, "inputs[0][5] is '7' (str)"),
    (orjson.dumps({"inputs": [[0] * 63 + [None]]}), 422, "inputs[0][63] is None (null)"),
    (orjson.dumps({"inputs": [[True] + [0] * 63]}), 422, "inputs[0][0] is True (bool)"),
    (orjson.dumps({"inputs": [[[0]] * 64]}), 422, "inputs[0][0] is [0] (list)"),
    (orjson.dumps({"inputs": [[1e39] * 64]}), 422, "too large for float32"),
    (body([[0] * 64] * 9), 413, "9 rows; at most 8"),
]


async def test_bad_inputs_get_4xx_with_the_reason_and_the_server_keeps_serving(
    model_server: MakeServer,
) -> None:
    url, server = await model_server(max_rows=8)
    images, labels = held_out()
    async with aiohttp.ClientSession() as client:
        for data, status, message in BAD_INPUTS:
            async with client.post(f"{url}/predict", data=data) as resp:
                assert resp.status == status, (data[:60], await resp.text())
                error = await resp.json()
                assert message in error["error"], (message, error)
        async with client.post(f"{url}/predict", data=body(images[:3])) as resp:
            assert resp.status == 200
            assert (await resp.json())["predictions"] == labels[:3].tolist()
        async with client.get(f"{url}/metrics") as resp:
            metrics = await resp.text()
    assert f'model_requests_total{{status="422"}} {len(BAD_INPUTS) - 3}.0' in metrics
    assert 'model_requests_total{status="200"} 1.0' in metrics
    assert server.batcher is not None and server.batcher.rows == 3  # bad bodies never ran


async def test_concurrent_requests_share_inference_calls_and_get_their_own_rows(
    model_server: MakeServer,
) -> None:
    url, server = await model_server(max_batch=64, max_wait_ms=100)
    images, labels = held_out()
    sizes = [1, 2, 3] * 7  # 21 requests, 42 rows: one call's worth
    starts = np.cumsum([0, *sizes])

    async def predict(client: aiohttp.ClientSession, i: int) -> list[int]:
        rows = images[starts[i] : starts[i + 1]]
        async with client.post(f"{url}/predict", data=body(rows)) as resp:
            assert resp.status == 200
            predictions: list[int] = (await resp.json())["predictions"]
            return predictions

    async with aiohttp.ClientSession() as client:
        answers = await asyncio.gather(*(predict(client, i) for i in range(len(sizes))))
        counters = await stats(client, url)
        async with client.get(f"{url}/metrics") as resp:
            metrics = await resp.text()
    expected, _ = server.model.run(images[: starts[-1]])  # type: ignore[union-attr]
    for i, answer in enumerate(answers):
        assert answer == expected[starts[i] : starts[i + 1]].tolist(), f"request {i}"
    assert counters["requests"] == len(sizes)
    assert counters["runs"] < len(sizes) // 2, counters  # many requests per call
    assert counters["largest_batch"] > 3
    assert f"model_batch_size_count {float(counters['runs'])}" in metrics
    assert (np.concatenate(answers) == labels[: starts[-1]]).mean() >= 0.9


async def test_max_batch_caps_the_rows_of_one_call(model_server: MakeServer) -> None:
    url, _ = await model_server(max_batch=4, max_wait_ms=100)
    images, _ = held_out()
    async with aiohttp.ClientSession() as client:

        async def one(i: int) -> int:
            async with client.post(f"{url}/predict", data=body(images[i : i + 1])) as resp:
                return resp.status

        assert await asyncio.gather(*(one(i) for i in range(12))) == [200] * 12
        counters = await stats(client, url)
    assert counters["largest_batch"] <= 4 and counters["runs"] >= 3, counters


async def test_without_batching_every_request_is_its_own_call(model_server: MakeServer) -> None:
    url, _ = await model_server(batching=False)
    images, _ = held_out()
    async with aiohttp.ClientSession() as client:

        async def one(i: int) -> int:
            async with client.post(f"{url}/predict", data=body(images[i : i + 2])) as resp:
                return resp.status

        assert await asyncio.gather(*(one(i) for i in range(10))) == [200] * 10
        counters = await stats(client, url)
    assert counters["runs"] == 10 and counters["largest_batch"] == 2, counters


async def test_health_is_503_until_the_model_is_loaded_and_warm(
    model_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_load = runtime.load

    def held_load(*args: Any) -> runtime.Model:
        release.wait(20)
        return real_load(*args)

    monkeypatch.setattr(runtime, "load", held_load)
    url, server = await model_server(wait=False)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{url}/health") as resp:
            assert resp.status == 503
            assert (await resp.json())["status"] == "loading"
        async with client.post(f"{url}/predict", data=body(np.zeros((1, 64)))) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        release.set()
        await eventually(lambda: server.ready, within=30)
        async with client.get(f"{url}/health") as resp:
            assert resp.status == 200
            health = await resp.json()
        async with client.get(f"{url}/metrics") as resp:
            metrics = await resp.text()
    assert health["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert health["model"] == "digits-mlp" and health["features"] == 64
    assert f'provider="{health["provider"]}"' in metrics
    assert "model_ready 1.0" in metrics


async def test_a_model_that_cannot_load_keeps_health_at_503(model_server: MakeServer) -> None:
    url, server = await model_server(wait=False, model=Path("/nonexistent/model.onnx"))
    await eventually(lambda: server.error is not None, within=30)
    async with aiohttp.ClientSession() as client, client.get(f"{url}/health") as resp:
        assert resp.status == 503
        answer = await resp.json()
    assert answer["status"] == "failed" and "model.onnx" in answer["error"]


def test_the_command_exits_1_when_the_model_cannot_load(
    model_process: Callable[..., tuple[str, subprocess.Popen[bytes]]],
) -> None:
    _, proc = model_process("--model", "/nonexistent/model.onnx")
    assert proc.wait(30) == 1
    assert proc.stdout is not None and b"could not load" in proc.stdout.read()


@pytest.mark.parametrize(
    ("choice", "offered", "wanted"),
    [
        ("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDA", "CPU"]),
        ("auto", ["AzureExecutionProvider", "CPUExecutionProvider"], ["CPU"]),
        ("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPU"]),
        ("cuda", ["CPUExecutionProvider"], ["CUDA", "CPU"]),
    ],
)
def test_provider_choice(choice: str, offered: list[str], wanted: list[str]) -> None:
    names = [f"{w}ExecutionProvider" for w in wanted]
    assert runtime.wanted_providers(choice, offered) == names


# The batcher on its own, with a stand-in for the model: its failure paths.


def echo(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return batch[:, 0].astype(np.int64), batch


async def test_a_failed_call_fails_every_request_in_it() -> None:
    def broken(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("device lost")

    batcher = Batcher(broken, max_batch=8, max_wait_s=0.05)
    batcher.start()
    try:
        rows = [np.full((1, 2), i, dtype=np.float32) for i in range(3)]
        results = await asyncio.gather(*(batcher.submit(r) for r in rows), return_exceptions=True)
        assert [str(r) for r in results] == ["device lost"] * 3
        assert batcher.runs == 0
    finally:
        await batcher.stop()


async def test_a_full_queue_sheds_and_stop_fails_the_waiting() -> None:
    gate = threading.Event()

    def slow(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gate.wait(10)
        return echo(batch)

    batcher = Batcher(slow, max_batch=1, max_wait_s=0, max_queue=2)
    batcher.start()
    row = np.zeros((1, 2), dtype=np.float32)
    running = asyncio.create_task(batcher.submit(row))
    await eventually(lambda: len(batcher._running) == 1)  # the first call is under way
    waiting = [asyncio.create_task(batcher.submit(row)) for _ in range(2)]
    await eventually(lambda: batcher.queue_depth == 2)
    with pytest.raises(QueueFull):
        await batcher.submit(row)
    await batcher.stop()
    gate.set()
    for task in [running, *waiting]:
        with pytest.raises(Stopped):
            await task


async def test_a_request_larger_than_max_batch_runs_alone() -> None:
    batcher = Batcher(echo, max_batch=4, max_wait_s=0.05)
    batcher.start()
    try:
        big = np.arange(20, dtype=np.float32).reshape(10, 2)
        small = np.full((1, 2), 99, dtype=np.float32)
        (labels, _), (small_labels, _) = await asyncio.gather(
            batcher.submit(big), batcher.submit(small)
        )
        assert labels.tolist() == list(range(0, 20, 2)) and small_labels.tolist() == [99]
        assert batcher.runs == 2 and batcher.largest == 10
    finally:
        await batcher.stop()
