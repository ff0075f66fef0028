"""Structured log lines: JSON fields, trace ids inside a span, text format, levels."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libcalico.errors import ValidationError
from libcalico.runtime import get_logger, get_tracer, setup_logging, setup_tracing
from libcalico.runtime.log import reset_logging


class _Buffer(io.StringIO):
    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


@pytest.fixture
def buf() -> Iterator[_Buffer]:
    reset_logging()
    out = _Buffer()
    setup_logging("datastore", "DEBUG", stream=out)  # json=None: not a TTY, so JSON
    yield out
    reset_logging()


def test_json_line_has_reserved_keys_and_fields(buf: _Buffer) -> None:
    get_logger("services.datastore.store").info(
        "resource created", kind="IPPool", name="p1", revision=12, path=Path("/x")
    )
    (line,) = buf.records()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line.pop("ts"))
    assert line == {
        "level": "info",
        "service": "datastore",
        "logger": "services.datastore.store",
        "event": "resource created",
        "kind": "IPPool",
        "name": "p1",
        "revision": 12,
        "path": "/x",
    }


def test_one_line_per_event_even_with_newlines(buf: _Buffer) -> None:
    get_logger("x").warning("multi\nline", detail="a\nb")
    assert len(buf.getvalue().splitlines()) == 1
    assert buf.records()[0]["detail"] == "a\nb"


def test_trace_ids_inside_a_span(buf: _Buffer) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("datastore", jsonl=False, extra_processors=[SimpleSpanProcessor(exporter)])
    log = get_logger("x")
    log.info("outside")
    with get_tracer().start_as_current_span("work") as span:
        log.info("inside", n=1)
    outside, inside = [r for r in buf.records() if r["logger"] == "x"]
    assert "trace_id" not in outside and "span_id" not in outside
    ctx = span.get_span_context()
    assert inside["trace_id"] == f"{ctx.trace_id:032x}"
    assert inside["span_id"] == f"{ctx.span_id:016x}"


def test_error_with_traceback(buf: _Buffer) -> None:
    try:
        raise KeyError("missing")
    except KeyError:
        get_logger("x").error("failed", exc_info=True, op="get")
    (line,) = buf.records()
    assert line["level"] == "error" and line["op"] == "get"
    assert "Traceback" in line["exc"] and "KeyError: 'missing'" in line["exc"]


def test_reserved_field_names_are_not_overwritten(buf: _Buffer) -> None:
    get_logger("x").info("e", level="mine", event="also mine")
    (line,) = buf.records()
    assert line["level"] == "info" and line["event"] == "e"
    assert line["level_"] == "mine" and line["event_"] == "also mine"


def test_levels_filter_and_bind(buf: _Buffer) -> None:
    setup_logging("datastore", "WARNING", stream=buf)
    log = get_logger("x").bind(node="node-1")
    log.debug("no")
    log.info("no")
    log.warning("yes", n=2)
    (line,) = buf.records()
    assert line["event"] == "yes" and line["node"] == "node-1" and line["n"] == 2


def test_stdlib_loggers_use_the_same_format(buf: _Buffer) -> None:
    logging.getLogger("grpc.somewhere").warning("plain %s message", "stdlib")
    (line,) = buf.records()
    assert line["event"] == "plain stdlib message" and line["logger"] == "grpc.somewhere"


def test_text_format_for_a_terminal() -> None:
    reset_logging()
    out = _Buffer(tty=True)
    try:
        setup_logging("ipam", "INFO", stream=out)
        get_logger("services.ipam").info("block claimed", cidr="10.0.0.0/26", note="two words")
    finally:
        reset_logging()
    text = out.getvalue().rstrip("\n")
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} INFO  services\.ipam: block claimed "
        r'cidr=10\.0\.0\.0/26 note="two words"',
        text,
    )


def test_second_setup_replaces_the_handler(buf: _Buffer) -> None:
    setup_logging("datastore", "INFO", stream=buf)
    setup_logging("datastore", "INFO", stream=buf)
    get_logger("x").info("once")
    assert len(buf.records()) == 1


def test_unknown_level_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="unknown log level 'LOUD'"):
        setup_logging("x", "LOUD")
