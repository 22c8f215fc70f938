"""The downloader's pure parts: error table, header parsing, safe paths, resume state, CLI args."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest

import weightport.client as client
from weightport import errors as server_errors
from weightport.cli.download import parse_size
from weightport.client import (
    ApiError,
    AuthenticationFailed,
    BadRequest,
    ConfigurationError,
    DownloadOptions,
    FineTuneRef,
    HttpSession,
    NotFound,
    PermissionDenied,
    RangeNotSatisfiable,
    ServerError,
    SignedUrlRejected,
    TransferError,
    UnsafePath,
    parse_model_name,
)
from weightport.client.errors import RateLimited, RequestTimedOut, error_from_response
from weightport.client.http import (
    ContentRange,
    disposition_filename,
    parse_content_range,
    parse_unsatisfied_range,
    range_header,
    strong_etag,
)
from weightport.client.options import (
    FAR_CONNECTIONS,
    FAR_RTT,
    MAX_AUTO_PART,
    MIN_AUTO_PART,
    NEAR_CONNECTIONS,
    Tuning,
)
from weightport.client.remote import normalize_sha256, repr_digest_sha256, safe_target
from weightport.client.state import Part, ResumeState, load_state, plan_parts, save_state


def _fw(code: int, message: str = "m") -> bytes:
    return json.dumps({"code": code, "message": message, "details": []}).encode()


def _tg(code: str | None, kind: str = "invalid_request_error") -> bytes:
    body = {"error": {"message": "m", "type": kind, "param": None, "code": code}}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, _fw(5), NotFound),
        (401, _fw(16), AuthenticationFailed),
        (400, _fw(9), BadRequest),
        (503, _fw(14), ServerError),
        (404, _tg("not_found"), NotFound),
        (403, _tg("signature_invalid", "permission_error"), SignedUrlRejected),
        (400, _tg(None), BadRequest),
        (416, _tg("range_not_satisfiable"), RangeNotSatisfiable),
        (502, b"<html>bad gateway</html>", ServerError),
        (403, b'{"error":{"message":"invalid key","code":"UNAUTHORIZED"}}', PermissionDenied),
        (418, b"", BadRequest),
    ],
)
def test_error_table(status: int, body: bytes, expected: type[ApiError]) -> None:
    error = error_from_response(status, body)
    assert type(error) is expected
    assert error.status == status


def test_any_403_from_a_signed_url_is_refreshable() -> None:
    error = error_from_response(403, _fw(7, "signed URL expired"), signed_url=True)
    assert isinstance(error, SignedUrlRejected) and "expired" in str(error)


def test_every_server_error_code_maps_to_its_status() -> None:
    """The client's one table keeps up with the server's error tree, in both envelopes."""
    by_status: dict[int, type[ApiError]] = {
        400: BadRequest,
        401: AuthenticationFailed,
        403: PermissionDenied,
        404: NotFound,
        405: BadRequest,
        409: BadRequest,
        412: BadRequest,
        413: BadRequest,
        416: RangeNotSatisfiable,
        417: BadRequest,
        408: RequestTimedOut,
        429: RateLimited,
    }
    classes = [server_errors.WeightportError]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        expected = ServerError if cls.status >= 500 else by_status[cls.status]
        for body in (_tg(cls.code, cls.together_type), _fw(int(cls.grpc))):
            error = error_from_response(cls.status, body)
            assert isinstance(error, expected), (cls.__name__, body, type(error).__name__)


def test_client_never_imports_the_server_side() -> None:
    code = (
        "import sys, weightport.client\n"
        "bad = [m for m in sys.modules if m.split('.')[:2] in "
        "(['weightport','server'],['weightport','catalog'],['weightport','storage'],"
        "['weightport','archive'],['weightport','merge'])]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unreachable_server_is_one_plain_line() -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransferError) as info:
        HttpSession(api_retries=0).get_json(f"http://127.0.0.1:{port}/v1/x", {})
    assert str(info.value) == f"cannot reach http://127.0.0.1:{port}: Connection refused"


def test_public_names_do_not_drift() -> None:
    expected = """
        ApiConfig ApiError AuthenticationFailed BadRequest ConfigurationError ConnectionFailed
        DownloadError DownloadOptions DownloadResult ExtractResult FileProgress FileResult
        FineTuneRef FireworksModel HttpSession InsufficientSpace IntegrityError NotFound
        PermissionDenied ProgressSink ProgressSnapshot RangeNotSatisfiable RateLimited
        RemoteChanged RemoteFile ServerError SignedUrlRejected Source TogetherCheckpoint
        TransferError Tuning UnsafeArchive UnsafePath download extract_tar_zst parse_model_name
        resolve_api
    """
    assert sorted(client.__all__) == sorted(expected.split())
    assert all(hasattr(client, name) for name in client.__all__)


def test_header_parsing() -> None:
    assert range_header(0, 1) == "bytes=0-0" and range_header(5, None) == "bytes=5-"
    assert parse_content_range("bytes 0-1/10") == ContentRange(0, 2, 10)
    assert parse_content_range("bytes 3-9/*") == ContentRange(3, 10, None)
    for bad in (None, "bytes 5-3/10", "bytes 0-10/10", "items 0-1/2", "bytes */10"):
        assert parse_content_range(bad) is None
    assert parse_unsatisfied_range("bytes */0") == 0 and parse_unsatisfied_range("x") is None
    assert strong_etag(' "abc" ') == '"abc"'
    assert strong_etag('W/"abc"') is None and strong_etag("abc") is None
    assert disposition_filename('attachment; filename="m.tar.zst"') == "m.tar.zst"
    assert disposition_filename("attachment; filename*=UTF-8''caf%C3%A9.tar.zst") == "café.tar.zst"
    assert disposition_filename(None) is None
    digest = "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    assert repr_digest_sha256(digest) == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert normalize_sha256("AB" * 32) == "ab" * 32 and normalize_sha256("xyz") is None


@pytest.mark.parametrize(
    "relpath", ["../x", "/etc/passwd", "a//b", "a/./b", "a/../b", "a\\b", "", "a/"]
)
def test_safe_target_refuses(tmp_path: Path, relpath: str) -> None:
    with pytest.raises(UnsafePath):
        safe_target(tmp_path, relpath)


def test_safe_target_refuses_escape_through_existing_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "sub").symlink_to(tmp_path)
    with pytest.raises(UnsafePath, match="outside"):
        safe_target(root, "sub/file.bin")
    assert safe_target(root, "tokenizer/tok.json") == root.resolve() / "tokenizer" / "tok.json"


def test_parts_and_state_round_trip(tmp_path: Path) -> None:
    assert plan_parts(0, 10) == ()
    assert plan_parts(20, 10) == (Part(0, 0, 10), Part(1, 10, 20))
    assert plan_parts(21, 10)[-1] == Part(2, 20, 21)
    # Part 0 was split while it downloaded: its upper half is part 3, listed last.
    parts = (Part(0, 0, 6), Part(1, 10, 20), Part(2, 20, 21), Part(3, 6, 10))
    state = ResumeState(size=21, etag='"e"', sha256=None, parts=parts, done=(6, 3, 0, 2))
    path = tmp_path / "f.wpdl"
    save_state(path, state)
    assert load_state(path) == state
    assert state.matches(size=21, etag='"e"', sha256=None)
    assert not state.matches(size=21, etag='"other"', sha256=None)
    unnamed = ResumeState(21, None, None, plan_parts(21, 10), (0, 0, 0))
    assert not unnamed.matches(size=21, etag=None, sha256=None)
    saved = json.loads(path.read_text())
    for broken in (
        "{",
        '{"version":1}',
        json.dumps({**saved, "done": [7, 3, 0, 2]}),  # more than part 0 holds
        json.dumps({**saved, "parts": [[0, 6], [10, 20], [20, 21], [5, 10]]}),  # overlap
        json.dumps({**saved, "parts": [[0, 6], [10, 20], [20, 21], [7, 10]]}),  # a hole
        json.dumps({**saved, "parts": [[0, 6], [10, 20], [20, 22], [6, 10]]}),  # past the end
        json.dumps({**saved, "version": 3}),
    ):
        path.write_text(broken)
        assert load_state(path) is None, broken
    assert load_state(tmp_path / "missing.wpdl") is None


def test_version_1_state_still_resumes(tmp_path: Path) -> None:
    path = tmp_path / "f.wpdl"
    old = {"version": 1, "size": 21, "etag": '"e"', "sha256": None, "part_size": 10}
    path.write_text(json.dumps({**old, "done": [10, 3, 0]}))
    state = load_state(path)
    assert state is not None
    assert state.parts == plan_parts(21, 10) and state.done == (10, 3, 0)
    path.write_text(json.dumps({**old, "done": [10, 3]}))  # one part short
    assert load_state(path) is None


def test_tuning_picks_connections_from_rtt_and_parts_from_size() -> None:
    auto = DownloadOptions()
    near, far = auto.tune(0.0004, 4 << 30), auto.tune(0.080, 4 << 30)
    assert near.connections == NEAR_CONNECTIONS < far.connections == FAR_CONNECTIONS
    assert auto.tune(FAR_RTT, 1 << 30).connections == FAR_CONNECTIONS
    # About two parts per connection, in whole MiB, within the bounds.
    assert far.part_size == MAX_AUTO_PART  # 4 GiB / 64 would be 64 MiB
    assert auto.tune(0.080, 1 << 30).part_size == 16 << 20
    assert auto.tune(0.080, 10 << 20).part_size == MIN_AUTO_PART
    assert auto.tune(0.0, 100 << 30).part_size == MAX_AUTO_PART
    fixed = DownloadOptions(connections=3, part_size=5 << 20)
    assert fixed.tune(0.080, 1 << 30) == Tuning(3, 5 << 20, 0.080)
    assert fixed.most_connections == 3 and auto.most_connections == FAR_CONNECTIONS
    with pytest.raises(ConfigurationError):
        DownloadOptions(connections=0).validate()


def test_argument_parsing() -> None:
    assert parse_size("64M") == parse_size("64MiB") == 64 << 20
    assert parse_size("1g") == 1 << 30 and parse_size("4096") == 4096
    with pytest.raises(click.BadParameter):
        parse_size("lots")
    assert parse_model_name("acct/m", None) == ("acct", "m")
    assert parse_model_name("accounts/acct/models/m", None) == ("acct", "m")
    assert parse_model_name("m", "acct") == ("acct", "m")
    for bad, account in (("m", None), ("a/b/c", None), ("other/m", "acct"), ("../m", None)):
        with pytest.raises(ConfigurationError):
            parse_model_name(bad, account)
    assert FineTuneRef.parse("ft-1:20") == FineTuneRef("ft-1", 20)
    assert FineTuneRef.parse("ft-1") == FineTuneRef("ft-1", None)
    with pytest.raises(ConfigurationError):
        FineTuneRef.parse("ft-1:last")


def test_the_summary_shows_a_slow_rate_with_a_decimal() -> None:
    from weightport.cli.download import _summary

    tuning = client.Tuning(connections=1, part_size=8 << 20, rtt=0.0)
    slow = _summary(client.DownloadResult((), 200_000, 1.2, tuning), Path("out"))
    assert slow.endswith("in 1.2 s at 0.2 MB/s")  # a small merged archive, computed first
    fast = _summary(client.DownloadResult((), 250_000_000, 2.0, tuning), Path("out"))
    assert fast.endswith("in 2.0 s at 125 MB/s")
