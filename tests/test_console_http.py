"""The web console over plain HTTP (no browser): cookies, CSRF, isolation, no-JS browsing,
and the commands it shows, run as they are shown."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.archive_helpers import archive_files, strip_top
from tests.conftest import LiveServer
from tests.console_helpers import (
    SESSION_COOKIE,
    console_client,
    csrf_of,
    element_text,
    read_page,
    sign_in,
    signed_in_client,
)
from weightport import demo
from weightport.catalog import accounts, registry, uploads
from weightport.catalog.schema import ConsoleSession
from weightport.server.console.render import human_size


def _new_account(server: LiveServer, prefix: str) -> tuple[str, str]:
    account = f"{prefix}-{secrets.token_hex(3)}"
    return account, server.new_account(account)


@pytest.fixture(scope="module")
def admin(live_server: LiveServer) -> Iterator[httpx.Client]:
    with signed_in_client(live_server.base_url, live_server.admin_key) as client:
        yield client


@pytest.fixture(scope="module")
def intruder(live_server: LiveServer) -> Iterator[httpx.Client]:
    _account, key = _new_account(live_server, "intruder")
    with signed_in_client(live_server.base_url, key) as client:
        yield client


def _set_cookie_headers(response: httpx.Response, name: str) -> list[str]:
    return [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]


def _key_ids(server: LiveServer, account: str) -> list[str]:
    catalog = server.catalog()
    try:
        return [k.id for k in catalog.call(lambda s: accounts.list_keys(s, account))]
    finally:
        catalog.close()


def test_root_leads_to_sign_in(live_server: LiveServer) -> None:
    with console_client(live_server.base_url) as client:
        assert client.get("/").headers["location"] == "/console/"
        assert client.get("/console/").headers["location"] == "/console/models"
        models = client.get("/console/models?q=x")
        assert models.status_code == 303
        location = urlsplit(models.headers["location"])
        assert location.path == "/console/sign-in"
        assert parse_qs(location.query) == {"next": ["/console/models?q=x"]}
        form = client.get(models.headers["location"])
        assert form.status_code == 200
        assert 'name="next" value="/console/models?q=x"' in form.text
        assert 'type="password"' in form.text and '<label for="api_key">' in form.text


def test_session_cookie_attributes(live_server: LiveServer) -> None:
    _account, key = _new_account(live_server, "cookies")
    with console_client(live_server.base_url) as client:
        form = client.get("/console/sign-in")
        (presession,) = _set_cookie_headers(form, "wp_presession")
        assert "HttpOnly" in presession and "SameSite=Strict" in presession
        response = sign_in(client, key)
        assert response.status_code == 303 and response.headers["location"] == "/console/models"
        (cookie,) = _set_cookie_headers(response, SESSION_COOKIE)
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite", "path", "max-age"} <= attributes
        assert "SameSite=Strict" in cookie and "Path=/console" in cookie
        assert "Max-Age=43200" in cookie
        assert "secure" not in attributes  # plain http: a Secure cookie would never come back
        # The key's secret part (after "wp_<id>_"; it may itself hold "_") is nowhere in it.
        assert key not in cookie and key.split("_", 2)[2] not in cookie
        # The pre-sign-in cookie is spent.
        (spent,) = _set_cookie_headers(response, "wp_presession")
        assert "Max-Age=0" in spent
        page = client.get("/console/models")
        assert page.status_code == 200 and key not in page.text


def test_session_cookie_is_secure_behind_https(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """Behind a TLS-terminating proxy (``public_url`` is https) both cookies are ``Secure``."""
    server = server_factory(
        tmp_path / "data", demo=False, extra_env={"WEIGHTPORT_PUBLIC_URL": "https://wp.example"}
    ).start()
    with console_client(server.base_url) as client:
        form = client.get("/console/sign-in")
        (presession,) = _set_cookie_headers(form, "wp_presession")
        assert "Secure" in presession
        # httpx keeps Secure cookies off plain http; the browser behind the proxy sends it.
        value = presession.split(";", 1)[0].split("=", 1)[1]
        response = client.post(
            "/console/sign-in",
            data={"api_key": server.admin_key, "csrf_token": csrf_of(form.text)},
            headers={"Cookie": f"wp_presession={value}"},
        )
        assert response.status_code == 303
        (cookie,) = _set_cookie_headers(response, SESSION_COOKIE)
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_wrong_key_gets_a_clear_page_and_no_session(live_server: LiveServer) -> None:
    with console_client(live_server.base_url) as client:
        response = sign_in(client, "wp_000000000000_not-a-real-key")
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("text/html")
        assert "invalid or has been revoked" in response.text
        assert not _set_cookie_headers(response, SESSION_COOKIE)
        assert client.get("/console/models").status_code == 303


def test_sign_in_form_needs_its_csrf_token(live_server: LiveServer) -> None:
    with console_client(live_server.base_url) as client:
        forged = client.post(
            "/console/sign-in", data={"api_key": live_server.admin_key, "csrf_token": "0" * 64}
        )
        assert forged.status_code == 403
        assert forged.headers["content-type"].startswith("text/html")
        assert "security token" in forged.text
        assert not _set_cookie_headers(forged, SESSION_COOKIE)


def test_state_changing_requests_need_the_csrf_token(
    live_server: LiveServer, admin: httpx.Client
) -> None:
    target = f"csrf-{secrets.token_hex(3)}"
    victim_account, victim_key = _new_account(live_server, "victim")
    (victim_key_id,) = _key_ids(live_server, victim_account)
    with signed_in_client(live_server.base_url, victim_key) as other:
        other_token = csrf_of(other.get("/console/models").text)
    attempts = [
        ("/console/keys", {"account": target}),
        ("/console/keys", {"account": target, "csrf_token": ""}),
        ("/console/keys", {"account": target, "csrf_token": other_token}),
        (f"/console/keys/{victim_key_id}/revoke", {}),
        ("/console/sign-out", {}),
    ]
    for path, data in attempts:
        refused = admin.post(path, data=data)
        assert refused.status_code == 403, (path, data)
        assert "security token" in refused.text
    assert _key_ids(live_server, target) == []
    catalog = live_server.catalog()
    try:
        revoked = catalog.call(lambda s: accounts.list_keys(s, victim_account))[0].revoked
    finally:
        catalog.close()
    assert not revoked
    assert admin.get("/console/models").status_code == 200  # still signed in
    # The same request with the page's token goes through.
    token = csrf_of(admin.get("/console/keys").text)
    created = admin.post("/console/keys", data={"account": target, "csrf_token": token})
    assert created.status_code == 201 and len(_key_ids(live_server, target)) == 1


def test_posts_without_a_session_are_sent_to_sign_in(live_server: LiveServer) -> None:
    with console_client(live_server.base_url) as client:
        response = client.post("/console/keys", data={"account": "nobody-here"})
        assert response.status_code == 303
        assert response.headers["location"] == "/console/sign-in"
    assert _key_ids(live_server, "nobody-here") == []


def test_sign_out_ends_the_session_for_good(live_server: LiveServer) -> None:
    _account, key = _new_account(live_server, "leaver")
    with signed_in_client(live_server.base_url, key) as client:
        token_value = client.cookies[SESSION_COOKIE]
        page = client.get("/console/models")
        out = client.post("/console/sign-out", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303
        assert out.headers["location"] == "/console/sign-in?signed_out=1"
        (cleared,) = _set_cookie_headers(out, SESSION_COOKIE)
        assert "Max-Age=0" in cleared
        assert "You are signed out" in client.get(out.headers["location"]).text
    # A copy of the old cookie (another tab, a stolen value) is dead too: the catalog row is gone.
    with console_client(live_server.base_url) as replay:
        replay.cookies.set(SESSION_COOKIE, token_value, path="/console")
        assert replay.get("/console/models").status_code == 303


def test_revoking_the_key_ends_its_sessions(live_server: LiveServer) -> None:
    account, key = _new_account(live_server, "revoked")
    with signed_in_client(live_server.base_url, key) as client:
        assert client.get("/console/models").status_code == 200
        (key_id,) = _key_ids(live_server, account)
        catalog = live_server.catalog()
        try:
            catalog.call(lambda s: accounts.revoke_key(s, key_id))
            sessions_left = catalog.call(lambda s: len(s.scalars(select(ConsoleSession)).all()))
        finally:
            catalog.close()
        assert sessions_left > 0  # the row stays; the key check refuses it
        refused = client.get("/console/models")
        assert refused.status_code == 303
        (dropped,) = _set_cookie_headers(refused, SESSION_COOKIE)  # the dead cookie goes too
        assert "Max-Age=0" in dropped


def test_other_accounts_resources_are_not_found(
    live_server: LiveServer, intruder: httpx.Client, demo_job: str
) -> None:
    token = csrf_of(intruder.get("/console/models").text)
    missing = intruder.get("/console/models/no-such-model")
    for path in [
        "/console/models/demo-llama",
        "/console/models/demo-llama/files/config.json",
        f"/console/fine-tunes/{demo_job}",
        f"/console/fine-tunes/{demo_job}/archives",
        f"/console/fine-tunes/{demo_job}/download?checkpoint=adapter",
    ]:
        response = intruder.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("text/html")
        assert "Not found" in response.text
    # Exactly the answer of a model that does not exist: nothing to probe.
    guessed = intruder.get("/console/models/demo-llama")
    assert guessed.text.replace("demo-llama", "X") == missing.text.replace("no-such-model", "X")
    queued = intruder.post(
        f"/console/fine-tunes/{demo_job}/archives",
        data={"csrf_token": token, "checkpoint": "adapter", "step": "30"},
    )
    assert queued.status_code == 404
    assert "demo-llama" not in intruder.get("/console/models").text
    assert demo_job not in intruder.get("/console/fine-tunes").text
    keys = intruder.get("/console/keys")
    assert keys.status_code == 403 and "manages API keys" in keys.text


def test_browsing_without_javascript_reaches_every_page(admin: httpx.Client, demo_job: str) -> None:
    """Follow every console link from the model list, as a browser with scripts off would;
    every page answers 200, and every form that changes something carries the CSRF token."""
    seen: set[str] = set()
    queue = ["/console/models"]
    downloads: list[str] = []
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        response = admin.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html"), path
        page = read_page(response.text)
        for form in page.forms:
            if form["method"].lower() == "post":
                assert len(form.get("csrf_token", "")) == 64, (path, form)
        for link in page.links:
            target = urljoin(path, link).split("#")[0]
            if not target.startswith("/console/") or target.startswith("/console/static/"):
                continue
            if "/files/" in target or "/download?" in target:
                downloads.append(target)
            elif target not in seen:
                queue.append(target)
    assert {"/console/models/demo-llama", "/console/fine-tunes", "/console/keys"} <= seen
    assert f"/console/fine-tunes/{demo_job}" in seen
    assert len(downloads) >= 6 + 6  # six files, and two archives at each of three steps
    for target in downloads:
        head = admin.head(target)
        assert head.status_code in (200, 302), target


def test_file_link_redirects_to_a_fresh_signed_url(
    live_server: LiveServer, admin: httpx.Client
) -> None:
    expected = demo.demo_base_files()["model.safetensors"]
    first = admin.get("/console/models/demo-llama/files/model.safetensors")
    assert first.status_code == 302
    url = first.headers["location"]
    assert "X-Goog-Signature=" in url and "/files/admin/demo-llama/model.safetensors" in url
    # Minted for the session's own key, so revoking that key revokes the URL too.
    assert f"X-Wp-key={live_server.admin_key.split('_')[1]}" in url
    body = httpx.get(url).content  # no cookie, no key: the signature is the credential
    assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
    missing = admin.get("/console/models/demo-llama/files/nope.bin")
    assert missing.status_code == 404 and "has no file" in missing.text


def test_fine_tune_page_shows_what_the_api_serves(
    live_server: LiveServer, admin: httpx.Client, demo_job: str
) -> None:
    text = admin.get(f"/console/fine-tunes/{demo_job}").text
    assert "LoRA · r = 8 · alpha = 16" in text
    assert '<a href="/console/models/demo-llama">demo-llama</a>' in text
    headers = {"Authorization": f"Bearer {live_server.admin_key}"}
    for checkpoint, step in [("merged", 30), ("adapter", 30), ("merged", 10), ("adapter", 20)]:
        query = f"ft_id={demo_job}&checkpoint={checkpoint}&checkpoint_step={step}"
        api = httpx.head(f"{live_server.base_url}/v1/finetune/download?{query}", headers=headers)
        size = int(api.headers["content-length"])
        link = f"/console/fine-tunes/{demo_job}/download?checkpoint={checkpoint}&step={step}"
        console = admin.head(link)
        assert console.status_code == 200
        assert int(console.headers["content-length"]) == size
        assert console.headers["etag"] == api.headers["etag"]
        assert console.headers["content-disposition"] == api.headers["content-disposition"]
        label = "Merged model" if checkpoint == "merged" else "LoRA adapter"
        row = text.split(f'<tr id="step-{step}">', 1)[1].split("</tr>", 1)[0]
        cell = row.split(f'<a href="{link.replace("&", "&amp;")}"', 1)[1].split("</span></span>")[0]
        assert f">{label}<" in cell and f"data-size>{human_size(size)}" in cell
        page = (
            text if step == 30 else admin.get(f"/console/fine-tunes/{demo_job}/steps/{step}").text
        )
        block = page.split(f"<h3>{label}</h3>", 1)[1].split('class="download"', 1)[0]
        assert f'<span class="size" data-size>{human_size(size)}</span>' in block
    assert admin.get(f"/console/fine-tunes/{demo_job}/steps/15").status_code == 404
    assert admin.get(f"/console/fine-tunes/{demo_job}/steps/x").status_code == 404


def test_console_archive_is_the_api_archive(
    live_server: LiveServer, admin: httpx.Client, demo_job: str
) -> None:
    headers = {"Authorization": f"Bearer {live_server.admin_key}"}
    query = f"ft_id={demo_job}&checkpoint=adapter&checkpoint_step=20"
    api = httpx.get(f"{live_server.base_url}/v1/finetune/download?{query}", headers=headers)
    console = admin.get(f"/console/fine-tunes/{demo_job}/download?checkpoint=adapter&step=20")
    assert console.status_code == 200 and console.content == api.content
    ranged = admin.get(
        f"/console/fine-tunes/{demo_job}/download?checkpoint=adapter&step=20",
        headers={"Range": "bytes=10-19"},
    )
    assert ranged.status_code == 206 and ranged.content == api.content[10:20]
    bad = admin.get(f"/console/fine-tunes/{demo_job}/download?checkpoint=adapter&step=15")
    assert bad.status_code == 400 and "no checkpoint at step 15" in bad.text


def test_model_list_pages_filters_and_sorts(live_server: LiveServer) -> None:
    account, key = _new_account(live_server, "lister")
    catalog = live_server.catalog()

    def seed(session: Session) -> None:
        for i in range(120):
            model = registry.create_model(session, account, f"m{i:03d}", {"displayName": f"M {i}"})
            if i % 3 == 0:
                model.state = registry.READY
        registry.create_model(session, account, "peft-one", {"kind": "HF_PEFT_ADDON"})

    try:
        catalog.call(seed)
    finally:
        catalog.close()
    with signed_in_client(live_server.base_url, key) as client:
        first = client.get("/console/models")
        assert "121" in first.text and "Page 1 of 3" in first.text
        assert first.text.count('<th scope="row">') == 50
        last = client.get("/console/models?page=3")
        assert last.text.count('<th scope="row">') == 21 and 'rel="next"' not in last.text
        assert 'href="/console/models?page=2" rel="prev"' in last.text
        ready = client.get("/console/models?state=READY&sort=-name")
        assert "Page 1 of 1" in ready.text and ready.text.count('<th scope="row">') == 40
        assert ready.text.index("m117") < ready.text.index("m000")
        found = client.get("/console/models?q=M%2011")  # display name, any case
        assert found.text.count('<th scope="row">') == 11  # M 11, M 110..M 119
        peft = client.get("/console/models?kind=HF_PEFT_ADDON")
        assert peft.text.count('<th scope="row">') == 1 and "peft-one" in peft.text
        paged = client.get("/console/models?q=m1&state=READY&sort=newest&page=1")
        assert paged.status_code == 200
        for bad, message in [
            ("kind=NOPE", "Unknown kind"),
            ("state=GONE", "Unknown state"),
            ("sort=size", "Unknown sort"),
            ("page=0", "positive number"),
            ("page=x", "positive number"),
        ]:
            response = client.get(f"/console/models?{bad}")
            assert response.status_code == 400, bad
            assert message in response.text


def test_model_page_of_an_unfinished_upload(live_server: LiveServer) -> None:
    account, key = _new_account(live_server, "uploader")
    catalog = live_server.catalog()

    def seed(session: Session) -> None:
        registry.create_model(session, account, "half", {})
        uploads.declare_files(session, account, "half", {"config.json": 10})

    try:
        catalog.call(seed)
    finally:
        catalog.close()
    with signed_in_client(live_server.base_url, key) as client:
        page = client.get("/console/models/half")
        assert page.status_code == 200
        assert "not uploaded yet" in page.text and "UPLOADING" in page.text
        assert "weightport download model" not in page.text
        link = client.get("/console/models/half/files/config.json")
        assert link.status_code == 400 and "validateUpload" in link.text
        assert "FAILED_PRECONDITION" not in link.text


def test_errors_are_html_pages_with_the_right_status(admin: httpx.Client) -> None:
    unknown = admin.get("/console/nowhere")
    assert unknown.status_code == 404 and "There is no console page" in unknown.text
    wrong_method = admin.put("/console/models", data={"csrf_token": "x"})
    assert wrong_method.status_code in (403, 405)
    with_token = admin.put(
        "/console/models", data={"csrf_token": csrf_of(admin.get("/console/models").text)}
    )
    assert with_token.status_code == 405 and "does not accept" in with_token.text
    bad_ft = admin.get("/console/fine-tunes/ft-nope")
    assert bad_ft.status_code == 404 and bad_ft.headers["content-type"].startswith("text/html")


def test_pages_carry_security_and_timing_headers(admin: httpx.Client) -> None:
    response = admin.get("/console/models")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["server-timing"].startswith("app;dur=")
    assert "<script" not in response.text.replace('<script src="/console/static/', "")


def test_static_assets_are_versioned_and_cacheable(admin: httpx.Client) -> None:
    page = admin.get("/console/models").text
    href = page.split('<link rel="stylesheet" href="', 1)[1].split('"', 1)[0]
    css = admin.get(href)
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "immutable" in css.headers["cache-control"]
    assert admin.get(href, headers={"If-None-Match": css.headers["etag"]}).status_code == 304
    stale = admin.get("/console/static/console.css?v=old")
    assert stale.headers["cache-control"] == "no-cache"
    script = admin.get("/console/static/console.js")
    assert len(script.content) < 8000  # "a few kB of plain JS"
    assert admin.get("/console/static/nope.js").status_code == 404


def _run_shell(command: str, cwd: Path, key: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "WEIGHTPORT_API_KEY": key,
        "HOME": str(cwd),
        # The weightport and python3 of this test run come first, as after `pip install`.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("command_id", ["weightport", "fireworks", "curl"])
def test_model_commands_run_as_shown(
    live_server: LiveServer, admin: httpx.Client, tmp_path: Path, command_id: str
) -> None:
    command = element_text(admin.get("/console/models/demo-llama").text, command_id)
    assert live_server.base_url in command
    # The key comes from the environment (weightport reads WEIGHTPORT_API_KEY itself).
    assert command_id == "weightport" or "$WEIGHTPORT_API_KEY" in command
    assert live_server.admin_key not in command
    result = _run_shell(command, tmp_path, live_server.admin_key)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, body in demo.demo_base_files().items():
        assert (tmp_path / "demo-llama" / name).read_bytes() == body, name


def test_fine_tune_commands_run_as_shown(
    live_server: LiveServer, admin: httpx.Client, demo_job: str, tmp_path: Path
) -> None:
    page = admin.get(f"/console/fine-tunes/{demo_job}/steps/20").text
    command = element_text(page, "cmd-20-adapter-together")
    assert f"{demo_job}:20 -c adapter -o " in command
    result = _run_shell(command, tmp_path, live_server.admin_key)
    assert result.returncode == 0, result.stdout + result.stderr
    (archive,) = tmp_path.glob("*.tar.zst")
    top, files = strip_top(archive_files(archive.read_bytes()))
    assert top.endswith("-adapter-step-20")
    assert files == demo.demo_adapter_files(20)
