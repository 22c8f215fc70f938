"""The Hub routes as raw HTTP: the headers clients key on, errors, Range, paging, quoting."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi
from tests.hub_repos import revoke
from weightport import demo

COMMIT = re.compile(r"[0-9a-f]{40}")
HUB_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def hub(live_server: LiveServer) -> Iterator[httpx.Client]:
    client = httpx.Client(
        base_url=f"{live_server.base_url}/hf",
        headers={"Authorization": f"Bearer {live_server.admin_key}"},
        timeout=60,
    )
    yield client
    client.close()


def assert_no_xet(response: httpx.Response) -> None:
    assert not [h for h in response.headers if h.lower().startswith("x-xet")]
    assert "xet" not in response.headers.get("link", "")


def test_head_of_a_stored_file(hub: httpx.Client) -> None:
    files = demo.demo_base_files()
    response = hub.head("/admin/demo-llama/resolve/main/config.json")
    assert response.status_code == 200
    sha = hashlib.sha256(files["config.json"]).hexdigest()
    assert response.headers["etag"] == response.headers["x-linked-etag"] == f'"{sha}"'
    assert response.headers["content-length"] == response.headers["x-linked-size"]
    assert int(response.headers["content-length"]) == len(files["config.json"])
    assert COMMIT.fullmatch(response.headers["x-repo-commit"])
    assert response.headers["content-type"].startswith("application/json")
    assert_no_xet(response)
    got = hub.get("/admin/demo-llama/resolve/main/config.json")
    assert got.content == files["config.json"]
    assert got.headers["x-repo-commit"] == response.headers["x-repo-commit"]


def test_stored_files_redirect_to_a_presigning_store(
    stack_server: LiveServer, stack_demo_job: str
) -> None:
    headers = {"Authorization": f"Bearer {stack_server.admin_key}"}
    base = f"{stack_server.base_url}/hf/admin"
    body = demo.demo_base_files()["model.safetensors"]
    url = f"{base}/demo-llama/resolve/main/model.safetensors"
    for method in ("HEAD", "GET"):
        answer = httpx.request(method, url, headers=headers)
        if "WEIGHTPORT_STORAGE_URL" not in stack_server.extra_env:
            assert answer.status_code == 200  # a local store: served here, zero-copy
            continue
        assert answer.status_code == 302
        sha = hashlib.sha256(body).hexdigest()
        assert answer.headers["x-linked-etag"] == answer.headers["etag"] == f'"{sha}"'
        assert answer.headers["x-linked-size"] == str(len(body))
        assert COMMIT.fullmatch(answer.headers["x-repo-commit"])
        location = answer.headers["location"]
        assert not location.startswith(stack_server.base_url)  # another origin only
        # What clients then do: GET the store's URL without weightport's key, maybe a Range.
        assert httpx.get(location).content == body
        part = httpx.get(location, headers={"Range": "bytes=0-100000"})
        assert part.status_code == 206 and part.content == body[:100001]
    merged = httpx.head(f"{base}/{stack_demo_job}/resolve/main/model.safetensors", headers=headers)
    assert merged.status_code == 200  # merged shards exist nowhere but here: always streamed


def test_ranges_and_416(hub: httpx.Client) -> None:
    body = demo.demo_base_files()["model.safetensors"]
    url = "/admin/demo-llama/resolve/main/model.safetensors"
    part = hub.get(url, headers={"Range": "bytes=0-100000"})
    assert part.status_code == 206 and part.content == body[:100001]
    assert part.headers["content-range"] == f"bytes 0-100000/{len(body)}"
    assert part.headers["x-linked-size"] == str(len(body))
    beyond = hub.get(url, headers={"Range": f"bytes={len(body)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(body)}"
    assert beyond.headers["x-error-code"] == "RangeNotSatisfiable"
    assert COMMIT.fullmatch(beyond.headers["x-repo-commit"])


def test_merged_shards_are_stable_and_range_addressable(hub: httpx.Client, demo_job: str) -> None:
    url = f"/admin/{demo_job}/resolve/main/model.safetensors"
    head = hub.head(url)
    base = demo.demo_base_files()["model.safetensors"]
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(base)
    etag = head.headers["x-linked-etag"].strip('"')
    assert re.fullmatch(r"[0-9a-f]{40}", etag)  # not a content sha256, and not claiming to be
    whole = hub.get(url).content
    assert len(whole) == len(base) and whole != base
    header = 8 + int.from_bytes(base[:8], "little")
    assert whole[:header] == base[:header]  # the base's header, byte for byte
    assert hub.get(url, headers={"Range": "bytes=1000-99999"}).content == whole[1000:100000]
    assert hub.get(url).content == whole
    assert hub.head(url).headers["x-linked-etag"] == head.headers["x-linked-etag"]


def test_revisions_by_quoted_ref_and_by_commit(hub: httpx.Client, demo_job: str) -> None:
    info = hub.get(f"/api/models/admin/{demo_job}/revision/refs%2Fheads%2Fstep-10")
    assert info.status_code == 200
    sha = info.json()["sha"]
    by_commit = hub.head(f"/admin/{demo_job}/resolve/{sha}/config.json")
    assert by_commit.headers["x-repo-commit"] == sha
    quoted = hub.head(f"/admin/{demo_job}/resolve/refs%2Fheads%2Fstep-10/config.json")
    assert quoted.status_code == 200 and quoted.headers["x-repo-commit"] == sha


def test_repo_info_shape(hub: httpx.Client, demo_job: str) -> None:
    body = hub.get(f"/api/models/admin/{demo_job}", params={"blobs": "True"}).json()
    assert body["id"] == body["modelId"] == f"admin/{demo_job}"
    assert COMMIT.fullmatch(body["sha"])
    assert HUB_DATE.fullmatch(body["lastModified"]) and HUB_DATE.fullmatch(body["createdAt"])
    siblings = {s["rfilename"]: s for s in body["siblings"]}
    assert set(siblings) == set(demo.demo_base_files())
    config = siblings["config.json"]
    assert (
        config["lfs"]["sha256"] == hashlib.sha256(demo.demo_base_files()["config.json"]).hexdigest()
    )
    assert "lfs" not in siblings["model.safetensors"]  # merged: its sha256 is not known
    assert "xet" not in str(body).lower()
    refs = hub.get(f"/api/models/admin/{demo_job}/refs").json()
    branches = {b["name"]: b["targetCommit"] for b in refs["branches"]}
    assert branches["main"] == body["sha"] == branches[f"step-{demo.DEMO_STEPS[-1]}"]
    assert hub.get(f"/api/models/admin/{demo_job}", params={"blobs": "maybe"}).status_code == 400


@pytest.fixture(scope="module")
def many_files(live_server: LiveServer) -> tuple[str, str, dict[str, bytes]]:
    account = f"hf-{secrets.token_hex(3)}"
    key = live_server.new_account(account)
    files = {f"shards/part-{i:03d}.bin": f"part {i}".encode() for i in range(60)}
    files["config.json"] = b"{}"
    api = FireworksApi(live_server.base_url, account, key)
    api.publish("many", files)
    api.close()
    return account, key, files


def test_tree_pages_follow_absolute_links(
    live_server: LiveServer, many_files: tuple[str, str, dict[str, bytes]]
) -> None:
    account, key, files = many_files
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{live_server.base_url}/hf/api/models/{account}/many/tree/main"
    seen: list[str] = []
    pages = 0
    next_url: str | None = url + "?recursive=True&expand=true"
    while next_url:
        page = httpx.get(next_url, headers=headers, timeout=60)
        assert page.status_code == 200
        seen += [e["path"] for e in page.json()]
        assert all(e["lastCommit"]["id"] == page.json()[0]["lastCommit"]["id"] for e in page.json())
        pages += 1
        link = page.links.get("next", {}).get("url")
        if link:
            assert link.startswith(
                f"{live_server.base_url}/hf/api/models/{account}/many/tree/main?"
            )
            assert "recursive=True" in link and "expand=true" in link
        next_url = link
    assert pages == 2
    assert seen == ["config.json", "shards", *sorted(p for p in files if p.startswith("shards/"))]
    top = httpx.get(url, headers=headers, timeout=60).json()
    assert [(e["path"], e["type"]) for e in top] == [
        ("config.json", "file"),
        ("shards", "directory"),
    ]
    folder = httpx.get(f"{url}/shards%2Fpart-007.bin", headers=headers, timeout=60)
    assert folder.status_code == 404 and folder.headers["x-error-code"] == "EntryNotFound"
    sub = httpx.get(f"{url}/shards", headers=headers, timeout=60).json()
    assert len(sub) == 60 and sub[0] == {
        "type": "file",
        "oid": sub[0]["oid"],
        "size": len(files["shards/part-000.bin"]),
        "path": "shards/part-000.bin",
        "lfs": {
            "oid": hashlib.sha256(files["shards/part-000.bin"]).hexdigest(),
            "size": len(files["shards/part-000.bin"]),
            "pointerSize": sub[0]["lfs"]["pointerSize"],
        },
    }
    info = httpx.post(
        f"{live_server.base_url}/hf/api/models/{account}/many/paths-info/main",
        data={"paths": ["config.json", "shards", "nope"], "expand": "false"},
        headers=headers,
        timeout=60,
    ).json()
    assert [(e["path"], e["type"]) for e in info] == [
        ("config.json", "file"),
        ("shards", "directory"),
    ]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/models/admin/no-such-model", 404, "RepoNotFound"),
        ("/admin/no-such-model/resolve/main/config.json", 404, "RepoNotFound"),
        ("/api/models/admin/demo-llama/revision/v9", 404, "RevisionNotFound"),
        ("/admin/demo-llama/resolve/v9/config.json", 404, "RevisionNotFound"),
        ("/admin/demo-llama/resolve/main/nope.json", 404, "EntryNotFound"),
        ("/api/models/admin/demo-llama/tree/main/nope", 404, "EntryNotFound"),
        ("/admin/demo-llama/resolve/main/a%2F..%2Fconfig.json", 400, "BadRequest"),
        ("/api/datasets/admin/demo-llama", 404, "RepoNotFound"),
        ("/gpt2/resolve/main/config.json", 404, "RepoNotFound"),
        ("/api/models/admin/demo-llama/tree/main?cursor=x", 400, "BadRequest"),
    ],
)
def test_every_4xx_has_an_error_code(hub: httpx.Client, path: str, status: int, code: str) -> None:
    for method in ("GET", "HEAD"):
        response = hub.request(method, path)
        assert response.status_code == status, (method, response.text)
        assert response.headers["x-error-code"] == code
        assert response.headers["x-error-message"]
    if code == "EntryNotFound":
        assert COMMIT.fullmatch(response.headers["x-repo-commit"])


def test_keys(live_server: LiveServer, demo_job: str) -> None:
    url = f"{live_server.base_url}/hf/admin/demo-llama/resolve/main/config.json"
    anonymous = httpx.head(url)
    assert anonymous.status_code == 401 and anonymous.headers["x-error-code"] == "RepoNotFound"
    assert "HF_TOKEN" in anonymous.headers["x-error-message"]
    stranger = live_server.new_account(f"hf-{secrets.token_hex(3)}")
    foreign = httpx.head(url, headers={"Authorization": f"Bearer {stranger}"})
    missing = httpx.head(
        url.replace("demo-llama", "no-such-model"), headers={"Authorization": f"Bearer {stranger}"}
    )
    assert foreign.status_code == missing.status_code == 404
    assert foreign.headers["x-error-code"] == missing.headers["x-error-code"] == "RepoNotFound"
    revoked = live_server.new_account("admin")
    revoke(live_server, revoked)
    for header in (f"Bearer {revoked}", "Basic dXNlcjpwYXNz"):
        refused = httpx.head(url, headers={"Authorization": header})
        assert refused.status_code == 401
        assert refused.headers["x-error-message"] == "Invalid credentials in Authorization header"
