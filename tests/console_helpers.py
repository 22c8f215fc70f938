"""Helpers for the web console tests: a signed-in HTTP client and a small HTML reader."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser

import httpx

CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
SESSION_COOKIE = "wp_session"


def csrf_of(page: str) -> str:
    """The CSRF token the page's forms carry."""
    found = CSRF.search(page)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


def console_client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, follow_redirects=False, timeout=60)


def sign_in(client: httpx.Client, api_key: str) -> httpx.Response:
    """Sign in through the form, as a browser would; returns the POST's response."""
    form = client.get("/console/sign-in")
    return client.post(
        "/console/sign-in",
        data={"api_key": api_key, "csrf_token": csrf_of(form.text), "next": "/console/models"},
    )


@contextmanager
def signed_in_client(base_url: str, api_key: str) -> Iterator[httpx.Client]:
    """An HTTP client with a console session (closed on exit)."""
    with console_client(base_url) as client:
        response = sign_in(client, api_key)
        assert response.status_code == 303, response.text
        yield client


VOID = frozenset({"input", "img", "br", "meta", "link", "hr", "source"})


class Page(HTMLParser):
    """What a console page links to, its forms (fields by name) and the text of each
    element that has an id."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.forms: list[dict[str, str]] = []
        self.texts: dict[str, str] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "a" and "href" in values:
            self.links.append(values["href"])
        elif tag == "form":
            self.forms.append({"method": values.get("method", "get"), **values})
        elif tag == "input" and self.forms and "name" in values:
            self.forms[-1][values["name"]] = values.get("value", "")
        if tag in VOID:
            return
        self._open.append(values.get("id", ""))
        if values.get("id"):
            self.texts[values["id"]] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self._open:
            if element_id:
                self.texts[element_id] += data


def read_page(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def element_text(page: str, element_id: str) -> str:
    """The text of the element with this id (what a copy button copies)."""
    found = read_page(page).texts.get(element_id)
    assert found is not None, f"no element #{element_id}"
    return found
