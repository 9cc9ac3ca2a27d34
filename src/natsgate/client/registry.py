"""Which subscription a frame belongs to (protocol.md §3), and which ones a
``cap_update`` ended (section 4).

Every ``msg`` names what it was subscribed with in ``sub``: the core pattern, the KV key
pattern (with ``kv:<bucket>`` as target), the JetStream filter (with ``js:<stream>``; no
``sub`` when the subscription has no filter).  So overlapping subscriptions each get their
own copy, routed with a dict lookup or a short scan of one bucket's or stream's
subscriptions.  Frames without ``sub`` (an older gateway) go to every subscription whose
pattern matches.  No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .durable import DurableSubscription
from .subscriptions import (
    AnySubscription,
    CoreSubscription,
    JsSubscription,
    KvSubscription,
    Membership,
    PresenceSubscription,
    SubKey,
    SubState,
    matches,
)
from .wire import (
    Envelope,
    JsMessage,
    JsWire,
    KvEvent,
    Message,
    NatsgateError,
    RevokedWire,
    decode_any,
    decode_js,
    decode_kv,
    decode_presence,
    payload,
)

S = TypeVar(
    "S",
    CoreSubscription,
    KvSubscription,
    JsSubscription,
    DurableSubscription,
    Membership,
    PresenceSubscription,
)


@dataclass(frozen=True, slots=True)
class CapUpdate:
    """A ``cap_update``: the new capabilities, the gateway's list of ended subscriptions
    as sent, and this client's subscriptions it ended (now REVOKED, never re-sent)."""

    caps: dict[str, Any]
    revoked: list[dict[str, str]]
    ended: list[AnySubscription]


class Registry:
    """The client's live subscriptions, by key and indexed for routing, in the order they
    were made (which is the order they are re-sent in)."""

    def __init__(self) -> None:
        self._all: dict[SubKey, AnySubscription] = {}
        self._core: dict[str, CoreSubscription] = {}
        self._kv: dict[str, list[KvSubscription]] = {}
        self._js: dict[str, list[JsSubscription]] = {}  # not durables
        self._durables: dict[tuple[str, str], DurableSubscription] = {}  # (stream, name)
        self._presence: dict[str, PresenceSubscription] = {}  # by subject

    def __iter__(self) -> Iterator[AnySubscription]:
        return iter(list(self._all.values()))

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, sub: object) -> bool:
        return isinstance(sub, AnySubscription) and self._all.get(sub.key) is sub

    def add(self, sub: S) -> S:
        """Register ``sub``; NatsgateError ``bad_request`` when the same one (kind,
        target, pattern or filter) exists: the gateway would treat them as one."""
        if sub.key in self._all:
            raise NatsgateError(
                "bad_request",
                f"already subscribed: {sub.op} {sub.target} {sub.pattern}",
                target=sub.target,
            )
        if isinstance(sub, DurableSubscription):
            self._durables[(sub.target, sub.durable)] = sub
        elif isinstance(sub, JsSubscription):
            self._js.setdefault(sub.target, []).append(sub)
        elif isinstance(sub, KvSubscription):
            self._kv.setdefault(sub.target, []).append(sub)
        elif isinstance(sub, PresenceSubscription):
            self._presence[sub.target] = sub
        elif isinstance(sub, Membership):
            pass  # gets no messages
        else:
            self._core[sub.target] = sub
        self._all[sub.key] = sub
        return sub

    def forget(self, sub: AnySubscription) -> None:
        if self._all.get(sub.key) is not sub:
            return
        del self._all[sub.key]
        if isinstance(sub, CoreSubscription):
            del self._core[sub.target]
        elif isinstance(sub, KvSubscription):
            self._kv[sub.target].remove(sub)
            if not self._kv[sub.target]:
                del self._kv[sub.target]
        elif isinstance(sub, DurableSubscription):
            del self._durables[(sub.target, sub.durable)]
        elif isinstance(sub, PresenceSubscription):
            del self._presence[sub.target]
        elif isinstance(sub, Membership):
            pass
        else:
            self._js[sub.target].remove(sub)
            if not self._js[sub.target]:
                del self._js[sub.target]

    def end_all(self, err: NatsgateError) -> None:
        for sub in self:
            sub._end(SubState.ENDED, err)
        self._all.clear()
        self._core.clear()
        self._kv.clear()
        self._js.clear()
        self._durables.clear()
        self._presence.clear()

    def durable(self, stream: str, name: str) -> DurableSubscription | None:
        return self._durables.get((stream, name))

    def revoke(self, caps: dict[str, Any], revoked: list[RevokedWire]) -> CapUpdate:
        """End what a ``cap_update`` names; the update as the ``cap_update`` event."""
        described: list[dict[str, str]] = []
        ended: list[AnySubscription] = []
        for r in revoked:
            item = {"op": r.op, "target": r.target}
            key: SubKey
            durables: list[DurableSubscription] = []
            if r.op == "kv_sub":
                item["pattern"] = r.pattern or ">"
                key = ("kv_sub", r.target, r.pattern or ">")
            elif r.op == "js_sub":
                if r.filter is not None:
                    item["filter"] = r.filter
                key = ("js_sub", r.target, r.filter or ">")
                if r.durable is not None:
                    item["durable"] = r.durable
                    key = ("js_durable", r.target, r.durable)
                else:  # the grant is lost for every subscription of this stream and filter
                    durables = [
                        d
                        for (stream, _), d in self._durables.items()
                        if stream == r.target and d.filter == r.filter
                    ]
            elif r.op in ("join", "presence_sub"):
                key = (r.op, r.target, "")
            else:
                key = ("sub", r.target, "")
            described.append(item)
            found = self._all.get(key)
            hit: list[AnySubscription] = [found, *durables] if found is not None else [*durables]
            for sub in hit:
                self.forget(sub)
                why = NatsgateError("forbidden", "revoked by a capability update", target=r.target)
                sub._end(SubState.REVOKED, why)
                ended.append(sub)
        return CapUpdate(caps, described, ended)

    # ---------------------------------------------------------------- routing

    def route(self, env: Envelope) -> None:
        """Hand a ``msg`` to its subscription; a message for none is dropped (it was in
        flight when the subscription ended)."""
        target = env.target or ""
        if target.startswith("kv:"):
            kv = self._kv.get(target[3:])
            if kv:
                return self._route_kv(kv, env)
        elif target.startswith("presence:"):
            presence = self._presence.get(target[9:])
            if presence is not None:
                presence._take(decode_presence(env.data))
            return
        elif target.startswith("js:"):
            if env.durable is not None:  # only JetStream frames name a durable
                durable = self._durables.get((target[3:], env.durable))
                if durable is not None:
                    durable._take(decode_js(env.data), env)
                return
            js = self._js.get(target[3:])
            if js:
                return self._route_js(js, env)
        pattern = env.sub
        if pattern is not None:
            core = self._core.get(pattern)
            if core is not None:
                data = decode_any(env.data)
                if env.enc is not None:
                    data = payload(data, env.enc)
                core._deliver(Message(target, pattern, data, env.headers))
            return
        for sub in list(self._core.values()):  # an older gateway: all that match
            if matches(sub.pattern, target):
                data = payload(decode_any(env.data), env.enc)
                sub._deliver(Message(target, sub.pattern, data, env.headers))

    @staticmethod
    def _route_kv(subs: list[KvSubscription], env: Envelope) -> None:
        w = decode_kv(env.data)
        if w.op == "RESYNC" or w.op == "SYNCED":  # the gateway re-reads after a NATS outage
            pattern = w.pattern or env.sub or ">"
            for sub in subs:  # (bucket, pattern) is unique
                if sub.pattern == pattern:
                    return sub._marker(w.op)
            return
        value = payload(w.value, w.enc) if w.enc is not None else w.value
        event = KvEvent(w.op, w.key, w.revision, value, w.snapshot)
        named = env.sub
        if named is not None:
            for sub in subs:
                if sub.pattern == named:
                    return sub._entry(w, event)
            return
        for sub in list(subs):  # an older gateway: all that match
            if matches(sub.pattern, w.key):
                sub._entry(w, event)

    @staticmethod
    def _route_js(subs: list[JsSubscription], env: Envelope) -> None:
        w = decode_js(env.data)
        named = env.sub  # the filter; absent for the subscription without one
        for sub in subs:  # (stream, filter) is unique
            if sub.filter == named:
                return Registry._deliver_js(sub, w, env)
        if named is None:  # an older gateway, which never names the filter
            for sub in list(subs):
                if sub.filter is not None and matches(sub.filter, w.subject):
                    Registry._deliver_js(sub, w, env)

    @staticmethod
    def _deliver_js(sub: JsSubscription, w: JsWire, env: Envelope) -> None:
        if sub._accept(w.seq):
            data = payload(w.payload, w.enc) if w.enc is not None else w.payload
            sub._deliver(JsMessage(w.seq, w.subject, data, w.time, env.headers))
