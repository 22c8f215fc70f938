"""Fuzzing the parsers that read what strangers send, with hypothesis: no crash (only the
documented error), no forgery (any change to a signed URL is refused), no path escape.

Each property runs ``FUZZ_EXAMPLES`` cases (``WEIGHTPORT_FUZZ_EXAMPLES``, default 300);
docs/reliability.md has the longer run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightport.client.errors import UnsafeArchive
from weightport.client.extract import extract_tar_zst
from weightport.errors import InvalidArgument, RangeNotSatisfiable, SignatureInvalid
from weightport.merge.adapter import AdapterConfig
from weightport.merge.safetensors_format import parse_header
from weightport.paths import validate_relative_path
from weightport.ranges import parse_range
from weightport.server.requests import parse_json
from weightport.signing import SigningKey, UrlSigner

FUZZ_EXAMPLES = int(os.environ.get("WEIGHTPORT_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- Range ------------------------------------------------------------------------------

RANGE_PIECES = st.sampled_from(["bytes=", "bytes", "=", "-", ",", " ", "0", "1", "9", "99"])
RANGE_HEADERS = st.one_of(
    st.text(max_size=60),
    st.lists(RANGE_PIECES, max_size=20).map("".join),
    st.lists(
        st.tuples(st.integers(-5, 2**70), st.integers(-5, 2**70)), min_size=1, max_size=70
    ).map(lambda pairs: "bytes=" + ",".join(f"{a}-{b}" for a, b in pairs)),
)


@FUZZ
@given(header=RANGE_HEADERS, size=st.integers(0, 2**40))
def test_range_parser_never_crashes_and_stays_inside(header: str, size: int) -> None:
    try:
        ranges = parse_range(header, size, max_ranges=64)
    except RangeNotSatisfiable as exc:
        assert exc.size == size
        return
    if ranges is None:
        return
    assert 1 <= len(ranges) <= 64
    previous_end = -1
    for part in ranges:
        assert 0 <= part.start < part.end <= size
        assert part.start > previous_end  # sorted, disjoint, not adjacent
        previous_end = part.end


# -- Signed URLs ------------------------------------------------------------------------

SIGNER = UrlSigner([SigningKey("k1", b"s" * 32), SigningKey("k0", b"o" * 32)])
OTHER = UrlSigner([SigningKey("k1", b"x" * 32)])  # same key id, another secret
NOW = 1_800_000_000
PATH = "/files/acct/model/dir/w.bin"
BOUND = {"sha256": "a" * 64, "key": "key-1"}


def signed() -> list[tuple[str, str]]:
    return list(SIGNER.sign("GET", PATH, expires_at=NOW + 600, now=NOW, bound=BOUND).items())


def _mutations() -> st.SearchStrategy[tuple[str, str, list[tuple[str, str]]]]:
    """(method, path, query) that differ from the signed request in at least one way."""
    base = signed()
    names = [n for n, _ in base]
    change_value = st.tuples(st.sampled_from(range(len(base))), st.text(min_size=0, max_size=70))
    return st.one_of(
        # a value replaced by anything else
        change_value.filter(lambda c: base[c[0]][1] != c[1]).map(
            lambda c: (
                "GET",
                PATH,
                [(n, c[1] if i == c[0] else v) for i, (n, v) in enumerate(base)],
            )
        ),
        # a parameter dropped
        st.sampled_from(range(len(base))).map(
            lambda i: ("GET", PATH, [p for j, p in enumerate(base) if j != i])
        ),
        # a parameter repeated with another value, or renamed by case
        st.tuples(st.sampled_from(names), st.text(max_size=10)).map(
            lambda c: ("GET", PATH, [*base, (c[0], c[1])])
        ),
        st.sampled_from(range(len(base))).map(
            lambda i: (
                "GET",
                PATH,
                [(n.swapcase() if j == i else n, v) for j, (n, v) in enumerate(base)],
            )
        ),
        # a bound parameter added
        st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}", fullmatch=True), st.text()).map(
            lambda c: ("GET", PATH, [*base, (f"X-Wp-{c[0]}", c[1])])
        ),
        # another method or path
        st.sampled_from(["PUT", "POST", "DELETE", "PATCH", "OPTIONS"]).map(
            lambda m: (m, PATH, base)
        ),
        st.text(min_size=1, max_size=40)
        .filter(lambda p: p != PATH)
        .map(lambda p: ("GET", p, base)),
    )


@FUZZ
@given(request=_mutations())
def test_no_mutation_of_a_signed_url_verifies(
    request: tuple[str, str, list[tuple[str, str]]],
) -> None:
    method, path, query = request
    with pytest.raises(SignatureInvalid):
        SIGNER.verify(method, path, query, now=NOW + 1)


@FUZZ
@given(query=st.dictionaries(st.sampled_from([n for n, _ in signed()]), st.text(max_size=80)))
def test_made_up_signatures_never_verify(query: dict[str, str]) -> None:
    with pytest.raises(SignatureInvalid):
        SIGNER.verify("GET", PATH, query, now=NOW + 1)


def test_the_unmutated_url_verifies_and_another_secret_does_not() -> None:
    assert SIGNER.verify("GET", PATH, signed(), now=NOW + 1) == BOUND
    assert SIGNER.verify("HEAD", PATH, signed(), now=NOW + 1) == BOUND
    with pytest.raises(SignatureInvalid):
        OTHER.verify("GET", PATH, signed(), now=NOW + 1)


# -- Upload file names --------------------------------------------------------------------

NAME_PIECES = st.sampled_from(["a", "b.bin", "..", ".", "/", "\\", "\x00", "\n", "é", "%2e", " "])
NAMES = st.one_of(st.text(max_size=50), st.lists(NAME_PIECES, max_size=12).map("".join))


@FUZZ
@given(name=NAMES)
def test_a_file_name_is_refused_or_stays_inside_its_model(name: str) -> None:
    try:
        accepted = validate_relative_path(name)
    except InvalidArgument:
        return
    assert accepted == name  # never "cleaned" into another name
    root = "/store/model"
    joined = posixpath.normpath(posixpath.join(root, accepted))
    assert joined.startswith(root + "/")
    assert ".." not in accepted.split("/")
    assert not any(ord(c) < 0x20 for c in accepted)


# -- Headers of uploaded weights and adapter configs ----------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
TENSOR_ENTRIES = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "BF16", "F16", "I64", "U8", "X9", ""]) | JSON_VALUES,
        "shape": st.lists(st.integers(-2, 2**40), max_size=4) | JSON_VALUES,
        "data_offsets": st.lists(st.integers(-2, 2**40), max_size=3) | JSON_VALUES,
    },
)


@FUZZ
@given(
    header=st.dictionaries(st.text(max_size=10), TENSOR_ENTRIES | JSON_VALUES, max_size=5),
    junk=st.binary(max_size=16),
    size_delta=st.integers(-8, 1 << 20),
)
def test_safetensors_headers_parse_or_are_refused(
    header: dict[str, object], junk: bytes, size_delta: int
) -> None:
    raw = json.dumps(header).encode() + junk
    prefix = len(raw).to_bytes(8, "little") + raw
    try:
        parsed = parse_header(prefix, len(prefix) + size_delta)
    except InvalidArgument:
        return
    for info in parsed.tensors:
        assert 0 <= info.begin <= info.end <= len(prefix) + size_delta


@FUZZ
@given(data=st.binary(max_size=64) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_adapter_configs_parse_or_are_refused(data: bytes) -> None:
    try:
        config = AdapterConfig.from_json(data)
    except InvalidArgument:
        return
    assert config.r > 0


@FUZZ
@given(data=st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_json_bodies_parse_or_are_a_400(data: bytes) -> None:
    with contextlib.suppress(InvalidArgument):
        parse_json(data)


def test_json_bodies_deeper_than_the_limit_are_a_400() -> None:
    with pytest.raises(InvalidArgument, match="nested too deeply"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)


# -- The downloader's tar extraction ----------------------------------------------------------

MEMBER_NAMES = st.lists(
    st.sampled_from(["top", "..", ".", "a", "b.bin", "/etc", "", "c/../..", "/"]),
    min_size=1,
    max_size=5,
).map("/".join)
MEMBER_TYPES = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE])


def _archive(members: list[tuple[str, bytes, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = "../../outside"
                tar.addfile(info)
    return zstandard.ZstdCompressor().compress(raw.getvalue())


@settings(FUZZ, max_examples=max(20, FUZZ_EXAMPLES // 5))
@given(
    members=st.lists(st.tuples(MEMBER_NAMES, MEMBER_TYPES, st.binary(max_size=64)), max_size=6),
    strip=st.integers(0, 2),
    corrupt=st.integers(0, 400),
)
def test_tar_extraction_never_escapes_and_never_crashes(
    tmp_path_factory: pytest.TempPathFactory,
    members: list[tuple[str, bytes, bytes]],
    strip: int,
    corrupt: int,
) -> None:
    work = tmp_path_factory.mktemp("x")
    archive = work / "a.tar.zst"
    blob = bytearray(_archive(members))
    if corrupt < len(blob) and corrupt % 3 == 0:
        blob[corrupt] ^= 0xFF  # sometimes a damaged stream too
    archive.write_bytes(bytes(blob))
    dest = work / "out"
    # Refusing the archive is fine; any other exception type fails the property.
    with contextlib.suppress(UnsafeArchive, tarfile.TarError, zstandard.ZstdError, EOFError):
        extract_tar_zst(archive, dest, strip_components=strip)
    written = [p for p in work.rglob("*") if p != archive]
    for path in written:
        assert path.resolve().is_relative_to(dest.resolve()), path
        assert not path.is_symlink(), path


def test_the_extraction_fuzz_can_fail(tmp_path: Path) -> None:
    # The property above is only worth something if escaping names reach the extractor.
    archive = tmp_path / "bad.tar.zst"
    archive.write_bytes(_archive([("../escape", tarfile.REGTYPE, b"x")]))
    with pytest.raises(UnsafeArchive):
        extract_tar_zst(archive, tmp_path / "out")
    assert not (tmp_path / "escape").exists()
