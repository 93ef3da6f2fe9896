"""The GPU ledger never hands out an id twice; discovery never raises."""

from __future__ import annotations

import random
import sys
import types

import pytest

from gateway.control.gpus import GpuLedger, GpuSetting, discover_gpus


def _check_invariants(ledger: GpuLedger, inventory: list[str]) -> None:
    held = [gpu for ids in ledger.allocated.values() for gpu in ids]
    assert len(held) == len(set(held)), f"double-assigned: {ledger.allocated}"
    assert set(held).isdisjoint(ledger.free)
    assert sorted(held + list(ledger.free)) == sorted(inventory)
    assert ledger.total == len(inventory)


@pytest.mark.parametrize("seed", range(20))
def test_random_allocate_release_never_double_assigns(seed: int) -> None:
    rng = random.Random(seed)
    inventory = [str(i) for i in range(rng.randint(0, 8))]
    ledger = GpuLedger(inventory)
    expected: dict[str, tuple[str, ...]] = {}
    for step in range(300):
        if expected and rng.random() < 0.4:
            rid = rng.choice(sorted(expected))
            assert ledger.release(rid) == expected.pop(rid)
        else:
            rid = f"r{step}"
            n = rng.randint(0, 3)
            free_before = len(ledger.free)
            got = ledger.allocate(rid, n)
            if n > free_before:
                assert got is None
                assert len(ledger.free) == free_before  # a refusal changes nothing
            else:
                assert got is not None and len(got) == n
                expected[rid] = got
        assert ledger.allocated == {r: ids for r, ids in expected.items() if ids}
        _check_invariants(ledger, inventory)


def test_allocate_takes_lowest_free_ids_in_inventory_order() -> None:
    ledger = GpuLedger(["0", "1", "2", "3"])
    assert ledger.allocate("a", 2) == ("0", "1")
    assert ledger.allocate("b", 1) == ("2",)
    assert ledger.free == ("3",)
    assert ledger.allocated == {"a": ("0", "1"), "b": ("2",)}


def test_release_returns_the_ids_and_frees_them() -> None:
    ledger = GpuLedger(["0", "1", "2"])
    ledger.allocate("a", 2)
    assert ledger.release("a") == ("0", "1")
    assert ledger.free == ("0", "1", "2")
    assert ledger.release("a") == ()  # idempotent
    assert ledger.release("never-seen") == ()


def test_not_enough_free_returns_none_and_changes_nothing() -> None:
    ledger = GpuLedger(["0", "1"])
    assert ledger.allocate("a", 1) == ("0",)
    assert ledger.allocate("b", 2) is None
    assert ledger.free == ("1",)
    assert "b" not in ledger.allocated


def test_zero_gpus_is_a_cpu_replica_even_with_an_empty_inventory() -> None:
    ledger = GpuLedger([])
    assert ledger.allocate("cpu", 0) == ()
    assert ledger.allocate("gpu", 1) is None
    assert ledger.allocated == {}
    assert ledger.release("cpu") == ()


def test_allocate_again_for_the_same_replica_returns_its_ids() -> None:
    ledger = GpuLedger(["0", "1", "2"])
    assert ledger.allocate("a", 1) == ("0",)
    assert ledger.allocate("a", 1) == ("0",)  # a retried start takes no second id
    assert ledger.free == ("1", "2")


def test_negative_count_is_a_bug() -> None:
    with pytest.raises(ValueError):
        GpuLedger(["0"]).allocate("a", -1)


def test_duplicate_inventory_ids_count_once() -> None:
    ledger = GpuLedger(["0", "0", "1"])
    assert ledger.total == 2
    assert ledger.allocate("a", 2) == ("0", "1")


@pytest.mark.parametrize(
    ("first", "second", "adopted"),
    [
        (("0",), ("1",), True),  # disjoint
        ((), (), True),  # CPU replicas
        (("0",), ("0",), False),  # held by another replica
        (("0", "1"), ("1", "2"), False),  # partly held
        (("0",), ("9",), False),  # unknown id
        (("0",), ("2", "2"), False),  # the same id twice
    ],
)
def test_adopt_refuses_conflicts(
    first: tuple[str, ...], second: tuple[str, ...], adopted: bool
) -> None:
    ledger = GpuLedger(["0", "1", "2"])
    assert ledger.adopt("a", first)
    before = ledger.allocated
    assert ledger.adopt("b", second) is adopted
    if adopted:
        assert ledger.allocated.get("b", ()) == second
    else:
        assert ledger.allocated == before  # a refusal changes nothing
    _check_invariants(ledger, ["0", "1", "2"])


def test_adopt_is_idempotent_for_the_same_replica_and_ids() -> None:
    ledger = GpuLedger(["0", "1"])
    assert ledger.adopt("a", ["1"])
    assert ledger.adopt("a", ["1"])
    assert not ledger.adopt("a", ["0"])
    assert ledger.allocated == {"a": ("1",)}
    assert ledger.allocate("b", 1) == ("0",)  # adopted ids are not handed out again


def test_adopted_ids_are_released_like_allocated_ones() -> None:
    ledger = GpuLedger(["0", "1"])
    assert ledger.adopt("a", ("1", "0"))
    assert ledger.release("a") == ("1", "0")
    assert ledger.free == ("0", "1")


# -- discovery ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ((0, 1), ["0", "1"]),
        (("GPU-abc", 3), ["GPU-abc", "3"]),
        ((1, 1), ["1"]),
        ((), []),
        ("none", []),
    ],
)
def test_discovery_explicit_and_none(setting: GpuSetting, expected: list[str]) -> None:
    assert discover_gpus(setting) == expected


def test_discovery_auto_without_nvml_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    assert discover_gpus("auto") == []


def _fake_nvml(count: int, init_error: bool = False, count_error: bool = False) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if init_error:
            raise RuntimeError("NVML Shared Library Not Found")

    def device_count() -> int:
        if count_error:
            raise RuntimeError("Unknown Error")
        return count

    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = device_count  # type: ignore[attr-defined]
    module.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    module.calls = calls  # type: ignore[attr-defined]
    return module


def test_discovery_auto_when_nvml_init_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(2, init_error=True))
    assert discover_gpus("auto") == []


def test_discovery_auto_when_counting_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml(2, count_error=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert discover_gpus("auto") == []
    assert fake.calls == ["init", "shutdown"]


def test_discovery_auto_lists_nvml_device_indices(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml(3)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert discover_gpus("auto") == ["0", "1", "2"]
    assert fake.calls == ["init", "shutdown"]
