"""The web console in a real browser (Debian's Chromium driven by Playwright): the flows a
person goes through, keyboard and phone use, accessibility, and screenshots of the pages.

Screenshots land in ``test-artifacts/console/`` (git-ignored); ``docs/`` holds a few of them.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.archive_helpers import archive_files, strip_top
from tests.conftest import LiveServer, free_port
from tests.fw_helpers import FireworksApi
from tests.test_together_resume import register_full, weights
from weightport import demo
from weightport.server.console.render import human_size

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
PHONE = {"width": 390, "height": 844}
NO_LIMIT_MS = 600_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs Debian's chromium)")
    # No wall-clock limits of our own on waits and assertions: a slow machine waits longer,
    # and pytest-timeout guards against hangs (expect() takes no "0 = forever", so its
    # limit is pytest-timeout's).
    expect.set_options(timeout=NO_LIMIT_MS)
    try:
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield launched
            launched.close()
    finally:
        expect.set_options(timeout=None)


@pytest.fixture
def new_context(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    """Fresh browser profiles (cookies, storage) for a test; closed at its end."""
    opened: list[BrowserContext] = []

    def make(**options: object) -> BrowserContext:
        context = browser.new_context(**options)  # type: ignore[arg-type]
        context.set_default_timeout(0)  # see browser()
        opened.append(context)
        return context

    yield make
    for context in opened:
        context.close()


def sign_in(page: Page, server: LiveServer, key: str) -> None:
    page.goto(server.base_url + "/")
    expect(page).to_have_title("Sign in · weightport")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Models")).to_be_visible()


def shell(command: str, cwd: Path, key: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "WEIGHTPORT_API_KEY": key,
        "HOME": str(cwd),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def api_archive(server: LiveServer, ft_id: str, query: str) -> bytes:
    response = httpx.get(
        f"{server.base_url}/v1/finetune/download?ft_id={ft_id}&{query}",
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=120,
    )
    response.raise_for_status()
    return response.content


def test_copy_the_merged_download_command_and_run_it(
    live_server: LiveServer,
    demo_job: str,
    new_context: Callable[..., BrowserContext],
    tmp_path: Path,
) -> None:
    context = new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    sign_in(page, live_server, live_server.admin_key)
    page.get_by_role("link", name="Fine-tunes").click()
    page.get_by_role("link", name="admin/demo-llama-demo").click()
    expect(page.get_by_role("heading", name="Final checkpoint · step 30")).to_be_visible()
    merged = page.locator("#final .download").filter(has_text="Merged model")
    expected = api_archive(live_server, demo_job, "checkpoint=merged")
    for client in ("weightport", "together"):
        merged.locator(f'button[data-copy="cmd-30-merged-{client}"]').click()
        expect(page.get_by_role("status").filter(has_text="Copied")).to_be_attached()
        command = page.evaluate("navigator.clipboard.readText()")
        assert live_server.admin_key not in command and live_server.base_url in command
        workdir = tmp_path / client
        workdir.mkdir()
        result = shell(command, workdir, live_server.admin_key)
        assert result.returncode == 0, result.stdout + result.stderr
        (archive,) = workdir.glob("*.tar.zst")
        body = archive.read_bytes()
        assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
        top, files = strip_top(archive_files(body))
        assert archive.name == f"{top}.tar.zst"
        assert set(files) == set(demo.demo_base_files())  # the merged model, not the adapter
        assert files["config.json"] == demo.demo_base_files()["config.json"]
        assert files["model.safetensors"] != demo.demo_base_files()["model.safetensors"]


def test_a_file_download_link_gives_the_right_bytes(
    live_server: LiveServer, new_context: Callable[..., BrowserContext]
) -> None:
    page = new_context(accept_downloads=True).new_page()
    sign_in(page, live_server, live_server.admin_key)
    page.get_by_role("link", name="demo-llama").click()
    for name in ("model.safetensors", "tokenizer.json"):
        with page.expect_download() as pending:
            page.get_by_role("link", name=f"Download {name}").click()
        download = pending.value
        assert download.suggested_filename == name
        assert Path(download.path()).read_bytes() == demo.demo_base_files()[name]


def test_revoke_a_key_in_the_console_and_the_api_refuses_it(
    live_server: LiveServer, new_context: Callable[..., BrowserContext]
) -> None:
    account = f"ci-{secrets.token_hex(3)}"
    page = new_context().new_page()
    sign_in(page, live_server, live_server.admin_key)
    page.get_by_role("link", name="Keys").click()
    page.get_by_label("Account").fill(account)
    page.get_by_label("Name").fill("nightly job")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name=f"New key for {account}")).to_be_visible()
    key = page.locator("#new-key").inner_text().strip()
    models = f"{live_server.base_url}/v1/accounts/{account}/models"
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.get(models, headers=auth).status_code == 200
    page.goto(live_server.base_url + "/console/keys")
    assert key not in page.content()  # shown once, never again
    row = page.get_by_role("row").filter(has_text=account)
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status").filter(has_text="is revoked")).to_be_visible()
    expect(row.get_by_role("cell", name="revoked", exact=True)).to_be_visible()
    refused = httpx.get(models, headers=auth)
    assert refused.status_code == 401 and refused.json()["code"] == 16


def test_another_accounts_model_is_not_reachable_by_url(
    live_server: LiveServer, demo_job: str, new_context: Callable[..., BrowserContext]
) -> None:
    key = live_server.new_account(f"guess-{secrets.token_hex(3)}")
    page = new_context().new_page()
    sign_in(page, live_server, key)
    expect(page.get_by_text("No models yet")).to_be_visible()
    for path in (
        "/console/models/demo-llama",
        "/console/models/demo-llama/files/config.json",
        f"/console/fine-tunes/{demo_job}",
    ):
        response = page.goto(live_server.base_url + path)
        assert response is not None and response.status == 404, path
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        assert "safetensors" not in page.content()


class _AttackerSite:
    """A page on another origin with a form that posts to the console (no token)."""

    def __init__(self, target: str) -> None:
        body = (
            "<!doctype html><title>win a prize</title>"
            f'<form method="post" action="{target}/console/keys">'
            '<input name="account" value="csrf-planted"><button>Claim</button></form>'
        ).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_csrf_less_posts_are_refused(
    live_server: LiveServer, new_context: Callable[..., BrowserContext]
) -> None:
    attacker = _AttackerSite(live_server.base_url)
    try:
        page = new_context().new_page()
        sign_in(page, live_server, live_server.admin_key)
        # Same site (another port of 127.0.0.1): the browser sends the cookie; the token is missing.
        page.goto(f"http://127.0.0.1:{attacker.port}/")
        with page.expect_navigation() as navigation:
            page.get_by_role("button", name="Claim").click()
        response = navigation.value
        assert response is not None and response.status == 403
        expect(page.get_by_text("security token is missing or out of date")).to_be_visible()
        # Another site (localhost is not 127.0.0.1): SameSite=Strict keeps the cookie home.
        page.goto(f"http://localhost:{attacker.port}/")
        page.get_by_role("button", name="Claim").click()
        expect(page).to_have_title("Sign in · weightport")
        # A script on the console's own origin without the token is refused as well.
        page.goto(live_server.base_url + "/console/models")
        status = page.evaluate(
            """async () => (await fetch('/console/keys', {method: 'POST',
                 body: new URLSearchParams({account: 'csrf-planted'})})).status"""
        )
        assert status == 403
    finally:
        attacker.close()
    page.goto(live_server.base_url + "/console/keys")
    assert "csrf-planted" not in page.content()


def test_sign_out_ends_the_session(
    live_server: LiveServer, new_context: Callable[..., BrowserContext]
) -> None:
    key = live_server.new_account(f"out-{secrets.token_hex(3)}")
    context = new_context()
    page = context.new_page()
    sign_in(page, live_server, key)
    cookies = context.cookies()
    assert [c["name"] for c in cookies] == ["wp_session"]
    (cookie,) = cookies
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    assert context.cookies() == [] or all(c["name"] != "wp_session" for c in context.cookies())
    # The old cookie, replayed from another profile, no longer opens anything.
    replay = new_context()
    replay.add_cookies(cookies)
    other = replay.new_page()
    other.goto(live_server.base_url + "/console/models")
    expect(other).to_have_title("Sign in · weightport")


def test_browsing_works_without_javascript(
    live_server: LiveServer, demo_job: str, new_context: Callable[..., BrowserContext]
) -> None:
    page = new_context(java_script_enabled=False).new_page()
    sign_in(page, live_server, live_server.admin_key)
    page.get_by_label("Name contains").fill("demo")
    page.get_by_role("button", name="Apply").click()
    page.get_by_role("link", name="demo-llama").click()
    expect(page.locator("#weightport")).to_contain_text(
        "weightport download model admin/demo-llama"
    )
    expect(page.get_by_role("button", name="Copy")).to_have_count(0)  # copying needs JS
    page.get_by_role("link", name="Fine-tunes").click()
    page.get_by_role("link", name="admin/demo-llama-demo").click()
    page.get_by_role("link", name="Step 10", exact=True).click()
    page.locator("#step-10 summary").first.click()  # <details> opens without JS
    expect(page.locator("#cmd-10-merged-together")).to_contain_text(f"{demo_job}:10 -c merged")


def test_keyboard_only(live_server: LiveServer, new_context: Callable[..., BrowserContext]) -> None:
    page = new_context().new_page()
    page.goto(live_server.base_url + "/console/sign-in")
    expect(page.get_by_label("API key")).to_be_focused()  # autofocus
    page.keyboard.type(live_server.admin_key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    for _ in range(20):  # tab through the filters to the first model
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "demo-llama":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Demo Llama (tiny)")).to_be_visible()


def test_live_archive_build_progress(
    server_factory: Callable[..., LiveServer],
    tmp_path: Path,
    new_context: Callable[..., BrowserContext],
) -> None:
    """A compressed build queued from the page shows its progress and its result without a
    reload (the page polls a small JSON endpoint)."""
    # A slow level on 24 MiB of random floats keeps the build running while we watch.
    server = server_factory(
        tmp_path / "data",
        demo=False,
        extra_env={"WEIGHTPORT_ARCHIVE_LEVEL": "19", "WEIGHTPORT_ARCHIVE_THREADS": "1"},
    ).start()
    api = FireworksApi(server.base_url, "admin", server.admin_key)
    api.publish("base", weights(1))
    api.publish("final-weights", weights(2))
    api.close()
    registered = register_full(server, server.admin_key, 100, "final-weights")
    assert registered.status_code == 200, registered.text
    ft_id = registered.json()["id"]
    page = new_context().new_page()
    sign_in(page, server, server.admin_key)
    page.goto(f"{server.base_url}/console/fine-tunes/{ft_id}")
    full = page.locator("#final .download")
    stored_size = full.locator("[data-size]").inner_text()
    expect(full.locator("[data-encoding]")).to_have_text("stored")
    full.get_by_role("button", name="Build compressed archive").click()
    expect(full.locator("[data-build-state]")).to_contain_text("Compressed build:")
    page.evaluate("window.loadedOnce = true")
    expect(full.locator("[data-build-state]")).to_have_text("Compressed build: ready")
    assert page.evaluate("window.loadedOnce === true")  # updated in place, no reload
    expect(full.locator("[data-encoding]")).to_have_text("zstd-compressed")
    served = httpx.head(
        f"{server.base_url}/v1/finetune/download?ft_id={ft_id}",
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    assert full.locator("[data-size]").inner_text() == human_size(
        int(served.headers["content-length"])
    )
    assert full.locator("[data-size]").inner_text() != stored_size


def test_the_audit_page_finds_a_download_by_account(
    live_server: LiveServer, new_context: Callable[..., BrowserContext]
) -> None:
    account = f"watched-{secrets.token_hex(3)}"
    api = FireworksApi(live_server.base_url, account, live_server.new_account(account))
    url = api.publish("tracked", {"config.json": b'{"a": 1}'})["config.json"]
    api.close()
    assert httpx.get(url, headers={"User-Agent": "browser-audit/1"}).status_code == 200
    page = new_context().new_page()
    sign_in(page, live_server, live_server.admin_key)
    page.get_by_role("link", name="Audit").click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    page.get_by_label("Account").fill(account)
    page.get_by_label("Show").select_option(label="Downloads")
    rows = page.locator("#audit tbody tr")
    # The writer thread takes a batch a second: apply the filter until the row is there.
    while True:
        page.get_by_role("button", name="Apply").click()
        page.wait_for_load_state()
        if rows.count() == 1:
            break
        page.wait_for_timeout(200)
    expect(rows.first).to_contain_text(f"accounts/{account}/models/tracked")
    expect(rows.first).to_contain_text("config.json")
    expect(rows.first).to_contain_text("browser-audit/1")
    assert f"account={account}" in page.url and "action=download" in page.url


MAIN_PAGES = {
    "models": "/console/models",
    "model": "/console/models/demo-llama",
    "finetunes": "/console/fine-tunes",
    "finetune": "/console/fine-tunes/{ft}",
    "keys": "/console/keys",
    "audit": "/console/audit",
}


def test_pages_are_accessible_fit_a_phone_and_are_screenshotted(
    live_server: LiveServer, demo_job: str, new_context: Callable[..., BrowserContext]
) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    desktop = new_context(viewport={"width": 1280, "height": 900})
    page = desktop.new_page()
    page.goto(live_server.base_url + "/console/sign-in")
    page.screenshot(path=SCREENSHOTS / "sign-in.png")
    sign_in(page, live_server, live_server.admin_key)
    phone = new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    phone.add_cookies(desktop.cookies())
    small = phone.new_page()
    axe = Axe()
    for name, path in MAIN_PAGES.items():
        url = live_server.base_url + path.format(ft=demo_job)
        page.goto(url)
        results = axe.run(page)
        assert results.violations_count == 0, results.generate_report()
        page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)
        small.goto(url)
        overflow = small.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} is wider than a phone by {overflow}px"
        small.screenshot(path=SCREENSHOTS / f"{name}-phone.png", full_page=True)
