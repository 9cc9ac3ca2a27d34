"""The subject matcher and the covering rule (pure; property-based)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natsgate.subjects import InvalidSubject, covers, is_valid, match, overlaps, validate

TOKENS = st.sampled_from(["a", "b", "c", "_INBOX", "$JS", "x1"])
PTOKENS = st.one_of(TOKENS, st.just("*"))


@st.composite
def literals(draw: st.DrawFn) -> str:
    return ".".join(draw(st.lists(TOKENS, min_size=1, max_size=4)))


@st.composite
def patterns(draw: st.DrawFn) -> str:
    toks = draw(st.lists(PTOKENS, min_size=1, max_size=4))
    if draw(st.booleans()):
        toks.append(">")
    return ".".join(toks)


def test_validate_rejects_bad_subjects() -> None:
    for bad in ["", "a..b", ".a", "a.", "a b", "a.>.b", "a\tb", "a.b*", "x" * 2000]:
        with pytest.raises(InvalidSubject):
            validate(bad, wildcards=True)
    with pytest.raises(InvalidSubject):
        validate("a.*", wildcards=False)
    with pytest.raises(InvalidSubject):
        validate("a.>", wildcards=False)
    assert validate("a.*.>", wildcards=True) == ["a", "*", ">"]


def test_match_examples() -> None:
    assert match("a.*", "a.b")
    assert not match("a.*", "a.b.c")
    assert match("a.>", "a.b.c")
    assert not match("a.>", "a")
    assert match(">", "a")
    assert not match(">", "_INBOX.x")  # protocol.md §4: wildcard-first never matches _INBOX
    assert not match("*.x", "$JS.x")
    assert match("_INBOX.>", "_INBOX.abc")
    assert match("$JS.API.>", "$JS.API.INFO")


def test_covers_examples() -> None:
    assert covers("chat.>", "chat.room.*")
    assert covers("chat.>", "chat.>")
    assert not covers("chat.*", "chat.>")
    assert not covers("a.*", "a.>")  # the escalation the issue names
    assert covers("a.b", "a.b")
    assert not covers("a.b", "a.*")
    assert not covers(">", "_INBOX.>")
    assert not covers(">", "$KV.bucket.>")
    assert not covers("*.>", "_INBOX.x")
    assert covers("_INBOX.>", "_INBOX.x.y")
    assert covers(">", ">")  # and the matcher itself keeps _INBOX out of ">"


@given(patterns(), patterns(), literals())
@settings(max_examples=3000)
def test_covers_is_sound(grant: str, pattern: str, subject: str) -> None:
    """If covers(g, p), every subject p matches, g matches too."""
    if covers(grant, pattern) and match(pattern, subject):
        assert match(grant, subject)


@given(patterns(), literals())
@settings(max_examples=2000)
def test_pattern_covers_its_own_matches(pattern: str, subject: str) -> None:
    if match(pattern, subject):
        assert covers(pattern, subject)


@given(patterns())
def test_covers_reflexive(p: str) -> None:
    assert covers(p, p)


@given(patterns(), patterns(), literals())
@settings(max_examples=2000)
def test_overlaps_is_sound(a: str, b: str, s: str) -> None:
    if match(a, s) and match(b, s):
        assert overlaps(a, b) and overlaps(b, a)


@given(st.text(max_size=30))
def test_validate_never_raises_anything_else(text: str) -> None:
    try:
        validate(text, wildcards=True)
    except InvalidSubject:
        assert not is_valid(text, wildcards=True)
