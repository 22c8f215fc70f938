"""One structured log line from named fields: logfmt or JSON.

logfmt (``key=value`` pairs, values quoted when they hold spaces, quotes, ``=`` or control
characters) is what Loki, Vector and ``grep`` read easily; JSON is what most log pipelines
ingest without parsing rules. Both render the same fields in the same order.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum

#: The attribute of a :class:`logging.LogRecord` that holds its fields (``extra={FIELDS: …}``).
FIELDS = "weightport_fields"


class LogFormat(StrEnum):
    LOGFMT = "logfmt"
    JSON = "json"


#: A value logfmt leaves unquoted: no space, control character, quote, backslash or "=".
_BARE = re.compile(r'[^\x00-\x20"=\\\x7f]+')


def _logfmt_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    # json.dumps quotes and escapes quotes, backslashes and control characters.
    return json.dumps(text, ensure_ascii=False)


def logfmt(fields: Mapping[str, object]) -> str:
    """``key=value`` pairs separated by spaces; empty and odd values quoted."""
    return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())


def json_line(fields: Mapping[str, object]) -> str:
    """The fields as one compact JSON object (no newline inside, whatever the values)."""
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"), default=str)


def render(fields: Mapping[str, object], form: LogFormat) -> str:
    """``fields`` in the chosen format."""
    return json_line(fields) if form is LogFormat.JSON else logfmt(fields)


def utc_timestamp(epoch: float) -> str:
    """``2026-11-28T10:04:05.123Z``."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class StructuredFormatter(logging.Formatter):
    """Formats records that carry fields (``extra={FIELDS: {...}}``) as one structured line:
    the time and level first, then the fields. Records without fields show their message."""

    def __init__(self, form: LogFormat) -> None:
        super().__init__()
        self.form = form

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {
            "ts": utc_timestamp(record.created),
            "level": record.levelname.lower(),
        }
        extra = getattr(record, FIELDS, None)
        if isinstance(extra, Mapping):
            fields.update(extra)
        else:
            fields["msg"] = record.getMessage()
        return render(fields, self.form)
