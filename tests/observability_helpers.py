"""Helpers for the observability tests: scraping /metrics, reading access log lines."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

#: (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus exposition text."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(url: str, key: str | None = None) -> Samples:
    """GET a /metrics URL (with a bearer key if given) and parse it; asserts 200."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(url, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse_metrics(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much one series moved between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


def parse_logfmt(line: str) -> dict[str, str]:
    """A logfmt line as a dict (values unquoted the way the server quotes them: JSON strings)."""
    fields: dict[str, str] = {}
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    for pair in lexer:
        key, sep, raw = pair.partition("=")
        assert sep, f"not a key=value pair: {pair!r} in {line!r}"
        fields[key] = raw
    return fields


def access_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON access log lines of a file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def json_access_env(path: Path, **env: str) -> dict[str, str]:
    """A server environment that writes JSON access lines to ``path``, plus ``env``."""
    return {"WEIGHTPORT_ACCESS_LOG": "json", "WEIGHTPORT_ACCESS_LOG_FILE": str(path), **env}
