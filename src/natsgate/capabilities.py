"""The capability document (contract section 4) and its checks.

Pure and deny-by-default: a missing key, a missing field or a document that does not parse
grants nothing.  A request is allowed only when one granted pattern covers all of it.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from .subjects import covered_by_any, is_valid, match


class Kind(enum.StrEnum):
    """What a subscription or request reads or writes; names the capability field."""

    SUB = "sub"
    KV = "kv"
    JS = "js"


class Capabilities(msgspec.Struct, frozen=True, omit_defaults=True):
    subjects: list[str] = []
    publish: list[str] = []
    commands: list[str] = []
    buckets: dict[str, list[str]] = {}
    streams: dict[str, list[str]] = {}

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
        )

    def to_json(self) -> dict[str, Any]:
        """The document as sent in ``cap_update`` (every field present)."""
        return {
            "subjects": list(self.subjects),
            "publish": list(self.publish),
            "commands": list(self.commands),
            "buckets": {k: list(v) for k, v in self.buckets.items()},
            "streams": {k: list(v) for k, v in self.streams.items()},
        }

    # The checks. Each takes an already validated subject or pattern.

    def can_subscribe(self, pattern: str) -> bool:
        return covered_by_any(self.subjects, pattern)

    def can_publish(self, subject: str) -> bool:
        return covered_by_any(self.publish, subject)

    def can_command(self, subject: str) -> bool:
        return covered_by_any(self.commands, subject)

    def can_watch(self, bucket: str, key_pattern: str) -> bool:
        return covered_by_any(_grants_for(self.buckets, bucket), key_pattern)

    def can_read(self, stream: str, filters: list[str]) -> bool:
        """``filters``: the asked filter, or every subject of the stream when none is asked."""
        grants = _grants_for(self.streams, stream)
        return bool(filters) and all(covered_by_any(grants, f) for f in filters)

    def has_stream(self, stream: str) -> bool:
        return bool(_grants_for(self.streams, stream))

    def allows(self, kind: Kind, target: str, patterns: list[str]) -> bool:
        """The check for a live subscription, re-run when capabilities change."""
        match kind:
            case Kind.SUB:
                return all(self.can_subscribe(p) for p in patterns)
            case Kind.KV:
                return all(self.can_watch(target, p) for p in patterns)
            case Kind.JS:
                return self.can_read(target, patterns)


def _grants_for(table: dict[str, list[str]], name: str) -> list[str]:
    """Grants for a bucket or stream; table keys are names or single-token patterns."""
    grants: list[str] = []
    for key, patterns in table.items():
        if key == name or (is_valid(key, wildcards=True) and match(key, name)):
            grants.extend(patterns)
    return grants


NONE = Capabilities()
