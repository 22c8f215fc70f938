"""HMAC signed URLs: round trips, every tamper, expiry, rotation, key files."""

from __future__ import annotations

import hmac
import stat
import threading
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from weightport.errors import InvalidArgument, SignatureExpired, SignatureInvalid
from weightport.signing import (
    MAX_EXPIRES,
    SigningKey,
    UrlSigner,
    load_or_create_keyfile,
    parse_signing_keys,
)

NOW = 1_700_000_000  # 2023-11-14T22:13:20Z
PATH = "/blob/acct1/my-model/sub%2Fdir/model.safetensors"
OLD = SigningKey("old", b"o" * 32)
NEW = SigningKey("new", b"n" * 32)


def signed(
    signer: UrlSigner, method: str = "GET", path: str = PATH, **bound: str
) -> dict[str, str]:
    return signer.sign(method, path, expires_at=NOW + 600, now=NOW, bound=bound)


def test_round_trip_returns_bound_parameters() -> None:
    signer = UrlSigner([NEW])
    query = signed(signer, "PUT", Size="24")
    assert signer.verify("PUT", PATH, query, now=NOW + 1) == {"Size": "24"}


def test_query_looks_like_gcs_v4() -> None:
    query = signed(UrlSigner([NEW]), Size="24")
    assert query == {
        "X-Goog-Algorithm": "WP1-HMAC-SHA256",
        "X-Goog-Credential": "new",
        "X-Goog-Date": "20231114T221320Z",
        "X-Goog-Expires": "600",
        "X-Goog-SignedHeaders": "host",
        "X-Wp-Size": "24",
        "X-Goog-Signature": query["X-Goog-Signature"],
    }
    assert len(query["X-Goog-Signature"]) == 64


def test_canonical_string_is_length_prefixed() -> None:
    # Spelled out independently: replicas and future versions must agree on these bytes.
    query = signed(UrlSigner([NEW]), Size="24")
    message = b"".join(
        b"%d:%s" % (len(part), part)
        for part in [
            b"WP1-HMAC-SHA256",
            b"GET",
            PATH.encode(),
            b"20231114T221320Z",
            b"600",
            b"new",
            b"host",
            b"Size",
            b"24",
        ]
    )
    assert query["X-Goog-Signature"] == hmac.new(NEW.secret, message, "sha256").hexdigest()
    assert query == signed(UrlSigner([NEW]), Size="24")


def test_verify_through_a_real_query_string() -> None:
    signer = UrlSigner([NEW])
    query = signed(signer, Note="a b&c=d/é")
    parsed = parse_qsl(urlencode(query), keep_blank_values=True, strict_parsing=True)
    assert signer.verify("GET", PATH, parsed, now=NOW) == {"Note": "a b&c=d/é"}


def test_unrelated_query_parameters_are_ignored() -> None:
    signer = UrlSigner([NEW])
    query = {**signed(signer), "download": "1"}
    assert signer.verify("GET", PATH, query, now=NOW) == {}


def test_head_rides_on_get_but_nothing_else_crosses() -> None:
    signer = UrlSigner([NEW])
    get = signed(signer, "GET")
    assert signer.verify("HEAD", PATH, get, now=NOW) == {}
    assert signer.verify("get", PATH, get, now=NOW) == {}
    for method in ("PUT", "POST", "DELETE"):
        with pytest.raises(SignatureInvalid, match="does not match"):
            signer.verify(method, PATH, get, now=NOW)
    put = signed(signer, "PUT")
    for method in ("GET", "HEAD"):
        with pytest.raises(SignatureInvalid, match="does not match"):
            signer.verify(method, PATH, put, now=NOW)
    head = signed(signer, "HEAD")
    assert signer.verify("HEAD", PATH, head, now=NOW) == {}
    with pytest.raises(SignatureInvalid):
        signer.verify("GET", PATH, head, now=NOW)


def test_expiry_boundary() -> None:
    signer = UrlSigner([NEW])
    query = signed(signer)
    assert signer.verify("GET", PATH, query, now=NOW + 600) == {}
    with pytest.raises(SignatureExpired, match="expired at 20231114T222320Z"):
        signer.verify("GET", PATH, query, now=NOW + 601)


def test_tampered_and_expired_reports_mismatch_not_expiry() -> None:
    signer = UrlSigner([NEW])
    query = {**signed(signer), "X-Goog-Expires": "86400"}
    with pytest.raises(SignatureInvalid, match="does not match") as excinfo:
        signer.verify("GET", PATH, query, now=NOW + 601)
    assert not isinstance(excinfo.value, SignatureExpired)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Goog-Expires", "601"),
        ("X-Goog-Date", "20231114T221321Z"),
        ("X-Goog-SignedHeaders", "content-type;host"),
        ("X-Wp-Size", "25"),
        ("X-Goog-Signature", "0" * 64),
    ],
)
def test_tampered_values_do_not_match(name: str, value: str) -> None:
    signer = UrlSigner([NEW])
    query = {**signed(signer, Size="24"), name: value}
    with pytest.raises(SignatureInvalid, match="does not match"):
        signer.verify("GET", PATH, query, now=NOW)


def test_tampered_path_does_not_match() -> None:
    signer = UrlSigner([NEW])
    query = signed(signer)
    for path in (PATH + "x", PATH.replace("%2F", "/"), PATH.upper(), "/blob/acct2" + PATH[11:]):
        with pytest.raises(SignatureInvalid, match="does not match"):
            signer.verify("GET", path, query, now=NOW)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"X-Goog-Credential": "other"}, "unknown signing key"),
        ({"X-Goog-Algorithm": "GOOG4-HMAC-SHA256"}, "unsupported X-Goog-Algorithm"),
        ({"X-Goog-Date": "20231314T221320Z"}, "malformed X-Goog-Date"),
        ({"X-Goog-Date": "20230230T221320Z"}, "malformed X-Goog-Date"),
        ({"X-Goog-Date": "2023-11-14T22:13:20Z"}, "malformed X-Goog-Date"),
        ({"X-Goog-Expires": "-5"}, "malformed X-Goog-Expires"),
        ({"X-Goog-Expires": "0600"}, "malformed X-Goog-Expires"),
        ({"X-Goog-Expires": str(MAX_EXPIRES + 1)}, "malformed X-Goog-Expires"),
        ({"X-Goog-Signature": "A" * 64}, "malformed X-Goog-Signature"),
        ({"X-Goog-Signature": "é" * 64}, "malformed X-Goog-Signature"),
        ({"X-Goog-SignedHeaders": "Host"}, "malformed X-Goog-SignedHeaders"),
        ({"X-Goog-Foo": "1"}, "unexpected or repeated 'X-Goog-Foo'"),
        ({"x-goog-expires": "86400"}, "unexpected or repeated 'x-goog-expires'"),
        ({"X-Wp-Extra": "1"}, "does not match"),
        ({"X-Wp-": "1"}, "malformed 'X-Wp-'"),
    ],
)
def test_malformed_or_foreign_parameters(change: dict[str, str], message: str) -> None:
    signer = UrlSigner([NEW])
    with pytest.raises(SignatureInvalid, match=message):
        signer.verify("GET", PATH, {**signed(signer), **change}, now=NOW)


@pytest.mark.parametrize(
    "name",
    [
        "X-Goog-Algorithm",
        "X-Goog-Credential",
        "X-Goog-Date",
        "X-Goog-Expires",
        "X-Goog-SignedHeaders",
        "X-Goog-Signature",
    ],
)
def test_missing_parameter(name: str) -> None:
    signer = UrlSigner([NEW])
    query = signed(signer)
    del query[name]
    with pytest.raises(SignatureInvalid, match=f"missing {name}"):
        signer.verify("GET", PATH, query, now=NOW)


def test_dropped_bound_parameter_does_not_match() -> None:
    signer = UrlSigner([NEW])
    query = signed(signer, Size="24")
    del query["X-Wp-Size"]
    with pytest.raises(SignatureInvalid, match="does not match"):
        signer.verify("PUT", PATH, query, now=NOW)


@pytest.mark.parametrize("name", ["X-Goog-Expires", "X-Goog-Signature", "X-Wp-Size"])
def test_duplicate_parameter(name: str) -> None:
    signer = UrlSigner([NEW])
    query = signed(signer, Size="24")
    pairs = [*query.items(), (name, query[name])]
    with pytest.raises(SignatureInvalid, match="repeated"):
        signer.verify("GET", PATH, pairs, now=NOW)
    # Same through a multidict, as aiohttp hands it over.
    with pytest.raises(SignatureInvalid, match="repeated"):
        signer.verify("GET", PATH, MultiDict(pairs), now=NOW)


def test_error_never_leaks_the_expected_signature() -> None:
    signer = UrlSigner([NEW])
    good = signed(signer)
    tampered = {**good, "X-Goog-Expires": "601"}
    with pytest.raises(SignatureInvalid) as excinfo:
        signer.verify("GET", PATH, tampered, now=NOW)
    expected = signer.sign("GET", PATH, expires_at=NOW + 601, now=NOW)["X-Goog-Signature"]
    assert expected not in str(excinfo.value)
    assert expected not in repr(excinfo.value.args)


def test_key_rotation() -> None:
    before = UrlSigner([OLD])
    url = signed(before)
    during = UrlSigner([NEW, OLD])
    assert during.verify("GET", PATH, url, now=NOW) == {}
    new_url = signed(during)
    assert new_url["X-Goog-Credential"] == "new"
    assert during.verify("GET", PATH, new_url, now=NOW) == {}
    after = UrlSigner([NEW])
    with pytest.raises(SignatureInvalid, match="unknown signing key"):
        after.verify("GET", PATH, url, now=NOW)
    assert after.verify("GET", PATH, new_url, now=NOW) == {}


def test_same_kid_other_secret_does_not_match() -> None:
    query = signed(UrlSigner([NEW]))
    impostor = UrlSigner([SigningKey("new", b"x" * 32)])
    with pytest.raises(SignatureInvalid, match="does not match"):
        impostor.verify("GET", PATH, query, now=NOW)


def test_bound_values_cannot_be_shifted_between_fields() -> None:
    # Length prefixes: moving bytes between adjacent fields changes the signed message.
    signer = UrlSigner([NEW])
    a = signer.sign("GET", PATH, expires_at=NOW + 60, now=NOW, bound={"A": "xy", "B": "z"})
    b = signer.sign("GET", PATH, expires_at=NOW + 60, now=NOW, bound={"A": "x", "B": "yz"})
    assert a["X-Goog-Signature"] != b["X-Goog-Signature"]


def test_signed_headers_are_advertised_and_signed() -> None:
    signer = UrlSigner([NEW])
    headers = ["x-goog-content-length-range", "Host", "content-type"]
    query = signer.sign("PUT", PATH, expires_at=NOW + 60, now=NOW, signed_headers=headers)
    assert query["X-Goog-SignedHeaders"] == "content-type;host;x-goog-content-length-range"
    assert signer.verify("PUT", PATH, query, now=NOW) == {}
    with pytest.raises(SignatureInvalid, match="does not match"):
        signer.verify("PUT", PATH, {**query, "X-Goog-SignedHeaders": "host"}, now=NOW)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"expires_at": NOW}, "between 1 s and"),
        ({"expires_at": NOW + MAX_EXPIRES + 1}, "between 1 s and"),
        ({"bound": {"Bad_Name": "1"}}, "bound parameter name"),
        ({"bound": {"size": "1", "Size": "2"}}, "differ only in case"),
        ({"signed_headers": ["host:x"]}, "bad signed header list"),
    ],
)
def test_sign_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"expires_at": NOW + 60, "now": NOW, **kwargs}
    with pytest.raises(InvalidArgument, match=message):
        UrlSigner([NEW]).sign("GET", PATH, **args)  # type: ignore[arg-type]


def test_sign_rejects_a_non_method() -> None:
    with pytest.raises(InvalidArgument, match="not an HTTP method"):
        UrlSigner([NEW]).sign("GET /x", PATH, expires_at=NOW + 60, now=NOW)


def test_max_lifetime_is_accepted() -> None:
    signer = UrlSigner([NEW])
    query = signer.sign("GET", PATH, expires_at=NOW + MAX_EXPIRES, now=NOW)
    assert signer.verify("GET", PATH, query, now=NOW + MAX_EXPIRES) == {}


# --- fuzz ------------------------------------------------------------------------------

_SIGNER = UrlSigner([NEW, OLD])
_QUERY = _SIGNER.sign("PUT", PATH, expires_at=NOW + 3600, now=NOW, bound={"Size": "1024"})
_ALPHABET = st.characters(codec="utf-8", exclude_characters="\x00")


def _mutate(text: str, index: int, char: str) -> str:
    return text[:index] + char + text[index + 1 :]


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(sorted(_QUERY)), where=st.integers(0, 63), char=_ALPHABET)
def test_fuzz_any_single_character_change_of_a_value_is_rejected(
    name: str, where: int, char: str
) -> None:
    value = _QUERY[name]
    index = where % len(value)
    mutated = _mutate(value, index, char)
    if mutated == value:
        return
    with pytest.raises(SignatureInvalid):
        _SIGNER.verify("PUT", PATH, {**_QUERY, name: mutated}, now=NOW)


@settings(max_examples=200, deadline=None)
@given(where=st.integers(0, len(PATH) - 1), char=_ALPHABET)
def test_fuzz_any_single_character_change_of_the_path_is_rejected(where: int, char: str) -> None:
    mutated = _mutate(PATH, where, char)
    if mutated == PATH:
        return
    with pytest.raises(SignatureInvalid, match="does not match"):
        _SIGNER.verify("PUT", mutated, _QUERY, now=NOW)


# --- templates: many URLs at once ---------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    path=st.text(_ALPHABET, min_size=1, max_size=40),
    values=st.lists(st.text(_ALPHABET, max_size=20), min_size=2, max_size=2),
)
def test_a_template_signs_exactly_as_sign_does(path: str, values: list[str]) -> None:
    signer = UrlSigner([NEW])
    template = signer.template("GET", expires_at=NOW + 60, now=NOW, names=("a", "b"))
    expected = signer.sign(
        "GET", path, expires_at=NOW + 60, now=NOW, bound={"b": values[1], "a": values[0]}
    )
    assert template.params(path, values) == expected
    # The fast query string is urlencode's, byte for byte, escaping or not.
    assert template.query_string(path, values) == urlencode(expected)
    query = parse_qsl(template.query_string(path, values), keep_blank_values=True)
    assert signer.verify("GET", path, query, now=NOW) == {"a": values[0], "b": values[1]}


@settings(max_examples=200, deadline=None)
@given(
    paths=st.lists(st.text(_ALPHABET, min_size=1, max_size=40), min_size=1, max_size=4),
    shared=st.text(_ALPHABET, max_size=20),
    data=st.data(),
)
def test_a_batch_signs_each_url_as_sign_does(
    paths: list[str], shared: str, data: st.DataObject
) -> None:
    signer = UrlSigner([NEW])
    names = ("a", "b", "c")
    template = signer.template("GET", expires_at=NOW + 60, now=NOW, names=names)
    # Any split of the bound names into shared values and per-URL ones (none, one, several).
    per_url = data.draw(st.sets(st.sampled_from(names)))
    size = len(paths)
    columns = st.lists(st.text(_ALPHABET, max_size=20), min_size=size, max_size=size)
    each = {name: data.draw(columns) for name in sorted(per_url)}
    common = {name: shared + name for name in names if name not in per_url}
    queries = template.query_strings(paths, shared=common, each=each)
    assert len(queries) == len(paths)
    for i, (path, query) in enumerate(zip(paths, queries, strict=True)):
        bound = {**common, **{name: column[i] for name, column in each.items()}}
        expected = signer.sign("GET", path, expires_at=NOW + 60, now=NOW, bound=bound)
        assert query == urlencode(expected)


def test_a_batch_needs_every_bound_value_once() -> None:
    template = UrlSigner([NEW]).template("GET", expires_at=NOW + 60, now=NOW, names=("a", "b"))
    with pytest.raises(ValueError, match="exactly"):
        template.query_strings(["/p"], each={"a": ["1"]})
    with pytest.raises(ValueError, match="exactly"):
        template.query_strings(["/p"], shared={"a": "1", "b": "2"}, each={"b": ["3"]})
    with pytest.raises(ValueError, match="1 values of 'a'"):
        template.query_strings(["/p"], shared={"b": "2"}, each={"a": ["1", "2"]})


def test_templates_are_checked_like_sign() -> None:
    signer = UrlSigner([NEW])
    with pytest.raises(InvalidArgument, match="sorted"):
        signer.template("GET", expires_at=NOW + 60, now=NOW, names=("b", "a"))
    with pytest.raises(InvalidArgument, match="between 1 s"):
        signer.template("GET", expires_at=NOW, now=NOW)
    first = signer.template("GET", expires_at=NOW + 60, now=NOW, names=("a",))
    assert signer.template("GET", expires_at=NOW + 60, now=NOW, names=("a",)) is first


# --- keys ------------------------------------------------------------------------------


def test_parse_signing_keys() -> None:
    spec = " k1:" + "a" * 16 + " , k2:" + "b:c" * 6
    assert parse_signing_keys(spec) == [
        SigningKey("k1", b"a" * 16),
        SigningKey("k2", b"b:c" * 6),
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected 'kid:secret'"),
        ("k1", "expected 'kid:secret'"),
        ("k1:" + "a" * 16 + ",", "expected 'kid:secret'"),
        ("k1:short", "at least 16 bytes"),
        ("bad kid:" + "a" * 16, "signing key id"),
        ("k1:" + "a" * 16 + ",k1:" + "b" * 16, "listed twice"),
    ],
)
def test_parse_signing_keys_rejects(spec: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_signing_keys(spec)


def test_signer_needs_distinct_keys() -> None:
    with pytest.raises(InvalidArgument):
        UrlSigner([])
    with pytest.raises(InvalidArgument, match="listed twice"):
        UrlSigner([NEW, SigningKey("new", b"z" * 16)])


def test_secret_stays_out_of_repr() -> None:
    assert "nnnn" not in repr(NEW)


def test_keyfile_is_created_once_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "data" / "signing-keys"
    keys = load_or_create_keyfile(path)
    assert len(keys) == 1
    assert len(keys[0].secret) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_keyfile(path) == keys
    assert [p.name for p in path.parent.iterdir()] == ["signing-keys"]


def test_keyfile_race_yields_one_key(tmp_path: Path) -> None:
    path = tmp_path / "signing-keys"
    results: list[list[SigningKey]] = []
    barrier = threading.Barrier(6)

    def load() -> None:
        barrier.wait()
        results.append(load_or_create_keyfile(path))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    assert all(r == results[0] for r in results)


def test_keyfile_that_is_damaged_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "signing-keys"
    path.write_text("garbage")
    with pytest.raises(InvalidArgument, match="signing-keys"):
        load_or_create_keyfile(path)


def test_keyfile_keys_sign_and_verify(tmp_path: Path) -> None:
    signer = UrlSigner(load_or_create_keyfile(tmp_path / "k"))
    query = signer.sign("GET", PATH, expires_at=NOW + 60, now=NOW)
    assert signer.verify("GET", PATH, query, now=NOW) == {}
