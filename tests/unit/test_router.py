"""Route matching: longest prefix, whole segments."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gateway.dataplane.pool import Pool
from gateway.dataplane.routing import Router

A, B, ROOT = (cast(Pool, name) for name in ("a", "b", "root"))


@pytest.mark.parametrize(
    ("routes", "path", "expected"),
    [
        ([("/predict", A)], "/predict", A),
        ([("/predict", A)], "/predict/v2", A),
        ([("/predict", A)], "/predictions", None),
        ([("/predict", A)], "/", None),
        ([("/predict", A), ("/predict/big", B)], "/predict/big/x", B),
        ([("/predict", A), ("/predict/big", B)], "/predict/bigger", A),
        ([("/", ROOT), ("/predict", A)], "/other", ROOT),
        ([("/", ROOT), ("/predict/", A)], "/predict/x", A),
    ],
)
def test_longest_whole_segment_prefix_wins(routes: Any, path: str, expected: Any) -> None:
    assert Router(routes).match(path) is expected
