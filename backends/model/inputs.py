"""Checking a ``/predict`` body before it reaches the model: ``{"inputs": [[64 numbers], ...]}``.

Why check by hand: numpy would accept too much. ``np.asarray(x, dtype=np.float32)`` turns
the string ``"3"`` into 3.0 and ``true`` into 1.0, and a ragged list fails with a message
about "inhomogeneous shapes" that does not say which row is wrong. A client that sends the
wrong thing should hear exactly what and where (``inputs[3] has 12 values, expected 64``)
and get a 4xx, so that neither it nor the gateway retries; a 5xx would say the replica is
broken. 400 is for a body that is not JSON at all, 422 for JSON of the wrong shape or type,
413 for more rows in one request than the server takes.

Exact ``type(v) is int``/``float`` checks cost about 50 ns a value, a few microseconds a
row: small next to the HTTP handling around them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson


class BadInput(Exception):
    """A body the model cannot take; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


EXAMPLE = '{"inputs": [[0.0, 1.0, ...], ...]}'


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_inputs(body: bytes, features: int, max_rows: int) -> np.ndarray:
    """The rows of ``body`` as a C-contiguous float32 ``[n, features]`` array, or BadInput
    naming the first problem found."""
    if not body.strip():
        raise BadInput(400, f"empty body: send JSON like {EXAMPLE}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(400, f"body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadInput(422, f"body must be a JSON object like {EXAMPLE}, got {_kind(data)}")
    if "inputs" not in data:
        raise BadInput(422, f'body has no "inputs" field: send JSON like {EXAMPLE}')
    rows = data["inputs"]
    if not isinstance(rows, list):
        raise BadInput(422, f"inputs must be a list of rows, got {_kind(rows)}")
    if not rows:
        raise BadInput(422, f"inputs is empty: send at least one row of {features} numbers")
    if len(rows) > max_rows:
        raise BadInput(413, f"inputs has {len(rows)} rows; at most {max_rows} per request")
    for i, row in enumerate(rows):
        _check_row(i, row, features)
    with np.errstate(over="ignore"):  # reported below, as a 422
        array = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(array).all():
        raise BadInput(422, "inputs has values too large for float32 (they become infinite)")
    return array


def _check_row(i: int, row: Any, features: int) -> None:
    if not isinstance(row, list):
        if isinstance(row, int | float) and not isinstance(row, bool):
            raise BadInput(
                422,
                f"inputs[{i}] is a number, not a row: inputs must be a list of rows, "
                f"each a list of {features} numbers ([[...]], not [...])",
            )
        raise BadInput(422, f"inputs[{i}] must be a list of {features} numbers, got {_kind(row)}")
    if len(row) != features:
        raise BadInput(422, f"inputs[{i}] has {len(row)} values; the model expects {features}")
    if all(type(v) is float or type(v) is int for v in row):  # bool is a subclass of int
        return
    j, value = next(
        (j, v) for j, v in enumerate(row) if type(v) is not float and type(v) is not int
    )
    raise BadInput(422, f"inputs[{i}][{j}] is {_short(value)} ({_kind(value)}); expected a number")
