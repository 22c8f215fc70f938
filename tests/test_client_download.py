"""The downloader against a real HTTP server on 127.0.0.1 (aiohttp in a thread).

The server mimics the two APIs (Fireworks signed URLs, Together archive download) and has
switches for the failures a downloader must survive: Range ignored, a corrupted byte,
signed URLs that expire, connections dropped mid-body, 503s, a file replaced mid-download,
throttling, and a stall after a number of bytes (so a subprocess can be killed half-way).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from weightport.cli.download import download_group
from weightport.client import (
    ConfigurationError,
    DownloadOptions,
    FineTuneRef,
    FireworksModel,
    HttpSession,
    InsufficientSpace,
    IntegrityError,
    NotFound,
    ProgressSink,
    ProgressSnapshot,
    RemoteChanged,
    RemoteFile,
    SignedUrlRejected,
    TogetherCheckpoint,
    UnsafePath,
    download,
    resolve_api,
)
from weightport.client.options import FAR_CONNECTIONS, MIN_AUTO_PART
from weightport.client.sources import LOCAL_BASE_URL, ApiConfig

KEY = "wp_test_key"
ACCOUNT = "acct1"
MODEL = "tiny-model"
KiB = 1024


@dataclass
class Switches:
    """Failure modes of the fake server; tests flip them between (or during) runs."""

    ignore_range: bool = False
    corrupt: dict[str, int] = field(default_factory=dict)  # relpath -> offset of a bad byte
    expire_after: int | None = None  # part requests (not probes) one listing's URLs serve
    drop_after: int | None = None  # close the connection after this many body bytes ...
    drops_left: int = 0  # ... this many times
    fail_503: int = 0  # answer this many file requests with 503
    throttle: float | None = None  # seconds to sleep per 16 KiB written
    hold_after: int | None = None  # once this many body bytes are served, stall until None
    latency: float = 0.0  # seconds every request (listing, file) waits before it is answered
    replace_after: int | None = None  # after this many file requests, replace ...
    replacement: tuple[str, bytes] | None = None  # ... this file with these bytes


@dataclass
class Stats:
    listings: int = 0
    file_requests: int = 0
    body_bytes: int = 0
    queries: list[dict[str, str]] = field(default_factory=list)
    ranges: list[tuple[str, str]] = field(default_factory=list)  # (file, Range) per request


class FakeApi:
    """Files on disk served like weightport would, plus both APIs' JSON, in one aiohttp app."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.switches = Switches()
        self.stats = Stats()
        self.tokens: dict[str, int] = {}  # token -> requests used
        self.digests: dict[tuple[Path, int, int], str] = {}
        self.archive: Path | None = None
        self.job: dict[str, object] = {}
        self.app = web.Application()
        self.app.router.add_get("/v1/accounts/{account}/models/{verb}", self.get_download_endpoint)
        self.app.router.add_get("/files/{token}/{path:.*}", self.get_file)
        self.app.router.add_get("/v1/fine-tunes/{ft_id}", self.get_job)
        self.app.router.add_get("/v1/finetune/download", self.get_archive)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = web.AppRunner(self.app, access_log=None)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeApi:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write(self, relpath: str, data: bytes) -> None:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def files(self) -> dict[str, Path]:
        return {
            p.relative_to(self.root).as_posix(): p
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }

    def digest(self, path: Path) -> str | None:
        """sha256 of a served file, cached; none for huge (sparse) files."""
        st = path.stat()
        if st.st_size > 1 << 30:
            return None
        key = (path, st.st_mtime_ns, st.st_size)
        if key not in self.digests:
            with path.open("rb") as fh:
                self.digests[key] = hashlib.file_digest(fh, "sha256").hexdigest()
        return self.digests[key]

    # -- handlers -----------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {KEY}"

    async def get_download_endpoint(self, request: web.Request) -> web.Response:
        model, _, verb = request.match_info["verb"].rpartition(":")
        if not self._authorized(request):
            return web.json_response({"code": 16, "message": "bad key", "details": []}, status=401)
        if (
            request.match_info["account"] != ACCOUNT
            or model != MODEL
            or verb != "getDownloadEndpoint"
        ):
            return web.json_response(
                {"code": 5, "message": f'model "{model}" not found', "details": []}, status=404
            )
        if self.switches.latency:
            await asyncio.sleep(self.switches.latency)
        self.stats.listings += 1
        token = f"t{self.stats.listings}"
        self.tokens[token] = 0
        files = self.files()
        return web.json_response(
            {
                "filenameToSignedUrls": {k: f"{self.base_url}/files/{token}/{k}" for k in files},
                "filenameToSize": {k: str(p.stat().st_size) for k, p in files.items()},
                "filenameToSha256": {
                    k: digest for k, p in files.items() if (digest := self.digest(p))
                },
            }
        )

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        used = self.tokens.get(token)
        expire = self.switches.expire_after
        probe = request.headers.get("Range") == "bytes=0-0"
        if used is None or (expire is not None and used >= expire and not probe):
            return web.json_response(
                {"code": 7, "message": "signed URL expired at 2025-01-01T00:00:00Z", "details": []},
                status=403,
            )
        self.tokens[token] = used + (not probe)
        return await self._serve(request, self.root / request.match_info["path"])

    async def get_job(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response(
                {"error": {"message": "bad key", "code": "unauthenticated"}}, status=401
            )
        if request.match_info["ft_id"] != self.job.get("id"):
            return web.json_response(
                {
                    "error": {
                        "message": "Fine-tune job not found",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "not_found",
                    }
                },
                status=404,
            )
        return web.json_response(self.job)

    async def get_archive(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request) or self.archive is None:
            return web.json_response(
                {"error": {"message": "no", "code": "unauthenticated"}}, status=401
            )
        self.stats.queries.append(dict(request.query))
        return await self._serve(request, self.archive, disposition=True)

    async def _serve(
        self, request: web.Request, path: Path, disposition: bool = False
    ) -> web.StreamResponse:
        sw = self.switches
        self.stats.file_requests += 1
        self.stats.ranges.append((path.name, request.headers.get("Range", "")))
        if sw.latency:
            await asyncio.sleep(sw.latency)
        if (
            sw.replace_after is not None
            and sw.replacement
            and self.stats.file_requests > sw.replace_after
        ):
            self.write(*sw.replacement)
            sw.replace_after = None
        if sw.fail_503 > 0:
            sw.fail_503 -= 1
            return web.json_response(
                {"code": 14, "message": "try later", "details": []}, status=503
            )
        if not path.is_file():
            return web.json_response(
                {"code": 5, "message": "no such file", "details": []}, status=404
            )
        st = path.stat()
        size = st.st_size
        headers = {"ETag": f'"{st.st_mtime_ns:x}-{size:x}"', "Accept-Ranges": "bytes"}
        if disposition:
            headers["Content-Disposition"] = f'attachment; filename="{path.name}"'
        start, end, status = 0, size, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if match and not sw.ignore_range:
            start = int(match[1])
            end = min(size, int(match[2]) + 1) if match[2] else size
            if start >= size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        relpath = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else ""
        plain = not (
            sw.corrupt
            or sw.drops_left
            or sw.throttle
            or sw.ignore_range
            or sw.hold_after is not None
        )
        if plain:
            self.stats.body_bytes += end - start
            return web.FileResponse(path, headers=headers)  # sendfile, handles Range itself
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start
        await resp.prepare(request)
        with path.open("rb") as fh:
            fh.seek(start)
            pos = start
            while pos < end:
                chunk = bytearray(fh.read(min(16 * KiB, end - pos)))
                bad = sw.corrupt.get(relpath)
                if bad is not None and pos <= bad < pos + len(chunk):
                    chunk[bad - pos] ^= 0xFF
                if sw.drops_left and sw.drop_after is not None and pos - start >= sw.drop_after:
                    sw.drops_left -= 1
                    assert request.transport is not None
                    request.transport.close()  # the client sees a short body
                    return resp
                while sw.hold_after is not None and self.stats.body_bytes >= sw.hold_after:
                    await asyncio.sleep(0.01)
                try:
                    await resp.write(bytes(chunk))
                except ConnectionError:  # the client hung up (it restarts or stops): fine
                    return resp
                self.stats.body_bytes += len(chunk)
                pos += len(chunk)
                if sw.throttle:
                    await asyncio.sleep(sw.throttle)
        await resp.write_eof()
        return resp


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeApi]:
    root = tmp_path / "served"
    root.mkdir()
    server = FakeApi(root).start()
    yield server
    server.stop()


def _populate(api: FakeApi) -> dict[str, bytes]:
    contents = {
        "config.json": b'{"model_type": "llama"}',
        "model-00001-of-00002.safetensors": os.urandom(700 * KiB + 13),
        "model-00002-of-00002.safetensors": os.urandom(450 * KiB),
        "tokenizer/tokenizer.json": os.urandom(70 * KiB),
        "empty.txt": b"",
    }
    for relpath, data in contents.items():
        api.write(relpath, data)
    return contents


def _source(api: FakeApi) -> FireworksModel:
    return FireworksModel(HttpSession(), ApiConfig(api.base_url, KEY), ACCOUNT, MODEL)


SMALL = DownloadOptions(connections=4, part_size=64 * KiB, buffer_size=16 * KiB)


def _assert_tree(dest: Path, contents: dict[str, bytes]) -> None:
    found = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert found == set(contents)  # no leftover .wpdl / .wpdl.part files
    for relpath, data in contents.items():
        assert (dest / relpath).read_bytes() == data, relpath


def test_model_download_multi_file_verified_by_sha256(api: FakeApi, tmp_path: Path) -> None:
    contents = _populate(api)
    snapshots: list[ProgressSnapshot] = []
    result = download(_source(api), tmp_path / "out", SMALL, snapshots.append)
    _assert_tree(tmp_path / "out", contents)
    assert [f.relpath for f in result.files] == sorted(contents)
    assert {f.verified for f in result.files} == {"sha256"}
    assert all(f.sha256 == _sha256(contents[f.relpath]) for f in result.files)
    assert result.downloaded_bytes == sum(map(len, contents.values()))
    assert snapshots[-1].done == snapshots[-1].total == result.downloaded_bytes
    # A second run finds everything in place and verified: nothing is fetched again.
    requests = api.stats.file_requests
    again = download(_source(api), tmp_path / "out", SMALL)
    assert all(f.skipped for f in again.files if f.size) and again.downloaded_bytes == 0
    # The listing's sizes and digests identify the files: not even a probe is sent.
    assert api.stats.file_requests == requests


def test_hashing_after_download_gives_the_same_result(api: FakeApi, tmp_path: Path) -> None:
    contents = _populate(api)
    options = DownloadOptions(connections=2, part_size=64 * KiB, hash_while_downloading=False)
    result = download(_source(api), tmp_path / "out", options)
    _assert_tree(tmp_path / "out", contents)
    assert {f.verified for f in result.files} == {"sha256"}


def test_bytes_arriving_in_order_are_hashed_without_reading_them_back(
    api: FakeApi, tmp_path: Path
) -> None:
    contents = _populate(api)
    # One connection fetches every file's parts in order: each buffer extends the digest.
    result = download(_source(api), tmp_path / "out", replace(SMALL, connections=1))
    _assert_tree(tmp_path / "out", contents)
    assert {f.verified for f in result.files} == {"sha256"}
    assert [f.reread_bytes for f in result.files] == [0] * len(contents)
    # Several connections: whatever arrived ahead of the digest is read back, still verified.
    again = download(_source(api), tmp_path / "again", SMALL)
    _assert_tree(tmp_path / "again", contents)
    assert {f.verified for f in again.files} == {"sha256"}
    assert all(0 <= f.reread_bytes <= f.size for f in again.files)


def test_a_resume_reads_back_only_the_resumed_bytes(api: FakeApi, tmp_path: Path) -> None:
    contents = _populate(api)
    one = replace(SMALL, connections=1)
    api.switches.throttle = 0.02
    with pytest.raises(KeyboardInterrupt):
        download(_source(api), tmp_path / "out", one, _interrupt_after(200 * KiB))
    api.switches.throttle = None
    result = download(_source(api), tmp_path / "out", one)
    _assert_tree(tmp_path / "out", contents)
    assert sum(f.resumed_bytes for f in result.files) > 0
    assert [f.reread_bytes for f in result.files] == [f.resumed_bytes for f in result.files]


def test_range_ignoring_server_downloads_in_one_stream(api: FakeApi, tmp_path: Path) -> None:
    contents = _populate(api)
    api.switches.ignore_range = True
    result = download(_source(api), tmp_path / "out", SMALL)
    _assert_tree(tmp_path / "out", contents)
    assert {f.verified for f in result.files} == {"sha256"}


def _interrupt_after(limit: int) -> ProgressSink:
    def sink(snapshot: ProgressSnapshot) -> None:
        if snapshot.done - snapshot.resumed >= limit:
            raise KeyboardInterrupt  # what Ctrl-C does to the calling thread

    return sink


def _interrupted_download(api: FakeApi, out: Path) -> dict[str, bytes]:
    """Serve the model slowly and stop the download with Ctrl-C once 200 KiB arrived: what
    it leaves in ``out`` is what a resume starts from. The served files, by path."""
    contents = _populate(api)
    api.switches.throttle = 0.02
    with pytest.raises(KeyboardInterrupt):
        download(_source(api), out, SMALL, _interrupt_after(200 * KiB))
    api.switches.throttle = None
    return contents


def test_interrupted_download_resumes_from_disk(api: FakeApi, tmp_path: Path) -> None:
    contents = _interrupted_download(api, tmp_path / "out")
    states = list((tmp_path / "out").rglob("*.wpdl"))
    assert states, "an interrupted download leaves resume state"
    done = sum(sum(json.loads(p.read_text())["done"]) for p in states)
    assert done > 0
    served_before = api.stats.body_bytes
    # One connection: a split part closes its connection with bytes still in flight, which
    # would blur the count of what the resume asked for.
    result = download(_source(api), tmp_path / "out", replace(SMALL, connections=1))
    _assert_tree(tmp_path / "out", contents)
    assert sum(f.resumed_bytes for f in result.files) == done
    assert api.stats.body_bytes - served_before <= sum(map(len, contents.values())) - done + 64


def _range_starts(api: FakeApi, name: str) -> list[int]:
    """Where the part requests for ``name`` began (probes left out)."""
    starts = []
    for served, header in api.stats.ranges:
        match = re.fullmatch(r"bytes=(\d+)-\d*", header)
        if served == name and match and header != "bytes=0-0":
            starts.append(int(match[1]))
    return starts


def test_idle_connections_split_the_part_still_downloading(api: FakeApi, tmp_path: Path) -> None:
    data = os.urandom(768 * KiB)
    api.write("model.safetensors", data)
    api.switches.throttle = 0.005  # ~3 MB/s per connection: the split halves are worth it
    # One part for the whole file and four connections: three have nothing to take.
    options = DownloadOptions(connections=4, part_size=768 * KiB, buffer_size=16 * KiB)
    result = download(_source(api), tmp_path / "out", options)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == data
    assert result.files[0].verified == "sha256"
    starts = _range_starts(api, "model.safetensors")
    assert sorted(starts)[0] == 0 and len(starts) >= 3, starts  # idle ones took upper halves
    assert all(0 < start < len(data) for start in sorted(starts)[1:])


def test_a_split_download_resumes_from_its_listed_parts(api: FakeApi, tmp_path: Path) -> None:
    data = os.urandom(768 * KiB)
    api.write("model.safetensors", data)
    api.switches.throttle = 0.01
    options = DownloadOptions(connections=4, part_size=768 * KiB, buffer_size=16 * KiB)
    with pytest.raises(KeyboardInterrupt):
        download(_source(api), tmp_path / "out", options, _interrupt_after(300 * KiB))
    state = json.loads((tmp_path / "out" / "model.safetensors.wpdl").read_text())
    assert state["version"] == 2 and len(state["parts"]) >= 2  # split parts are remembered
    api.switches.throttle = None
    result = download(_source(api), tmp_path / "out", options)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == data
    assert result.files[0].resumed_bytes == sum(state["done"]) > 0


def test_a_far_server_gets_more_connections(api: FakeApi, tmp_path: Path) -> None:
    # (The near case is left to test_client_units: on a loaded machine even a loopback
    # probe can take 10 ms.)
    contents = _populate(api)
    api.switches.latency = 0.02  # every request waits: a long round trip
    result = download(_source(api), tmp_path / "out", DownloadOptions(buffer_size=16 * KiB))
    _assert_tree(tmp_path / "out", contents)
    assert result.tuning.rtt >= 0.02
    assert result.tuning.connections == FAR_CONNECTIONS
    assert result.tuning.part_size == MIN_AUTO_PART  # a small model: the smallest parts


def _probes(api: FakeApi) -> list[str]:
    """The files that were sent a one-byte probe."""
    return [served for served, header in api.stats.ranges if header == "bytes=0-0"]


def test_a_listing_with_sizes_and_digests_needs_no_probe(api: FakeApi, tmp_path: Path) -> None:
    contents = _populate(api)
    result = download(_source(api), tmp_path / "out", SMALL)
    _assert_tree(tmp_path / "out", contents)
    assert {f.verified for f in result.files} == {"sha256"}
    assert _probes(api) == []
    # Every part request after a file's first answer carries the ETag that answer gave.
    assert api.stats.file_requests > len(contents)


def test_files_served_by_another_server_are_probed(api: FakeApi, tmp_path: Path) -> None:
    class Elsewhere(FireworksModel):
        @property
        def origin(self) -> str:
            return "http://listing.invalid"  # the listing's round trip says nothing here

    contents = _populate(api)
    source = Elsewhere(HttpSession(), ApiConfig(api.base_url, KEY), ACCOUNT, MODEL)
    download(source, tmp_path / "out", SMALL)
    _assert_tree(tmp_path / "out", contents)
    assert sorted(_probes(api)) == sorted(Path(name).name for name in contents)


def test_a_resume_probes_before_it_continues(api: FakeApi, tmp_path: Path) -> None:
    contents = _interrupted_download(api, tmp_path / "out")
    assert _probes(api) == []
    result = download(_source(api), tmp_path / "out", SMALL)
    _assert_tree(tmp_path / "out", contents)
    assert sum(f.resumed_bytes for f in result.files) > 0
    assert sorted(_probes(api)) == sorted(Path(name).name for name in contents)


def test_a_listed_size_the_server_does_not_have_is_refused(api: FakeApi, tmp_path: Path) -> None:
    class Wrong(FireworksModel):
        def list_files(self):  # type: ignore[no-untyped-def]
            return [replace(f, size=f.size + 1) for f in super().list_files() if f.size]

    _populate(api)
    source = Wrong(HttpSession(), ApiConfig(api.base_url, KEY), ACCOUNT, MODEL)
    with pytest.raises(RemoteChanged, match="the listing says"):
        download(source, tmp_path / "out", SMALL)
    assert not (tmp_path / "out" / "config.json").exists()


def test_file_changed_in_place_mid_download_starts_over(api: FakeApi, tmp_path: Path) -> None:
    # Same size, other bytes: only the ETag tells (adopted from the file's first answer).
    contents = _populate(api)
    name = "model-00001-of-00002.safetensors"
    contents[name] = os.urandom(len(contents[name]))
    api.switches.replacement = (name, contents[name])
    api.switches.replace_after = 6  # once its first part (the 2nd request) was answered
    api.switches.throttle = 0.0005
    download(_source(api), tmp_path / "out", SMALL)
    _assert_tree(tmp_path / "out", contents)
    assert api.stats.listings == 2  # the restart listed the model again


def test_bytes_lost_in_a_crash_are_caught_and_fetched_again(api: FakeApi, tmp_path: Path) -> None:
    out = tmp_path / "out"
    contents = _interrupted_download(api, out)
    # An OS crash can lose written pages the state already counts (no fsync when a sha256
    # will re-check everything): zero some recorded bytes behind the state's back.
    state = next(p for p in out.rglob("*.wpdl") if json.loads(p.read_text())["done"][0] > 0)
    damaged = state.with_name(state.name[: -len(".wpdl")]).relative_to(out).as_posix()
    with state.with_name(state.name + ".part").open("r+b") as fh:
        fh.write(bytes(min(4096, json.loads(state.read_text())["done"][0])))
    result = download(_source(api), out, SMALL)
    _assert_tree(out, contents)
    assert next(f for f in result.files if f.relpath == damaged).resumed_bytes == 0


@pytest.mark.parametrize("leftover", [b"", b'{"version":2,"si', b"garbage"])
def test_a_kill_while_the_state_was_being_replaced_still_resumes_cleanly(
    api: FakeApi, tmp_path: Path, leftover: bytes
) -> None:
    # A kill between writing the state's temp file and renaming it over the state leaves
    # the temp file behind, empty, half written or whole: the resume must use the last
    # complete state and leave nothing behind, even for files it finishes (or finds
    # finished) without writing a state again.
    out = tmp_path / "out"
    contents = _interrupted_download(api, out)
    states = list(out.rglob("*.wpdl"))
    done = sum(sum(json.loads(p.read_text())["done"]) for p in states)
    assert states and done > 0
    for state in states:
        state.with_name(state.name + ".tmp").write_bytes(leftover)
    (out / "config.json.wpdl.tmp").write_bytes(leftover)  # beside a file already in place
    assert (out / "config.json").read_bytes() == contents["config.json"]
    result = download(_source(api), out, SMALL)
    _assert_tree(out, contents)
    assert sum(f.resumed_bytes for f in result.files) == done


def test_a_kill_between_placing_a_file_and_dropping_its_state_keeps_the_file(
    api: FakeApi, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    contents = _interrupted_download(api, out)
    name = "model-00001-of-00002.safetensors"
    state = out / f"{name}.wpdl"
    assert json.loads(state.read_text())["done"][0] > 0
    # What a kill right after the verified partial file was renamed onto the target leaves.
    (out / f"{name}.wpdl.part").unlink()
    (out / name).write_bytes(contents[name])
    result = download(_source(api), out, SMALL)
    _assert_tree(out, contents)
    assert next(f for f in result.files if f.relpath == name).skipped  # not fetched again


def test_resume_refused_when_the_server_stops_honouring_range(api: FakeApi, tmp_path: Path) -> None:
    contents = _interrupted_download(api, tmp_path / "out")
    api.switches.ignore_range = True
    result = download(_source(api), tmp_path / "out", SMALL)
    _assert_tree(tmp_path / "out", contents)
    assert sum(f.resumed_bytes for f in result.files) == 0


def test_corrupted_byte_is_detected_and_never_placed(api: FakeApi, tmp_path: Path) -> None:
    contents = _populate(api)
    bad = "model-00001-of-00002.safetensors"
    api.switches.corrupt = {bad: 300 * KiB + 7}
    with pytest.raises(IntegrityError, match=bad) as info:
        download(_source(api), tmp_path / "out", SMALL)
    assert info.value.relpath == bad
    out = tmp_path / "out"
    assert not (out / bad).exists()
    assert not list(out.rglob(f"{bad}.wpdl*")), "bad bytes and their state are discarded"
    api.switches.corrupt = {}
    download(_source(api), out, SMALL)
    _assert_tree(out, contents)


def test_expired_urls_are_refreshed_mid_download(api: FakeApi, tmp_path: Path) -> None:
    contents = _populate(api)
    api.switches.expire_after = 6
    download(_source(api), tmp_path / "out", SMALL)
    _assert_tree(tmp_path / "out", contents)
    assert api.stats.listings > 2


def test_url_refreshes_are_bounded(api: FakeApi, tmp_path: Path) -> None:
    _populate(api)
    api.switches.expire_after = 0  # every signed request is refused
    options = DownloadOptions(connections=2, url_refreshes=3)
    with pytest.raises(SignedUrlRejected, match="expired"):
        download(_source(api), tmp_path / "out", options)
    assert api.stats.listings == 1 + 3


def test_dropped_connections_and_503s_are_retried(api: FakeApi, tmp_path: Path) -> None:
    contents = _populate(api)
    api.switches.drop_after = 20 * KiB
    api.switches.drops_left = 4
    api.switches.fail_503 = 3
    download(_source(api), tmp_path / "out", SMALL)
    _assert_tree(tmp_path / "out", contents)
    assert api.switches.drops_left == 0 and api.switches.fail_503 == 0


def test_file_replaced_mid_download_starts_over(api: FakeApi, tmp_path: Path) -> None:
    contents = _populate(api)
    name = "model-00001-of-00002.safetensors"
    contents[name] = os.urandom(600 * KiB)
    api.switches.replacement = (name, contents[name])
    api.switches.replace_after = len(contents) + 3  # after the probes and a few parts
    api.switches.throttle = 0.0005
    download(_source(api), tmp_path / "out", SMALL)
    _assert_tree(tmp_path / "out", contents)


def test_remote_paths_cannot_escape_the_target(api: FakeApi, tmp_path: Path) -> None:
    class Evil(FireworksModel):
        def list_files(self):  # type: ignore[no-untyped-def]
            files = list(super().list_files())
            return [*files, RemoteFile("../escape.bin", files[0].url, signed=True)]

    _populate(api)
    with pytest.raises(UnsafePath):
        download(
            Evil(HttpSession(), ApiConfig(api.base_url, KEY), ACCOUNT, MODEL), tmp_path / "out"
        )
    assert not (tmp_path / "escape.bin").exists()


def test_insufficient_space_is_reported_before_writing(api: FakeApi, tmp_path: Path) -> None:
    huge = api.root / "huge.bin"
    with huge.open("wb") as fh:
        fh.truncate(1 << 40)  # sparse: 1 TiB of nothing
    with pytest.raises(InsufficientSpace, match="GB free"):
        download(_source(api), tmp_path / "out", SMALL)
    assert not list((tmp_path / "out").rglob("*.wpdl*"))


def test_unknown_model_is_a_clear_not_found(api: FakeApi, tmp_path: Path) -> None:
    source = FireworksModel(HttpSession(), ApiConfig(api.base_url, KEY), ACCOUNT, "missing")
    with pytest.raises(NotFound, match="not found"):
        download(source, tmp_path / "out")


# -- Together -----------------------------------------------------------------------------


def _make_archive(path: Path, members: dict[str, bytes]) -> None:
    import io
    import tarfile

    import zstandard

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(zstandard.ZstdCompressor(level=1).compress(raw.getvalue()))


def _together(api: FakeApi, tmp_path: Path) -> dict[str, bytes]:
    members = {
        "owner--model-step-10/adapter_config.json": b'{"r": 8}',
        "owner--model-step-10/adapter_model.safetensors": os.urandom(300 * KiB),
    }
    api.archive = tmp_path / "archives" / "owner--model-step-10.tar.zst"
    api.archive.parent.mkdir()
    _make_archive(api.archive, members)
    api.job = {
        "id": "ft-abc",
        "status": "completed",
        "model_output_name": "owner/Model",
        "training_type": {"type": "Lora", "lora_r": 8, "lora_alpha": 16},
    }
    return members


def test_together_checkpoint_downloads_one_archive(api: FakeApi, tmp_path: Path) -> None:
    _together(api, tmp_path)
    assert api.archive is not None
    source = TogetherCheckpoint(
        HttpSession(), ApiConfig(api.base_url, KEY), FineTuneRef.parse("ft-abc:10")
    )
    result = download(source.resolve(), tmp_path / "dl", SMALL)
    assert source.checkpoint == "merged"  # LoRA default, as the Together CLI picks
    assert api.stats.queries[-1] == {
        "ft_id": "ft-abc",
        "checkpoint": "merged",
        "checkpoint_step": "10",
    }
    (only,) = result.files
    assert only.relpath == "owner--model-step-10.tar.zst"  # from Content-Disposition
    assert (tmp_path / "dl" / only.relpath).read_bytes() == api.archive.read_bytes()
    assert only.verified == "size+etag"


def test_cli_finetune_extract_strip_components_json(api: FakeApi, tmp_path: Path) -> None:
    members = _together(api, tmp_path)
    out = tmp_path / "model"
    result = CliRunner().invoke(
        download_group,
        [
            "finetune",
            "ft-abc",
            "-c",
            "adapter",
            "-o",
            str(out),
            "--extract",
            "--strip-components",
            "1",
            "--json",
            "--base-url",
            api.base_url,
            "--api-key",
            KEY,
            "--part-size",
            "64K",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["checkpoint"] == "adapter" and doc["extracted_files"] == 2
    for name, data in members.items():
        assert (out / name.split("/", 1)[1]).read_bytes() == data
    assert not list(tmp_path.glob("*.wpdl*")) and doc["filename"] is None  # archive removed


def test_cli_model_json_and_errors(
    api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    contents = _populate(api)
    for name in ("WEIGHTPORT_BASE_URL", "WEIGHTPORT_API_KEY", "WEIGHTPORT_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FIREWORKS_BASE_URL", api.base_url)  # the vendor's own pair
    monkeypatch.setenv("FIREWORKS_API_KEY", KEY)
    runner = CliRunner()
    out = tmp_path / "m"
    ok = runner.invoke(download_group, ["model", f"{ACCOUNT}/{MODEL}", "-o", str(out), "--json"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert doc["model"] == f"accounts/{ACCOUNT}/models/{MODEL}"
    assert {f["path"]: f["sha256"] for f in doc["files"]} == {
        k: _sha256(v) for k, v in contents.items()
    }
    missing = runner.invoke(download_group, ["model", f"{ACCOUNT}/nope", "-o", str(out)])
    assert missing.exit_code == 1
    assert missing.stderr.strip().splitlines() == ['Error: HTTP 404: model "nope" not found']
    monkeypatch.delenv("FIREWORKS_API_KEY")
    nokey = runner.invoke(download_group, ["model", f"{ACCOUNT}/{MODEL}", "--json"])
    assert nokey.exit_code == 2
    assert (
        nokey.stderr == f"Error: no API key for {api.base_url}: pass --api-key or set "
        "FIREWORKS_API_KEY\n"
    )
    assert json.loads(nokey.stdout)["error"]["type"] == "ConfigurationError"
    for flag, value in (("--connections", "lots"), ("--connections", "0"), ("--part-size", "x")):
        bad = runner.invoke(download_group, ["model", f"{ACCOUNT}/{MODEL}", flag, value])
        assert bad.exit_code == 2 and f"'{value}' is not" in bad.stderr, bad.stderr


def test_api_settings_precedence() -> None:
    wp = {"WEIGHTPORT_API_KEY": "wp"}
    # Nothing named: the local server, with weightport's key and default account.
    assert resolve_api("together", environ=wp) == ApiConfig(LOCAL_BASE_URL, "wp", "admin")
    # A vendor's key alone goes nowhere: not to the vendor, not to weightport.
    with pytest.raises(ConfigurationError, match=f"no API key for {LOCAL_BASE_URL}: .* WEIGHT"):
        resolve_api("together", environ={"TOGETHER_API_KEY": "t"})
    # The vendor's own base URL brings its own key and account, never weightport's key.
    fw = {"FIREWORKS_BASE_URL": "http://fw", "FIREWORKS_API_KEY": "fw", "FIREWORKS_ACCOUNT_ID": "a"}
    assert resolve_api("fireworks", environ={**fw, **wp}) == ApiConfig("http://fw", "fw", "a")
    with pytest.raises(ConfigurationError, match="set FIREWORKS_API_KEY"):
        resolve_api("fireworks", environ={"FIREWORKS_BASE_URL": "http://fw", **wp})
    # weightport's base URL (variable or flag) takes weightport's key and account.
    both = {**fw, **wp, "WEIGHTPORT_ACCOUNT": "w"}
    assert resolve_api("fireworks", environ={**both, "WEIGHTPORT_BASE_URL": "http://wp/"}) == (
        ApiConfig("http://wp", "wp", "w")
    )
    assert resolve_api("fireworks", base_url="http://x", environ=both) == (
        ApiConfig("http://x", "wp", "w")
    )
    # Arguments win over everything.
    assert resolve_api(
        "fireworks", base_url="http://x/", api_key="k", account="c", environ=both
    ) == ApiConfig("http://x", "k", "c")
    with pytest.raises(ConfigurationError, match="must start with http"):
        resolve_api("fireworks", base_url="127.0.0.1:8700", environ=wp)


# -- the command in a real process: SIGKILL and Ctrl-C ---------------------------------------


def _cli(api: FakeApi, out: Path, *extra: str) -> subprocess.Popen[str]:
    args = [
        sys.executable,
        "-m",
        "weightport.cli.download",
        "model",
        f"{ACCOUNT}/{MODEL}",
        "-o",
        str(out),
        "--base-url",
        api.base_url,
        "--api-key",
        KEY,
        "--connections",
        "4",
        "--part-size",
        "64K",
        *extra,
    ]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_state(out: Path, proc: subprocess.Popen[str], least: int = 1) -> int:
    """Block until checkpoints recorded at least ``least`` bytes; the bytes they recorded."""
    deadline = time.monotonic() + 60  # a hang guard, not a performance assertion
    while time.monotonic() < deadline and proc.poll() is None:
        done = 0
        for state in out.rglob("*.wpdl"):
            with contextlib.suppress(OSError, ValueError):  # replaced while we read
                done += sum(json.loads(state.read_text())["done"])
        if done >= least:
            return done
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint appeared; exit {proc.poll()}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_cli_resumes_after_kill(api: FakeApi, tmp_path: Path, sig: signal.Signals) -> None:
    contents = _populate(api)
    # The server stalls once 256 KiB are out, however loaded the machine: the kill always
    # lands mid-transfer (the two shards are bigger than that, so neither can be finished)
    # while the client checkpoints what it has.
    api.switches.hold_after = 256 * KiB
    out = tmp_path / "out"
    proc = _cli(api, out, "--quiet")
    _wait_for_state(out, proc, least=64 * KiB)
    proc.send_signal(sig)
    _, err = proc.communicate()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert "resume" in err and "Traceback" not in err
    kept = sum(sum(json.loads(p.read_text())["done"]) for p in out.rglob("*.wpdl"))
    assert kept >= 64 * KiB
    placed = [k for k in contents if (out / k).exists()]
    assert len(placed) < len(contents)
    assert all((out / k).read_bytes() == contents[k] for k in placed)  # only verified files
    api.switches.hold_after = None
    proc = _cli(api, out, "--json")
    stdout, err = proc.communicate()
    assert proc.returncode == 0, err
    doc = json.loads(stdout)
    assert sum(f["resumed_bytes"] for f in doc["files"]) >= kept
    _assert_tree(out, contents)


def test_cli_survives_kill_9_at_any_moment(api: FakeApi, tmp_path: Path) -> None:
    # Kills at random moments: while Python starts, while probing, between a part's bytes
    # and their checkpoint, inside a state write, while a file is verified or renamed. Each
    # run continues what the one before left; whatever moment a kill hit, the last run
    # must end with exactly the served files and nothing else.
    contents = _populate(api)
    api.switches.throttle = 0.05  # ~320 KB/s per connection: a run from scratch lasts ~1 s
    out = tmp_path / "out"
    seed = os.getpid()  # other moments each run; a failure names its seed to replay it
    moments = random.Random(seed).choices(range(1500), k=8)  # milliseconds
    for ms in moments:
        proc = _cli(api, out, "--quiet")
        time.sleep(ms / 1000)
        proc.kill()
        _, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), (seed, moments, err)
    api.switches.throttle = None
    proc = _cli(api, out, "--quiet")
    _, err = proc.communicate()
    assert proc.returncode == 0, (seed, moments, err)
    _assert_tree(out, contents)
