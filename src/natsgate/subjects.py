"""NATS subject syntax, matching and the covering rule.

Pure functions, no I/O. This is the one subject matcher of natsgate: capability checks,
delivery filtering and key-pattern routing all call it.

Rules (NATS docs, "Subject-Based Messaging"): tokens are separated by ``.``, none may be
empty or contain whitespace; ``*`` matches exactly one token; ``>`` matches one or more
tokens and may only stand last.  Added by the protocol (protocol.md §4): subjects whose first
token is ``_INBOX`` or starts with ``$`` are never matched or covered by a pattern whose
first token is a wildcard, so that a grant of ``>`` does not expose other users' command
replies or the JetStream/KV API.
"""

from __future__ import annotations

import re

MAX_SUBJECT_LENGTH = 1024
# Whitespace (Unicode's too), C0 and C1 control characters and DEL: NATS splits protocol
# lines on whitespace, and a control character in a subject reaches every log and UI that
# shows it (security.md).
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


class InvalidSubject(ValueError):
    """The text is not a NATS subject (or not a pattern, where one is allowed)."""


def _is_private(first_token: str) -> bool:
    return first_token == "_INBOX" or first_token.startswith("$")


def _is_wild(token: str) -> bool:
    return token == "*" or token == ">"


def validate(subject: str, *, wildcards: bool) -> list[str]:
    """Split ``subject`` into tokens, or raise :class:`InvalidSubject` saying why."""
    if not subject:
        raise InvalidSubject("subject is empty")
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise InvalidSubject(f"subject is longer than {MAX_SUBJECT_LENGTH} characters")
    if _FORBIDDEN.search(subject):
        raise InvalidSubject("subject contains whitespace or a control character")
    tokens = subject.split(".")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if not token:
            raise InvalidSubject("subject has an empty token")
        if token == ">" or token == "*":
            if not wildcards:
                raise InvalidSubject("a literal subject is required here (no '*' or '>')")
            if token == ">" and i != last:
                raise InvalidSubject("'>' may only be the last token")
        elif ("*" in token or ">" in token) and wildcards:
            raise InvalidSubject("wildcards must be whole tokens")
    return tokens


def is_valid(subject: str, *, wildcards: bool) -> bool:
    try:
        validate(subject, wildcards=wildcards)
    except InvalidSubject:
        return False
    return True


def match_tokens(pattern: list[str], subject: list[str]) -> bool:
    """Whether the literal ``subject`` tokens are matched by ``pattern`` tokens."""
    if pattern and subject and _is_wild(pattern[0]) and _is_private(subject[0]):
        return False
    n = len(subject)
    for i, p in enumerate(pattern):
        if p == ">":
            return n > i
        if i >= n:
            return False
        if p != "*" and p != subject[i]:
            return False
    return len(pattern) == n


def match(pattern: str, subject: str) -> bool:
    """Whether the literal ``subject`` is matched by ``pattern`` (both assumed valid)."""
    if pattern == subject:
        return True
    return match_tokens(pattern.split("."), subject.split("."))


def covers(grant: str, pattern: str) -> bool:
    """Whether every subject ``pattern`` can match is also matched by ``grant``.

    ``chat.>`` covers ``chat.room.*``; ``chat.*`` does not cover ``chat.>``; a literal
    covers only itself.
    """
    g = grant.split(".")
    p = pattern.split(".")
    if _is_wild(g[0]) and _is_private(p[0]):
        return False
    for i, gt in enumerate(g):
        if gt == ">":
            return len(p) > i
        if i >= len(p):
            return False
        pt = p[i]
        if gt == "*":
            if pt == ">":
                return False
        elif gt != pt:
            return False
    return len(g) == len(p)


def covered_by_any(grants: list[str], pattern: str) -> bool:
    return any(covers(g, pattern) for g in grants)


def overlaps(a: str, b: str) -> bool:
    """Whether some subject is matched by both patterns (a filter inside a stream)."""
    ta, tb = a.split("."), b.split(".")
    for i in range(max(len(ta), len(tb))):
        if i >= len(ta) or i >= len(tb):
            return False
        x, y = ta[i], tb[i]
        if x == ">":
            return len(tb) > i
        if y == ">":
            return len(ta) > i
        if x != y and x != "*" and y != "*":
            return False
    return True
