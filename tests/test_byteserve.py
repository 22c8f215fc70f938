"""weightport.server.byteserve over real sockets: an aiohttp server on 127.0.0.1 in a thread,
and real clients (httpx, urllib3, curl, raw sockets)."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import logging
import os
import random
import resource
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
import urllib3

from tests.serving_harness import (
    GatedSource,
    PatternSource,
    Server,
    connect,
    hang_up_mid_body,
    reset,
)
from weightport.errors import StorageError
from weightport.server.byteserve import (
    CHUNK_SIZE,
    Entity,
    LocalFile,
    SourceBody,
    content_disposition,
)
from weightport.server.read_ahead import ReadAheadPool


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


class LoopWithoutSendfile(asyncio.SelectorEventLoop):
    """A real event loop that, like uvloop, has no ``loop.sendfile``."""

    sendfile = asyncio.AbstractEventLoop.sendfile  # raises NotImplementedError


@pytest.fixture(scope="module")
def server_without_sendfile() -> Iterator[Server]:
    srv = Server(LoopWithoutSendfile)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=None) as c:
        yield c


SIZE = 3 * CHUNK_SIZE + 12345  # several chunks, last one partial


@pytest.fixture(scope="module")
def pattern() -> PatternSource:
    return PatternSource(SIZE, seed=1)


@pytest.fixture(scope="module")
def pattern_file(tmp_path_factory: pytest.TempPathFactory, pattern: PatternSource) -> Path:
    path = tmp_path_factory.mktemp("blobs") / "pattern.bin"
    path.write_bytes(pattern.bytes())
    return path


@pytest.fixture(scope="module")
def pool() -> Iterator[ReadAheadPool]:
    shared = ReadAheadPool(workers=2, window=3)
    yield shared
    shared.close()


@pytest.fixture(params=["local", "source", "read-ahead"])
def url(
    request: pytest.FixtureRequest,
    server: Server,
    pattern: PatternSource,
    pattern_file: Path,
    pool: ReadAheadPool,
) -> str:
    """The same entity served from a local file (sendfile), from a ByteSource, and from a
    ByteSource computed ahead on a read-ahead pool."""
    entity = Entity(size=SIZE, etag="d1g3st")
    if request.param == "local":
        return server.add(entity, LocalFile(pattern_file))
    read_ahead = pool if request.param == "read-ahead" else None
    return server.add(entity, SourceBody(PatternSource(SIZE, seed=1), read_ahead))


def parse_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Strictly parse a multipart/byteranges body: exact CRLF framing, nothing extra."""
    kind, _, boundary = response.headers["content-type"].partition("; boundary=")
    assert kind == "multipart/byteranges"
    delimiter = b"--" + boundary.encode()
    body = response.content
    assert body.startswith(delimiter + b"\r\n")
    assert body.endswith(b"\r\n" + delimiter + b"--\r\n")
    inner = body[len(delimiter) + 2 : -(len(delimiter) + 6)]
    parts = []
    for raw in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, sep, data = raw.partition(b"\r\n\r\n")
        assert sep
        headers = dict(line.decode().split(": ", 1) for line in head.split(b"\r\n"))
        parts.append((headers, data))
    return parts


# ------------------------------------------------------------------------------ 200 / 206


def test_full_get(client: httpx.Client, url: str, pattern: PatternSource) -> None:
    r = client.get(url, headers={"Accept-Encoding": "gzip, deflate, br"})
    assert r.status_code == 200
    assert r.content == pattern.bytes()
    assert r.headers["content-length"] == str(SIZE)
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == '"d1g3st"'
    assert r.headers["content-type"] == "application/octet-stream"
    assert "content-encoding" not in r.headers
    assert "content-range" not in r.headers
    assert "content-disposition" not in r.headers


def test_single_range(client: httpx.Client, url: str, pattern: PatternSource) -> None:
    r = client.get(url, headers={"Range": "bytes=1048570-1048585"})  # crosses a chunk edge
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 1048570-1048585/{SIZE}"
    assert r.headers["content-length"] == "16"
    assert r.content == pattern.bytes(1048570, 1048586)


def test_together_probe_and_resume(client: httpx.Client, url: str, pattern: PatternSource) -> None:
    probe = client.get(url, headers={"Range": "bytes=0-1"})
    assert (probe.status_code, probe.headers["content-range"]) == (206, f"bytes 0-1/{SIZE}")
    assert probe.content == pattern.bytes(0, 2)
    resumed = client.get(url, headers={"Range": "bytes=1048576-"})
    assert resumed.status_code == 206
    assert resumed.headers["content-range"] == f"bytes 1048576-{SIZE - 1}/{SIZE}"
    assert resumed.content == pattern.bytes(1048576)


def test_suffix_range(client: httpx.Client, url: str, pattern: PatternSource) -> None:
    r = client.get(url, headers={"Range": "bytes=-100"})
    assert r.headers["content-range"] == f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}"
    assert r.content == pattern.bytes(SIZE - 100)
    longer = client.get(url, headers={"Range": f"bytes=-{SIZE * 2}"})
    assert longer.status_code == 206
    assert longer.headers["content-range"] == f"bytes 0-{SIZE - 1}/{SIZE}"
    assert longer.content == pattern.bytes()


def test_multi_range(client: httpx.Client, url: str, pattern: PatternSource) -> None:
    r = client.get(url, headers={"Range": "bytes=-5, 0-9, 2000000-3000000, 5-14"})
    assert r.status_code == 206
    assert "content-range" not in r.headers
    assert int(r.headers["content-length"]) == len(r.content)
    parts = parse_multipart(r)
    expected = [(0, 15), (2000000, 3000001), (SIZE - 5, SIZE)]  # sorted and coalesced
    assert len(parts) == len(expected)
    for (headers, data), (start, end) in zip(parts, expected, strict=True):
        assert headers == {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"bytes {start}-{end - 1}/{SIZE}",
        }
        assert data == pattern.bytes(start, end)


def test_multi_range_reads_with_the_stdlib_email_parser(
    client: httpx.Client, url: str, pattern: PatternSource
) -> None:
    r = client.get(url, headers={"Range": "bytes=0-99,1000-1099"})
    raw = f"Content-Type: {r.headers['content-type']}\r\n\r\n".encode() + r.content
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert message.is_multipart()
    parts = list(message.iter_parts())
    assert [p["Content-Range"] for p in parts] == [
        f"bytes 0-99/{SIZE}",
        f"bytes 1000-1099/{SIZE}",
    ]
    for part, (start, end) in zip(parts, [(0, 100), (1000, 1100)], strict=True):
        assert part.get_content_type() == "application/octet-stream"
        assert part.get_payload(decode=True) == pattern.bytes(start, end)


def test_random_ranges_are_identical_from_file_and_source(
    client: httpx.Client, server: Server, pattern: PatternSource, pattern_file: Path
) -> None:
    entity = Entity(size=SIZE, etag="same")
    local = server.add(entity, LocalFile(pattern_file))
    source = server.add(entity, SourceBody(PatternSource(SIZE, seed=1)))
    rng = random.Random(7)
    for _ in range(6):
        pairs = sorted(sorted(rng.sample(range(SIZE), 2)) for _ in range(rng.randint(1, 3)))
        header = "bytes=" + ",".join(f"{a}-{b}" for a, b in pairs)
        a = client.get(local, headers={"Range": header})
        b = client.get(source, headers={"Range": header})
        assert a.status_code == b.status_code == 206
        if "content-range" in a.headers:
            assert a.headers["content-range"] == b.headers["content-range"]
            assert a.content == b.content
        else:
            assert [d for _, d in parse_multipart(a)] == [d for _, d in parse_multipart(b)]
        assert a.headers["content-length"] == b.headers["content-length"]


# ----------------------------------------------------------------- 416 / ignored ranges


def test_unsatisfiable_range_is_416_with_content_range(client: httpx.Client, url: str) -> None:
    r = client.get(url, headers={"Range": f"bytes={SIZE}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{SIZE}"
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text.startswith("Range ")
    head = client.head(url, headers={"Range": "bytes=-0"})
    assert head.status_code == 416
    assert head.headers["content-range"] == f"bytes */{SIZE}"
    assert head.content == b""


@pytest.mark.parametrize(
    "header", ["bytes=5-1", "items=0-1", "bytes=" + ",".join(["0-0"] * 9), "bytes=x"]
)
def test_ignored_range_serves_the_whole_entity(client: httpx.Client, url: str, header: str) -> None:
    r = client.get(url, headers={"Range": header})
    assert r.status_code == 200
    assert len(r.content) == SIZE


def test_two_range_fields_are_ignored(server: Server) -> None:
    url = server.add(Entity(size=10, etag="t"), SourceBody(PatternSource(10)))
    http = urllib3.PoolManager()
    headers = urllib3.HTTPHeaderDict()
    headers.add("Range", "bytes=0-1")
    headers.add("Range", "bytes=4-5")
    r = http.request("GET", url, headers=headers)
    assert r.status == 200
    assert len(r.data) == 10


# ------------------------------------------------------------------------ conditionals


def test_if_none_match_answers_304(client: httpx.Client, url: str) -> None:
    for value in ['"d1g3st"', 'W/"d1g3st"', '"other", "d1g3st"', "*"]:
        r = client.get(url, headers={"If-None-Match": value, "Range": "bytes=0-1"})
        assert r.status_code == 304
        assert r.content == b""
        assert r.headers["etag"] == '"d1g3st"'
        assert "content-length" not in r.headers
    assert client.head(url, headers={"If-None-Match": '"d1g3st"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_if_range(client: httpx.Client, url: str, pattern: PatternSource) -> None:
    match = client.get(url, headers={"Range": "bytes=10-19", "If-Range": '"d1g3st"'})
    assert match.status_code == 206
    assert match.content == pattern.bytes(10, 20)
    for stale in ['"other"', 'W/"d1g3st"', "Wed, 21 Oct 2015 07:28:00 GMT"]:
        r = client.get(url, headers={"Range": "bytes=10-19", "If-Range": stale})
        assert r.status_code == 200
        assert r.content == pattern.bytes()


def test_failed_if_match_is_raised_as_412(client: httpx.Client, url: str) -> None:
    assert client.get(url, headers={"If-Match": '"other"'}).status_code == 412
    assert client.get(url, headers={"If-Match": '"d1g3st"'}).status_code == 200


def test_other_methods_are_refused(client: httpx.Client, url: str) -> None:
    assert client.post(url, content=b"x").status_code == 405


# -------------------------------------------------------------------------------- HEAD


def test_head_sends_get_headers_without_touching_the_body(
    client: httpx.Client, server: Server, tmp_path: Path
) -> None:
    entity = Entity(size=5000, etag="h", filename="w.bin", cache_control="max-age=60")
    never_read = PatternSource(5000)
    source = server.add(entity, SourceBody(never_read))
    missing = server.add(entity, LocalFile(tmp_path / "does-not-exist"))
    heads = []
    for url in (source, missing):
        head = client.head(url)
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == "5000"
        assert head.headers["etag"] == '"h"'
        assert head.headers["cache-control"] == "max-age=60"
        assert head.headers["content-disposition"] == 'attachment; filename="w.bin"'
        ranged = client.head(url, headers={"Range": "bytes=0-9,20-29"})
        assert ranged.status_code == 206
        assert ranged.content == b""
        assert ranged.headers["content-type"].startswith("multipart/byteranges; boundary=")
        heads += [head, ranged]
    assert never_read.reads == []  # the LocalFile HEAD did not even open its (missing) file
    full = client.get(source)
    ranged_get = client.get(source, headers={"Range": "bytes=0-9,20-29"})
    for get, head in zip([full, ranged_get] * 2, heads, strict=True):
        assert get.status_code == head.status_code
        assert get.headers["content-length"] == head.headers["content-length"]
        assert (
            get.headers["content-type"].split(";")[0] == head.headers["content-type"].split(";")[0]
        )


# ----------------------------------------------------------------------- other headers


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("model.safetensors", 'attachment; filename="model.safetensors"'),
        (
            'a "quoted" name.bin',
            'attachment; filename="a _quoted_ name.bin"; '
            "filename*=UTF-8''a%20%22quoted%22%20name.bin",
        ),
        (
            "вес\\100%.bin",
            'attachment; filename="____100_.bin"; '
            "filename*=UTF-8''%D0%B2%D0%B5%D1%81%5C100%25.bin",
        ),
        ("line\r\nbreak", "attachment; filename=\"line__break\"; filename*=UTF-8''line%0D%0Abreak"),
    ],
)
def test_content_disposition_escaping(filename: str, expected: str) -> None:
    value = content_disposition(filename)
    assert value == expected
    if "filename*=UTF-8''" in value:
        assert unquote(value.split("filename*=UTF-8''")[1], encoding="utf-8") == filename


def test_filename_over_the_wire(client: httpx.Client, server: Server) -> None:
    name = 'модель "v2".safetensors'
    url = server.add(Entity(size=3, etag="f", filename=name), SourceBody(PatternSource(3)))
    value = client.get(url).headers["content-disposition"]
    assert value.startswith('attachment; filename="')
    assert unquote(value.split("filename*=UTF-8''")[1]) == name


def test_extra_headers_are_copied_and_reserved_ones_refused(
    client: httpx.Client, server: Server
) -> None:
    shared = {"X-Checksum-Sha256": "abc", "Cache-Control": "no-store"}
    before = dict(shared)
    url = server.add(Entity(size=4, etag="x"), SourceBody(PatternSource(4)), shared)
    for _ in range(2):
        r = client.get(url, headers={"Range": "bytes=0-0"})
        assert r.headers["x-checksum-sha256"] == "abc"
        assert r.headers["cache-control"] == "no-store"
    assert shared == before
    bad = server.add(
        Entity(size=4, etag="x"), SourceBody(PatternSource(4)), {"Content-Encoding": "zstd"}
    )
    assert client.get(bad).status_code == 500
    outcome = server.outcome(bad)
    assert isinstance(outcome.error, ValueError)


def test_empty_entity(client: httpx.Client, server: Server, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    for body in (LocalFile(tmp_path / "empty"), SourceBody(PatternSource(0))):
        url = server.add(Entity(size=0, etag="e"), body)
        r = client.get(url)
        assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")
        r = client.get(url, headers={"Range": "bytes=0-"})
        assert (r.status_code, r.headers["content-range"]) == (416, "bytes */0")


# ---------------------------------------------------------------------------- errors


def test_missing_or_wrong_size_file_is_a_storage_error(
    client: httpx.Client, server: Server, tmp_path: Path
) -> None:
    (tmp_path / "short").write_bytes(b"123")
    for path in (tmp_path / "absent", tmp_path / "short", tmp_path):
        url = server.add(Entity(size=10, etag="s"), LocalFile(path))
        r = client.get(url)
        assert r.status_code == 500
        assert isinstance(server.outcome(url).error, StorageError)


def test_failing_first_read_is_an_error_response(client: httpx.Client, server: Server) -> None:
    url = server.add(Entity(size=100, etag="s"), SourceBody(PatternSource(100, fail_at=0)))
    r = client.get(url)
    assert r.status_code == 500
    assert "simulated storage failure" in r.text


def test_failing_later_read_cuts_the_connection(
    client: httpx.Client, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    size = 4 * CHUNK_SIZE
    url = server.add(
        Entity(size=size, etag="s"), SourceBody(PatternSource(size, fail_at=2 * CHUNK_SIZE))
    )
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(url)
    assert server.outcome(url).status == 200  # the handler returned; no second response
    failures = [r for r in caplog.records if r.name == "weightport.server.byteserve"]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    assert failures[0].exc_info is not None
    assert client.get(url, headers={"Range": "bytes=0-9"}).status_code == 206


# ------------------------------------------------------------------ disconnects & memory


def open_fds_to(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            continue
    return count


def test_client_gone_before_headers_is_quiet(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    source = GatedSource(10)
    url = server.add(Entity(size=10, etag="g"), SourceBody(source))
    sock = connect(url)
    sock.sendall(f"GET /{url.rsplit('/', 1)[1]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    source.started.wait()  # the handler is waiting on its first read
    reset(sock)
    request = server.requests[url.rsplit("/", 1)[1]]
    while request.transport is not None and not request.transport.is_closing():
        threading.Event().wait(0.01)  # until the server has seen the hang-up
    source.gate.set()
    assert server.outcome(url).error is None
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("kind", ["local", "source", "read-ahead"])
@pytest.mark.parametrize("headers", ["", "Range: bytes=0-10,100-30000000\r\n"])
def test_client_disconnect_is_quiet_and_leaks_nothing(
    client: httpx.Client,
    server: Server,
    pool: ReadAheadPool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    headers: str,
) -> None:
    size = 64 * CHUNK_SIZE
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        f.truncate(size)  # sparse: no disk used
    body: LocalFile | SourceBody = (
        LocalFile(path)
        if kind == "local"
        else SourceBody(PatternSource(size), pool if kind == "read-ahead" else None)
    )
    url = server.add(Entity(size=size, etag="big"), body)
    caplog.set_level(logging.DEBUG, logger="weightport.server.byteserve")
    for _ in range(3):
        hang_up_mid_body(url, headers)
        outcome = server.outcome(url)
        assert outcome.error is None  # no exception escaped to aiohttp's error logger
        assert open_fds_to(path) == 0
        assert pool.held_bytes == 0  # every response gave its read-ahead buffers back
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    went_away = [r for r in caplog.records if r.getMessage().startswith("client went away")]
    assert len(went_away) == 3  # each hang-up really happened mid-body
    assert client.get(url, headers={"Range": "bytes=0-3"}).status_code == 206


@pytest.mark.parametrize("read_ahead", [False, True])
def test_source_buffers_are_reused(
    client: httpx.Client, server: Server, pool: ReadAheadPool, read_ahead: bool
) -> None:
    size = 24 * CHUNK_SIZE
    source = PatternSource(size)
    url = server.add(Entity(size=size, etag="r"), SourceBody(source, pool if read_ahead else None))
    with client.stream("GET", url) as r:
        total = sum(len(chunk) for chunk in r.iter_raw())
    assert total == size
    assert len(source.reads) == 24
    assert all(length == CHUNK_SIZE for _, length, _ in source.reads)
    # window + 2 buffers in turn (3 without a pool), replaced only if the transport still
    # held one: far fewer than 24.
    ring = pool.window + 2 if read_ahead else 3
    assert len({buffer for _, _, buffer in source.reads}) <= 2 * ring


@pytest.mark.parametrize("kind", ["local", "source"])
def test_large_get_is_streamed_not_buffered(server: Server, tmp_path: Path, kind: str) -> None:
    size = 256 * CHUNK_SIZE
    path = tmp_path / "large.bin"
    with path.open("wb") as f:
        f.truncate(size)
    body: LocalFile | SourceBody = (
        LocalFile(path) if kind == "local" else SourceBody(PatternSource(size))
    )
    url = server.add(Entity(size=size, etag="l"), body)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    done = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url],
        check=True,
        capture_output=True,
        text=True,
    )
    assert done.stdout == f"200 {size}"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 64 * 1024


# ------------------------------------------------------------------------------ curl


def test_curl_resume_and_range(server: Server, pattern: PatternSource, tmp_path: Path) -> None:
    url = server.add(
        Entity(size=SIZE, etag="c", filename="weights.bin"), SourceBody(PatternSource(SIZE, seed=1))
    )
    out = tmp_path / "partial.bin"
    out.write_bytes(pattern.bytes(0, 1_000_000))
    subprocess.run(["curl", "-sS", "-f", "-C", "-", "-o", str(out), url], check=True)
    assert out.read_bytes() == pattern.bytes()

    head = subprocess.run(
        ["curl", "-sS", "-f", "-r", "0-1", "-D", "-", "-o", "/dev/null", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.lower()
    assert "http/1.1 206" in head
    assert f"content-range: bytes 0-1/{SIZE}" in head

    subprocess.run(["curl", "-sS", "-f", "-O", "-J", url], check=True, cwd=tmp_path)
    assert (tmp_path / "weights.bin").read_bytes() == pattern.bytes()


def test_urllib3_multi_range_and_head(server: Server, pattern: PatternSource) -> None:
    url = server.add(Entity(size=SIZE, etag="u"), SourceBody(PatternSource(SIZE, seed=1)))
    http = urllib3.PoolManager()
    r = http.request("GET", url, headers={"Range": "bytes=0-4,-5"})
    assert r.status == 206
    assert r.headers["Content-Type"].startswith("multipart/byteranges")
    assert pattern.bytes(0, 5) in r.data
    assert pattern.bytes(SIZE - 5) in r.data
    h = http.request("HEAD", url)
    assert (h.status, h.data, h.headers["Content-Length"]) == (200, b"", str(SIZE))


# ------------------------------------------------------------- loops without sendfile


def test_local_file_without_sendfile_streams_the_same_bytes(
    client: httpx.Client,
    server_without_sendfile: Server,
    pattern: PatternSource,
    pattern_file: Path,
) -> None:
    url = server_without_sendfile.add(Entity(size=SIZE, etag="n"), LocalFile(pattern_file))
    assert client.get(url).content == pattern.bytes()
    one = client.get(url, headers={"Range": "bytes=1000000-2100000"})
    assert one.content == pattern.bytes(1000000, 2100001)
    many = client.get(url, headers={"Range": "bytes=0-9,1048000-1049000,-3"})
    assert [data for _, data in parse_multipart(many)] == [
        pattern.bytes(0, 10),
        pattern.bytes(1048000, 1049001),
        pattern.bytes(SIZE - 3),
    ]


def test_local_file_without_sendfile_closes_on_disconnect(
    server_without_sendfile: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    size = 64 * CHUNK_SIZE
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        f.truncate(size)
    url = server_without_sendfile.add(Entity(size=size, etag="b"), LocalFile(path))
    hang_up_mid_body(url)
    assert server_without_sendfile.outcome(url).error is None
    # The file is closed once the read in flight has finished: wait for that.
    while open_fds_to(path):
        threading.Event().wait(0.01)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
