"""Structured log lines: logfmt quoting, JSON lines, the formatter."""

from __future__ import annotations

import json
import logging

import pytest

from tests.observability_helpers import parse_logfmt
from weightport.observability.log_format import (
    FIELDS,
    LogFormat,
    StructuredFormatter,
    json_line,
    logfmt,
    utc_timestamp,
)


def test_logfmt_quotes_only_what_needs_it() -> None:
    line = logfmt(
        {
            "plain": "/files/{account}/{model}/{path}",
            "empty": "",
            "space": "curl 8.0 (x86)",
            "quote": 'a"b',
            "equals": "a=b",
            "newline": "one\ntwo",
            "number": 3.5,
            "flag": True,
            "none": None,
        }
    )
    assert line.startswith('plain=/files/{account}/{model}/{path} empty="" ')
    assert "\n" not in line
    assert parse_logfmt(line) == {
        "plain": "/files/{account}/{model}/{path}",
        "empty": "",
        "space": "curl 8.0 (x86)",
        "quote": 'a"b',
        "equals": "a=b",
        "newline": "one\\ntwo",  # escaped, never a second line
        "number": "3.5",
        "flag": "true",
        "none": "",
    }


@pytest.mark.parametrize("text", ["a b", 'x"y', "tab\there", "uni ü", "\x7f", "back\\slash"])
def test_logfmt_round_trips_through_json_quoting(text: str) -> None:
    value = logfmt({"v": text}).removeprefix("v=")
    assert json.loads(value) == text


def test_json_line_is_one_line_and_keeps_order() -> None:
    line = json_line({"b": 1, "a": "x\ny", "c": None})
    assert "\n" not in line
    assert list(json.loads(line)) == ["b", "a", "c"]
    assert json.loads(line) == {"b": 1, "a": "x\ny", "c": None}


def test_utc_timestamp_has_milliseconds() -> None:
    assert utc_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert utc_timestamp(1.2345) == "1970-01-01T00:00:01.234Z"


@pytest.mark.parametrize("form", list(LogFormat))
def test_formatter_puts_time_and_level_first(form: LogFormat) -> None:
    record = logging.LogRecord("weightport.access", logging.WARNING, "", 0, "msg", (), None)
    record.created = 0.0
    setattr(record, FIELDS, {"status": 503, "route": "/x"})
    line = StructuredFormatter(form).format(record)
    fields = json.loads(line) if form is LogFormat.JSON else parse_logfmt(line)
    assert list(fields) == ["ts", "level", "status", "route"]
    assert fields["level"] == "warning"
    assert str(fields["status"]) == "503"


def test_formatter_shows_the_message_of_records_without_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, "", 0, "hello %s", ("there",), None)
    assert json.loads(StructuredFormatter(LogFormat.JSON).format(record))["msg"] == "hello there"
