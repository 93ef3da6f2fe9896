"""Route matching: longest prefix, whole segments; then, on OpenAI routes, the model."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.dataplane.prefix import parse_body
from gateway.dataplane.routing import Router, UnknownModel

A, B, ROOT = "a", "b", "root"


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
    route = Router([(path_, pool, ()) for path_, pool in routes]).match(path)
    assert (route.pool_for(None) if route else None) == (
        None if expected is None else (expected, "")
    )


OPENAI = Router(
    [
        ("/v1", "llama", ("llama-3-8b", "llama3")),
        ("/v1", "qwen", ("qwen-7b",)),
        ("/v1", "qwen", ("llama3",)),  # already an alias of llama: the first route wins
        ("/v2", "qwen", ("qwen-7b",)),
        ("/", "predict", ()),
    ]
)


def body(model: Any) -> bytes:
    return orjson.dumps({"model": model, "messages": []})


@pytest.mark.parametrize(
    ("path", "payload", "expected"),
    [
        ("/v1/chat/completions", body("llama-3-8b"), ("llama", "llama-3-8b")),
        ("/v1/completions", body("llama3"), ("llama", "llama-3-8b")),  # an alias: its model
        ("/v1/chat/completions", body("qwen-7b"), ("qwen", "qwen-7b")),
        ("/v1/chat/completions", body("gpt-5"), 404),  # no default for /v1
        ("/v1/chat/completions", body(7), 400),
        ("/v1/chat/completions", b"not json", 400),
        ("/v1/chat/completions", b"[]", 400),
        ("/v2/chat/completions", body("llama-3-8b"), 404),
        ("/predict", body("qwen-7b"), ("predict", "")),  # a route with no models reads no body
    ],
)
def test_the_body_s_model_picks_the_pool(path: str, payload: bytes, expected: Any) -> None:
    route = OPENAI.match(path)
    assert route is not None
    if isinstance(expected, int):
        with pytest.raises(UnknownModel) as caught:
            route.pool_for(parse_body(payload))
        assert caught.value.status == expected
    else:
        assert route.pool_for(parse_body(payload)) == expected


def test_a_route_without_a_model_takes_the_models_no_route_names() -> None:
    route = Router([("/v1", "llama", ("llama-3-8b",)), ("/v1", "rest", ())]).match("/v1/x")
    assert route is not None and route.listing_path() == "/v1/models"
    assert route.pool_for(parse_body(body("llama-3-8b"))) == ("llama", "llama-3-8b")
    assert route.pool_for(parse_body(body("other"))) == route.pool_for(None) == ("rest", "")
    assert list(route.models) == ["llama-3-8b"]
