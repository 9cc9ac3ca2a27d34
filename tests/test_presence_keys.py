"""Member keys (pure): any literal subject becomes valid KV key tokens, one-to-one, and the
watch ``<subject key>.*`` matches the members of that subject and of no other."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from natsgate.members import decode_member, encode_member, key_token, member_key, subject_key
from natsgate.protocol import KEY_RE
from natsgate.subjects import is_valid, match

KV_KEY = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")  # what NATS takes as a key
token = st.text(
    alphabet=st.characters(blacklist_characters=". *>\t\r\n\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
)
subject = (
    st.lists(token, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda s: is_valid(s, wildcards=False))
)
conn = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
    min_size=12,
    max_size=12,
)


def test_plain_tokens_stay_readable() -> None:
    assert subject_key("chat.room-1.a_b") == "chat.room-1.a_b"
    assert member_key("chat.room", "c0nn") == "chat.room.c0nn"
    assert key_token("ü") == "=w7w" and key_token("=x") == "=PXg"  # "=" opens an encoded one


@given(subject, conn)
def test_any_subject_makes_a_valid_key(subj: str, c: str) -> None:
    key = member_key(subj, c)
    assert KV_KEY.match(key) and KEY_RE.match(key)
    assert len(key.split(".")) == len(subj.split(".")) + 1


@given(token, token)
def test_tokens_are_one_to_one(a: str, b: str) -> None:
    assert (key_token(a) == key_token(b)) == (a == b)


@given(subject, subject, conn)
def test_a_watch_sees_one_subject(watched: str, joined: str, c: str) -> None:
    pattern = subject_key(watched) + ".*"
    assert match(pattern, member_key(joined, c)) == (watched == joined)


def test_member_values() -> None:
    from msgspec import Raw

    raw = encode_member("alice", "c1", Raw(b'{"a":1}'))
    m = decode_member(raw)
    assert m is not None and (m.user, m.conn, bytes(m.info)) == ("alice", "c1", b'{"a":1}')
    spaced = decode_member(b'{"user": "u", "conn": "c",\n "info": {"a":\n [1,\r\n 2]}}')
    assert spaced is not None and bytes(spaced.info) == b'{"a":[1,2]}'  # frames are one line
    assert decode_member(b"not json") is None
    assert decode_member(b'{"user": 1}') is None
