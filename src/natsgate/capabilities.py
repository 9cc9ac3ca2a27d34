"""The capability document (protocol.md §4) and its checks.

Pure and deny-by-default: a missing key, a missing field or a document that does not parse
grants nothing.  A request is allowed only when one granted pattern covers all of it.
"""

from __future__ import annotations

import difflib
import enum
import json
from dataclasses import dataclass
from typing import Any

import msgspec

from .subjects import InvalidSubject, covered_by_any, covers, is_valid, match, overlaps, validate


class Kind(enum.StrEnum):
    """What a subscription or request reads or writes; names the capability field."""

    SUB = "sub"
    KV = "kv"
    JS = "js"
    DURABLE = "durable"  # a js_sub bound to a durable: the same grants as JS
    PRESENCE = "presence"  # a presence_sub: reading members needs ``subjects``


class CapabilitiesError(ValueError):
    """A capability document :meth:`Capabilities.validate` refuses; the message names the
    field (``buckets.todos[1]``) and why, in one line."""


# lists of patterns, except buckets and streams (name or one-token pattern -> patterns)
# and admin (a boolean)
FIELDS = ("subjects", "publish", "commands", "buckets", "streams", "presence", "admin")


class Capabilities(msgspec.Struct, frozen=True, omit_defaults=True):
    subjects: list[str] = []
    publish: list[str] = []
    commands: list[str] = []
    buckets: dict[str, list[str]] = {}
    streams: dict[str, list[str]] = {}
    presence: list[str] = []  # subjects the user may join (announce itself on)
    admin: bool = False  # the admin API and console

    @classmethod
    def parse(cls, raw: bytes | None) -> Capabilities:
        """Parse a stored document; anything unreadable grants nothing."""
        if not raw:
            return NONE
        try:
            caps = msgspec.json.decode(raw, type=cls)
        except msgspec.DecodeError:
            return NONE
        return caps.sanitized()

    @classmethod
    def validate(cls, raw: bytes | str) -> Capabilities:
        """A document as an operator wrote it (``natsgate user add --caps``, ``user caps``),
        or :class:`CapabilitiesError`. Strict where :meth:`parse` is lenient: the gateway
        must grant nothing for what it cannot read, but the person writing it should learn
        at once that ``subjets`` is no field and ``"chat.>"`` is no list."""
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CapabilitiesError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise CapabilitiesError(f"must be a JSON object, got {_kind(doc)}")
        for name in doc:
            if name not in FIELDS:
                near = difflib.get_close_matches(name, FIELDS, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise CapabilitiesError(
                    f"unknown field {name!r}{hint}; the fields are {', '.join(FIELDS)}"
                )
        admin = doc.get("admin", False)
        if not isinstance(admin, bool):
            raise CapabilitiesError(f"admin must be true or false, got {_kind(admin)}")
        return cls(
            subjects=_patterns("subjects", doc.get("subjects", [])),
            publish=_patterns("publish", doc.get("publish", [])),
            commands=_patterns("commands", doc.get("commands", [])),
            buckets=_table("buckets", doc.get("buckets", {})),
            streams=_table("streams", doc.get("streams", {})),
            presence=_patterns("presence", doc.get("presence", [])),
            admin=admin,
        )

    def sanitized(self) -> Capabilities:
        """Drop grants that are not valid patterns, so a typo cannot widen anything."""

        def ok(patterns: list[str]) -> list[str]:
            return [p for p in patterns if is_valid(p, wildcards=True)]

        return Capabilities(
            subjects=ok(self.subjects),
            publish=ok(self.publish),
            commands=ok(self.commands),
            buckets={k: ok(v) for k, v in self.buckets.items()},
            streams={k: ok(v) for k, v in self.streams.items()},
            presence=ok(self.presence),
            admin=self.admin is True,
        )

    def to_json(self) -> dict[str, Any]:
        """The document as sent in ``cap_update`` (every field present)."""
        return {
            "subjects": list(self.subjects),
            "publish": list(self.publish),
            "commands": list(self.commands),
            "buckets": {k: list(v) for k, v in self.buckets.items()},
            "streams": {k: list(v) for k, v in self.streams.items()},
            "presence": list(self.presence),
            "admin": self.admin,
        }

    # The checks. Each takes an already validated subject or pattern.

    # ``reserved`` names the gateway's own buckets (security.md): by default none.

    def can_subscribe(self, pattern: str, reserved: Reserved | None = None) -> bool:
        return _subject_allowed(self.subjects, pattern, reserved)

    def can_publish(self, subject: str, reserved: Reserved | None = None) -> bool:
        return _subject_allowed(self.publish, subject, reserved)

    def can_command(self, subject: str, reserved: Reserved | None = None) -> bool:
        return _subject_allowed(self.commands, subject, reserved)

    def can_join(self, subject: str, reserved: Reserved | None = None) -> bool:
        return _subject_allowed(self.presence, subject, reserved)

    def can_watch(self, bucket: str, key_pattern: str, reserved: Reserved | None = None) -> bool:
        grants = _grants_for(self.buckets, bucket, reserved.mode(bucket) if reserved else OPEN)
        return covered_by_any(grants, key_pattern)

    def can_read(self, stream: str, filters: list[str], reserved: Reserved | None = None) -> bool:
        """``filters``: the asked filter, or every subject of the stream when none is asked."""
        grants = self._stream_grants(stream, reserved)
        return bool(filters) and all(covered_by_any(grants, f) for f in filters)

    def has_stream(self, stream: str, reserved: Reserved | None = None) -> bool:
        return bool(self._stream_grants(stream, reserved))

    def _stream_grants(self, stream: str, reserved: Reserved | None) -> list[str]:
        mode = reserved.mode(stream[3:]) if reserved and stream.startswith("KV_") else OPEN
        return _grants_for(self.streams, stream, mode)

    def allows(
        self, kind: Kind, target: str, patterns: list[str], reserved: Reserved | None = None
    ) -> bool:
        """The check for a live subscription, re-run when capabilities change."""
        match kind:
            case Kind.SUB | Kind.PRESENCE:
                return all(self.can_subscribe(p, reserved) for p in patterns)
            case Kind.KV:
                return all(self.can_watch(target, p, reserved) for p in patterns)
            case Kind.JS | Kind.DURABLE:
                return self.can_read(target, patterns, reserved)


# How a bucket may be reached through capabilities.
OPEN, LITERAL, HIDDEN = "open", "literal", "hidden"


@dataclass(frozen=True, slots=True)
class Reserved:
    """The gateway's own buckets (security.md). ``hidden`` ones (password hashes,
    revocations) are never reachable through the gateway, whatever the capabilities say:
    not as a bucket, not as the stream ``KV_<name>``, not on ``$KV.<name>.`` subjects nor
    through a JetStream API subject naming the stream. ``literal`` ones (capabilities) only
    through a grant that names the bucket itself, never through ``*`` or ``>``."""

    hidden: frozenset[str] = frozenset()
    literal: frozenset[str] = frozenset()
    # Subject prefixes, the same two ways (protocol.md §7): the gateways' admin
    # requests never (``$NATSGATE.admin...``), the audit trail only through a grant that
    # names the prefix (``natsgate.audit.>``, not ``>``). A pattern that reaches one only
    # through a wildcard (``>``, ``natsgate.*.*``) is allowed as before, and is never
    # delivered its subjects (:meth:`unnamed`, the hub's filter).
    hidden_subjects: frozenset[str] = frozenset()
    literal_subjects: frozenset[str] = frozenset()

    def mode(self, bucket: str) -> str:
        if bucket in self.hidden:
            return HIDDEN
        return LITERAL if bucket in self.literal else OPEN

    def unnamed(self, pattern: str) -> tuple[str, ...]:
        """The reserved prefixes (each with its dot) whose subjects ``pattern`` matches
        only through a wildcard: a subscription on it must skip them."""
        return tuple(
            f"{p}."
            for p in self.hidden_subjects | self.literal_subjects
            if _reaches(pattern, p) and not _in_prefix(pattern, p)
        )


def _kind(value: object) -> str:
    """How a JSON value is called in an error: ``a string ("chat.>")``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a string ({json.dumps(value)[:60]})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    return "a list" if isinstance(value, list) else "an object"


def _patterns(where: str, value: object) -> list[str]:
    if not isinstance(value, list):
        raise CapabilitiesError(f"{where} must be a list of patterns, got {_kind(value)}")
    for i, p in enumerate(value):
        if not isinstance(p, str):
            raise CapabilitiesError(f"{where}[{i}] must be a pattern string, got {_kind(p)}")
        try:
            validate(p, wildcards=True)
        except InvalidSubject as exc:
            raise CapabilitiesError(
                f"{where}[{i}] {json.dumps(p)[:80]} is no pattern: {exc}"
            ) from None
    return list(value)


def _table(where: str, value: object) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise CapabilitiesError(
            f"{where} must be an object of name -> list of patterns, got {_kind(value)}"
        )
    for key in value:
        if "." in key or not is_valid(key, wildcards=True):
            raise CapabilitiesError(
                f"{where} has the key {json.dumps(key)[:80]}: a name, or '*' / '>' for every one"
            )
    return {k: _patterns(f"{where}.{k}", v) for k, v in value.items()}


def _names_bucket(pattern: str, bucket: str) -> bool:
    """Whether ``pattern`` is written to reach ``bucket``'s subjects: ``$KV.<bucket>...``
    (a literal first token: wildcards never reach ``$`` subjects) or any subject with the
    token ``KV_<bucket>`` (the JetStream API for its stream)."""
    tokens = pattern.split(".")
    if f"KV_{bucket}" in tokens:
        return True
    return tokens[0] == "$KV" and overlaps(pattern, f"$KV.{bucket}.>")


def _subject_allowed(grants: list[str], subject: str, reserved: Reserved | None) -> bool:
    if reserved is None:
        return covered_by_any(grants, subject)
    if any(_names_bucket(subject, b) for b in reserved.hidden):
        return False
    if any(_reaches(subject, p) for p in reserved.hidden_subjects):
        return False
    named = [p for p in reserved.literal_subjects if _in_prefix(subject, p)]
    if named:  # only a grant that names the prefix itself, e.g. "natsgate.audit.>"
        return any(covers(g, subject) and all(_in_prefix(g, p) for p in named) for g in grants)
    literal = [b for b in reserved.literal if _names_bucket(subject, b)]
    if not literal:
        return covered_by_any(grants, subject)
    # only a grant that itself names the bucket, e.g. "$KV.auth_users.alice"
    return any(covers(g, subject) and all(_names_literally(g, b) for b in literal) for g in grants)


def _wild_first(pattern: str) -> bool:
    return pattern.split(".", 1)[0] in ("*", ">")


def _in_prefix(pattern: str, prefix: str) -> bool:
    """Whether ``pattern`` names ``prefix`` token by token (it lies inside it)."""
    return pattern == prefix or pattern.startswith(f"{prefix}.")


def _reaches(pattern: str, prefix: str) -> bool:
    """Whether ``pattern`` matches some subject under ``prefix`` (a wildcard-first pattern
    never matches ``_INBOX.``/``$`` subjects, protocol.md §4)."""
    first = prefix.split(".", 1)[0]
    private = first == "_INBOX" or first.startswith("$")
    return overlaps(pattern, f"{prefix}.>") and not (private and _wild_first(pattern))


def _names_literally(grant: str, bucket: str) -> bool:
    tokens = grant.split(".")
    return f"KV_{bucket}" in tokens or (tokens[:2] == ["$KV", bucket])


def _grants_for(table: dict[str, list[str]], name: str, mode: str = OPEN) -> list[str]:
    """Grants for a bucket or stream; table keys are names or single-token patterns (a
    reserved name: only its own key, or none at all)."""
    if mode == HIDDEN:
        return []
    if mode == LITERAL:
        return list(table.get(name, []))
    grants: list[str] = []
    for key, patterns in table.items():
        if key == name or (is_valid(key, wildcards=True) and match(key, name)):
            grants.extend(patterns)
    return grants


NONE = Capabilities()
