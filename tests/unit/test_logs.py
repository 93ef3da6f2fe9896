"""Structured logs: JSON lines carry the record's extra fields as keys."""

from __future__ import annotations

import logging

import orjson

from gateway.logs import JsonFormatter, TextFormatter


def record(**extra: object) -> logging.LogRecord:
    r = logging.LogRecord(
        "gateway.dataplane.proxy", logging.DEBUG, __file__, 1, "request", None, None
    )
    for key, value in extra.items():
        setattr(r, key, value)
    return r


def test_json_lines_carry_extra_fields() -> None:
    line = JsonFormatter().format(record(request_id="abc", pool="p", status=200, latency_ms=1.5))
    entry = orjson.loads(line)
    assert entry["msg"] == "request" and entry["level"] == "debug"
    assert entry["logger"] == "gateway.dataplane.proxy" and entry["ts"].endswith("Z")
    assert (entry["request_id"], entry["pool"], entry["status"]) == ("abc", "p", 200)
    assert "\n" not in line


def test_text_appends_extra_fields() -> None:
    assert (
        TextFormatter().format(record(pool="p", status=503)).endswith("request pool=p status=503")
    )
