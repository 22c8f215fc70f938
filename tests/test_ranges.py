"""weightport.ranges: Range parsing and conditional requests, one test per RFC 9110 case.

The bugs Starlette shipped and later fixed are part of the list (STYLE.md): ``bytes=-N`` with
N > size starts at 0, a cap on the number of ranges, ETag ``W/`` handled as a prefix.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightport.errors import RangeNotSatisfiable
from weightport.ranges import (
    ByteRange,
    Conditional,
    EntityTag,
    evaluate_conditions,
    format_etag,
    parse_etag_list,
    parse_range,
    unsatisfied_content_range,
)


def spans(header: str | None, size: int = 100, max_ranges: int = 8) -> list[tuple[int, int]] | None:
    ranges = parse_range(header, size, max_ranges=max_ranges)
    return None if ranges is None else [(r.start, r.end) for r in ranges]


# ------------------------------------------------------------------------------ ByteRange


def test_byte_range_is_half_open_and_inclusive_at_the_edge() -> None:
    r = ByteRange(10, 20)
    assert r.length == 10
    assert r.content_range(100) == "bytes 10-19/100"
    assert ByteRange(0, 1).content_range(1) == "bytes 0-0/1"


@pytest.mark.parametrize(("start", "end"), [(5, 5), (6, 5), (-1, 3)])
def test_byte_range_rejects_empty_or_negative(start: int, end: int) -> None:
    with pytest.raises(ValueError, match="byte range"):
        ByteRange(start, end)


def test_byte_range_outside_the_entity_has_no_content_range() -> None:
    with pytest.raises(ValueError, match="outside"):
        ByteRange(0, 11).content_range(10)


def test_unsatisfied_content_range() -> None:
    assert unsatisfied_content_range(1234) == "bytes */1234"


# ------------------------------------------------------------------------- parse_range


def test_no_header_means_whole_entity() -> None:
    assert spans(None) is None


@pytest.mark.parametrize("header", ["items=0-1", "none", "bytes0-1", "=0-1", "bits=0-1"])
def test_other_units_and_missing_unit_are_ignored(header: str) -> None:
    assert spans(header) is None


def test_unit_is_case_insensitive() -> None:
    assert spans("Bytes=0-1") == [(0, 2)]
    assert spans("BYTES=0-1") == [(0, 2)]


def test_int_range() -> None:
    assert spans("bytes=0-0") == [(0, 1)]
    assert spans("bytes=10-19") == [(10, 20)]


def test_open_ended_range() -> None:
    assert spans("bytes=95-") == [(95, 100)]
    assert spans("bytes=0-") == [(0, 100)]


def test_last_pos_at_or_past_the_end_is_clamped() -> None:
    assert spans("bytes=90-99") == [(90, 100)]
    assert spans("bytes=90-100") == [(90, 100)]
    assert spans("bytes=90-100000") == [(90, 100)]


def test_suffix_range() -> None:
    assert spans("bytes=-1") == [(99, 100)]
    assert spans("bytes=-10") == [(90, 100)]


def test_suffix_longer_than_entity_starts_at_zero() -> None:
    # Starlette once computed a negative start here.
    assert spans("bytes=-100") == [(0, 100)]
    assert spans("bytes=-1000") == [(0, 100)]


def test_suffix_zero_is_unsatisfiable() -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        spans("bytes=-0")
    assert info.value.size == 100
    assert info.value.status == 416


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=1000-1000"])
def test_first_pos_at_or_past_the_end_is_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        spans(header)


@pytest.mark.parametrize("header", ["bytes=0-", "bytes=0-0", "bytes=-5", "bytes=0-1,-3"])
def test_empty_entity_satisfies_no_range(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, 0, max_ranges=8)
    assert info.value.size == 0


def test_unsatisfiable_specs_are_dropped_when_another_is_satisfiable() -> None:
    assert spans("bytes=200-300,0-1,-0") == [(0, 2)]


@pytest.mark.parametrize(
    "header",
    [
        "bytes=",
        "bytes=-",
        "bytes=,",
        "bytes=abc",
        "bytes=5",
        "bytes=5-1",  # last-pos < first-pos makes the range invalid (§14.1.1)
        "bytes=0-1,5-1",  # one invalid spec invalidates the whole header
        "bytes=1-2-3",
        "bytes=--5",
        "bytes=+1-2",
        "bytes=1_0-20",  # int() would accept this
        "bytes=\u0661-\u0662",  # Arabic-Indic digits: int() would accept these too
        "bytes=0x1-2",
        "bytes=1.5-2",
        "bytes 0-1",
    ],
)
def test_syntactically_invalid_header_is_ignored(header: str) -> None:
    assert spans(header) is None


def test_whitespace_around_specs_and_empty_elements_are_accepted() -> None:
    assert spans("bytes= 0-1 ,\t4-5 ") == [(0, 2), (4, 6)]
    assert spans(" bytes =0-1") == [(0, 2)]
    assert spans("bytes=0-1,,4-5,") == [(0, 2), (4, 6)]
    assert spans("bytes=0 - 1") == [(0, 2)]


def test_several_ranges_come_back_sorted() -> None:
    assert spans("bytes=50-59,0-9,-10") == [(0, 10), (50, 60), (90, 100)]


def test_overlapping_and_adjacent_ranges_are_coalesced() -> None:
    assert spans("bytes=0-5,3-9") == [(0, 10)]
    assert spans("bytes=0-4,5-9") == [(0, 10)]
    assert spans("bytes=0-9,20-29,5-24") == [(0, 30)]
    assert spans("bytes=0-0,0-0,0-0") == [(0, 1)]
    assert spans("bytes=-10,95-") == [(90, 100)]
    assert spans("bytes=0-4,6-9") == [(0, 5), (6, 10)]  # a gap keeps them apart


def test_too_many_ranges_are_ignored_not_rejected() -> None:
    eight = "bytes=" + ",".join(f"{10 * i}-{10 * i}" for i in range(8))
    assert spans(eight, max_ranges=8) is not None
    nine = eight + ",95-95"
    assert spans(nine, max_ranges=8) is None
    # The cap counts what the client sent, before coalescing.
    assert spans("bytes=" + ",".join(["0-0"] * 9), max_ranges=8) is None


def test_max_ranges_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_ranges"):
        parse_range("bytes=0-1", 10, max_ranges=0)


def test_huge_numbers_neither_crash_nor_overflow() -> None:
    # int() refuses strings over 4300 digits: a client must not be able to trigger that.
    many = "9" * 5000
    with pytest.raises(RangeNotSatisfiable):
        spans(f"bytes={many}-")
    assert spans(f"bytes=0-{many}") == [(0, 100)]
    assert spans(f"bytes=-{many}") == [(0, 100)]
    assert spans("bytes=" + "0" * 5000 + "5-0006") == [(5, 7)]


@st.composite
def range_requests(draw: st.DrawFn) -> tuple[int, list[tuple[int | None, int | None]]]:
    size = draw(st.integers(0, 300))
    specs: list[tuple[int | None, int | None]] = draw(
        st.lists(
            st.one_of(
                st.tuples(st.integers(0, 400), st.none()),
                st.tuples(st.none(), st.integers(0, 400)),
                st.integers(0, 400).flatmap(lambda a: st.tuples(st.just(a), st.integers(a, 450))),
            ),
            min_size=1,
            max_size=6,
        )
    )
    return size, specs


@given(range_requests())
def test_parse_range_selects_exactly_the_requested_bytes(
    request_: tuple[int, list[tuple[int | None, int | None]]],
) -> None:
    size, specs = request_
    text = ",".join(f"{'' if a is None else a}-{'' if b is None else b}" for a, b in specs)
    expected: set[int] = set()
    for first, last in specs:
        if first is None:
            assert last is not None
            expected.update(range(max(size - last, 0), size) if last else ())
        else:
            expected.update(range(first, min(size, size if last is None else last + 1)))
    if not expected:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(f"bytes={text}", size, max_ranges=6)
        return
    ranges = parse_range(f"bytes={text}", size, max_ranges=6)
    assert ranges is not None
    got = {i for r in ranges for i in range(r.start, r.end)}
    assert got == expected
    for before, after in itertools.pairwise(ranges):
        assert before.end < after.start  # sorted, disjoint and not adjacent
    assert all(0 <= r.start < r.end <= size for r in ranges)


# ------------------------------------------------------------------------------- ETags


def test_format_etag_quotes_a_strong_tag() -> None:
    assert format_etag("ab12") == '"ab12"'


@pytest.mark.parametrize("bad", ["", 'a"b', "a b", "a\nb", "caf\u00e9"])
def test_format_etag_refuses_what_cannot_be_a_tag(bad: str) -> None:
    with pytest.raises(ValueError, match="entity tag"):
        format_etag(bad)


def test_parse_etag_list_basics() -> None:
    assert parse_etag_list(None) == []
    assert parse_etag_list("") == []
    assert parse_etag_list("*") == "*"
    assert parse_etag_list(" * ") == "*"
    assert parse_etag_list('"a"') == [EntityTag("a")]
    assert parse_etag_list('W/"a"') == [EntityTag("a", weak=True)]
    assert parse_etag_list('""') == [EntityTag("")]
    assert parse_etag_list('"a" ,\tW/"b",  "c"') == [
        EntityTag("a"),
        EntityTag("b", weak=True),
        EntityTag("c"),
    ]


def test_commas_inside_quoted_tags_do_not_split() -> None:
    assert parse_etag_list('"a,b", W/"c,,d"') == [EntityTag("a,b"), EntityTag("c,,d", weak=True)]


def test_weak_prefix_is_a_prefix_not_a_character_set() -> None:
    # lstrip("W/") would eat the W and / that belong to the opaque value.
    assert parse_etag_list('W/"W/x"') == [EntityTag("W/x", weak=True)]
    assert parse_etag_list('"WW/"') == [EntityTag("WW/")]
    assert parse_etag_list('"/Wabc"') == [EntityTag("/Wabc")]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('w/"a"', []),  # the weak indicator is case-sensitive
        ('a, "b"', [EntityTag("b")]),  # unquoted member skipped
        ('"a', []),  # unterminated
        ('"a"b, "c"', [EntityTag("c")]),  # junk after the closing quote
        ('"a", *', [EntityTag("a")]),  # "*" is only valid alone
        ('W/ "a", "b"', [EntityTag("b")]),
        ('"a b", "c"', [EntityTag("c")]),  # space is not an etagc
    ],
)
def test_malformed_members_are_skipped(header: str, expected: list[EntityTag]) -> None:
    assert parse_etag_list(header) == expected


def test_entity_tag_comparisons() -> None:
    strong, weak = EntityTag("x"), EntityTag("x", weak=True)
    assert strong.strong_match(EntityTag("x"))
    assert not strong.strong_match(weak)
    assert not weak.strong_match(weak)
    assert weak.weak_match(strong)
    assert not strong.weak_match(EntityTag("y"))
    assert str(weak) == 'W/"x"'
    assert str(strong) == '"x"'


# ------------------------------------------------------------------------ conditionals


def conditions(method: str = "GET", **headers: str) -> Conditional:
    return evaluate_conditions(
        method=method,
        if_none_match=headers.get("if_none_match"),
        if_range=headers.get("if_range"),
        if_match=headers.get("if_match"),
        etag="abc",
    )


def test_no_conditions_proceed() -> None:
    assert conditions() is Conditional.PROCEED


@pytest.mark.parametrize("value", ['"abc"', 'W/"abc"', '"x", "abc"', "*", '"a,b", W/"abc"'])
@pytest.mark.parametrize("method", ["GET", "HEAD", "get"])
def test_if_none_match_uses_weak_comparison_and_answers_304(value: str, method: str) -> None:
    assert conditions(method, if_none_match=value) is Conditional.NOT_MODIFIED


@pytest.mark.parametrize("value", ['"abd"', '"ABC"', "abc", "", 'W/"ab"'])
def test_if_none_match_without_a_match_proceeds(value: str) -> None:
    assert conditions(if_none_match=value) is Conditional.PROCEED


def test_if_none_match_on_other_methods_fails_the_precondition() -> None:
    assert conditions("DELETE", if_none_match='"abc"') is Conditional.PRECONDITION_FAILED


@pytest.mark.parametrize("value", ['"abc"', "*", '"x", "abc"'])
def test_if_match_strong_match_proceeds(value: str) -> None:
    assert conditions(if_match=value) is Conditional.PROCEED


@pytest.mark.parametrize("value", ['W/"abc"', '"x"', "abc", ""])
def test_if_match_uses_strong_comparison(value: str) -> None:
    assert conditions(if_match=value) is Conditional.PRECONDITION_FAILED


def test_if_match_is_evaluated_before_if_none_match() -> None:
    assert conditions(if_match='"x"', if_none_match='"abc"') is Conditional.PRECONDITION_FAILED


def test_if_range_strong_match_keeps_the_range() -> None:
    assert conditions(if_range='"abc"') is Conditional.PROCEED
    assert conditions(if_range=' "abc" ') is Conditional.PROCEED


@pytest.mark.parametrize(
    "value",
    [
        'W/"abc"',  # weak tags never match strongly
        '"abd"',
        "Wed, 21 Oct 2015 07:28:00 GMT",  # no Last-Modified, so a date cannot match
        '"abc", "abd"',  # exactly one tag allowed
        "*",
        "abc",
        "",
    ],
)
def test_if_range_without_a_strong_match_ignores_the_range(value: str) -> None:
    assert conditions(if_range=value) is Conditional.IGNORE_RANGE


def test_if_none_match_wins_over_if_range() -> None:
    assert conditions(if_none_match='"abc"', if_range='"x"') is Conditional.NOT_MODIFIED
