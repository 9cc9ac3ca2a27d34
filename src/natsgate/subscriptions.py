"""A connection's subscriptions of every kind (core, KV, JetStream) and how they end.

Kept as a plain dict on the session (keyed by kind, target and pattern: subscribing twice
is idempotent) with the functions here working on it, rather than an object per
connection: thousands of idle connections each pay for every field they hold.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .bridges.feed import Feed
from .capabilities import Kind

SubKey = tuple[Kind, str, str]


@dataclass(eq=False, slots=True)  # one per subscription of every connection: memory
class Subscription:
    kind: Kind
    target: str
    pattern: str  # the core pattern, KV key pattern, JetStream filter ("" for none), or
    # for a durable its name (its filter is in ``checked``)
    checked: list[str]  # what the capability check covered; re-checked on cap changes
    active: bool = True
    feed: Feed | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def key(self) -> SubKey:
        return (self.kind, self.target, self.pattern)

    def describe(self) -> dict[str, str]:
        """How ``cap_update`` names an ended subscription: the op and target that made it,
        plus ``pattern`` (KV) or ``filter`` (JetStream) when it had one."""
        match self.kind:
            case Kind.SUB:
                return {"op": "sub", "target": self.target}
            case Kind.KV:
                return {"op": "kv_sub", "target": self.target, "pattern": self.pattern}
            case Kind.JS:
                d = {"op": "js_sub", "target": self.target}
                if self.pattern:
                    d["filter"] = self.pattern
                return d
            case Kind.DURABLE:
                return {"op": "js_sub", "target": self.target, "durable": self.pattern}
            case Kind.PRESENCE:
                return {"op": "presence_sub", "target": self.target}


def feeds(subs: dict[SubKey, Subscription]) -> int:
    """KV watches and stream subscriptions: each one a consumer on the NATS server."""
    return sum(1 for s in subs.values() if s.kind is not Kind.SUB)
