"""Presence members as the bucket stores them (pure, no I/O).

One key per joined connection: ``<subject as key tokens>.<conn>``, so that the watch
``<subject as key tokens>.*`` gives exactly one subject's members (``*`` is one token, and
a conn id is one token). A KV key holds only ``A-Z a-z 0-9 - _ / =`` and dots, a subject
token almost anything else too: a token made only of those characters (and not starting
with ``=``) is kept as it is, so keys stay readable in ``nats kv ls``; any other is
``=`` + its UTF-8 in unpadded base64url. The mapping is one-to-one per token, and so per
subject. The value is ``{"user", "conn", "info"}``.
"""

from __future__ import annotations

import base64
import re

import msgspec
from msgspec import Raw

MAX_INFO = 1024  # bytes of a join's info, JSON-encoded
_PLAIN = re.compile(r"^[A-Za-z0-9_/-][A-Za-z0-9_/=-]*$")


def key_token(token: str) -> str:
    """One subject token as one KV key token."""
    if _PLAIN.match(token):
        return token
    return "=" + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def subject_key(subject: str) -> str:
    """A literal subject as KV key tokens: the key prefix of its members."""
    return ".".join(key_token(t) for t in subject.split("."))


def member_key(subject: str, conn: str) -> str:
    return f"{subject_key(subject)}.{conn}"


class Member(msgspec.Struct):
    """A member's value in the bucket, and what a presence ``msg`` says of it."""

    user: str
    conn: str
    info: Raw = Raw(b"null")


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Member).decode


def encode_member(user: str, conn: str, info: Raw) -> bytes:
    return _encode(Member(user=user, conn=conn, info=info))


def decode_member(raw: bytes) -> Member | None:
    """A stored value, or None when it is not one (written by someone else). Its info goes
    into frames as it is, so one written with line breaks (not by a gateway) is made
    compact: a frame is one line."""
    try:
        member = _decode(raw)
    except msgspec.DecodeError:
        return None
    if b"\n" in raw or b"\r" in raw:
        member.info = Raw(_encode(msgspec.json.decode(member.info)))
    return member
