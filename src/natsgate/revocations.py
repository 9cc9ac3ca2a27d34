"""Revoked tokens, the same on every gateway (security.md).

``POST /auth/logout`` revokes the one token it was given (by its ``jti``) until that token
expires; ``natsgate user revoke ID`` revokes every token of a user issued before now (by
``iat``). Both are written to the KV bucket ``AUTH_REVOKED_BUCKET`` and every gateway
follows it with one ordered reader, as the capability store follows its bucket: a token
refused on one gateway is refused on all of them, and the connections opened with it are
closed (``unauthorized``, 4001) wherever they are.

Keys: ``t.<sha256 of the jti>`` (the jti itself is never stored) with the token's ``exp``,
written with a per-message TTL so the bucket forgets it once the token is dead anyway;
``u.<user>`` with the time before which that user's tokens are void.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import (
    APIError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from .auth import Identity
from .bridges.reader import Delivery, Reader, Start
from .capstore import ensure_bucket
from .kvmsg import kv_op
from .upstream import Upstream

log = logging.getLogger("natsgate.revocations")

TOKEN, USER = "t.", "u."
GRACE_S = 60.0  # a revoked token's entry outlives its exp by this much (clock skew)


class _Token(msgspec.Struct):
    user: str
    exp: float


class _User(msgspec.Struct):
    before: float


def token_key(jti: str) -> str:
    return TOKEN + hashlib.sha256(jti.encode()).hexdigest()[:40]


def user_key(user: str) -> str:
    return USER + user


async def write_token(kv: KeyValue, ident: Identity) -> None:
    if ident.jti is None:
        return
    value = msgspec.json.encode(_Token(user=ident.user, exp=ident.exp))
    ttl = max(1.0, ident.exp - time.time() + GRACE_S)
    key = token_key(ident.jti)
    try:
        await kv.create(key, value, msg_ttl=ttl)
    except KeyWrongLastSequenceError:
        pass  # revoked already
    except APIError as exc:  # a bucket made without per-message TTLs
        log.debug("revocation of %s without a TTL: %r", ident.user, exc)
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.create(key, value)


async def write_user(kv: KeyValue, user: str, before: float) -> None:
    await kv.put(user_key(user), msgspec.json.encode(_User(before=before)), validate_keys=False)


class Revocations:
    """What is revoked, kept in memory and followed live; :meth:`revoked` is a dict look-up
    (it runs on every upgrade)."""

    def __init__(self, upstream: Upstream, bucket: str) -> None:
        self.upstream = upstream
        self.bucket = bucket
        self._prefix = f"$KV.{bucket}."
        self._tokens: dict[str, float] = {}  # token key -> exp
        self._users: dict[str, float] = {}  # user -> tokens issued before this are void
        self._kv: KeyValue | None = None
        self._reader: Reader | None = None
        self._task: asyncio.Task[None] | None = None
        self._synced = False
        self._prune_at = 1024
        # told of each user whose tokens may have been revoked (it closes their sessions)
        self.on_revoked: Callable[[str], None] = lambda user: None

    async def start(self) -> None:
        """Read every revocation there is, then follow new ones."""
        if self._reader is not None:
            return
        self._kv = await ensure_bucket(self.upstream, self.bucket, ttl_markers=True)
        reader = Reader(
            self.upstream,
            f"KV_{self.bucket}",
            self._prefix + ">",
            Start(last_per_subject=True),
            256,
            self._on_write,
            None,  # no client to wait for
        )
        info = await reader.open()
        if info.num_pending:
            await reader.pump(until=lambda: self._synced)
        self._synced = True
        self._reader = reader
        self._task = asyncio.create_task(reader.pump(), name="revocations")
        self.upstream.on_reconnect(self._kick)

    async def _kick(self) -> None:
        if self._reader is not None:
            self._reader.reset()

    def _on_write(self, msg: Msg, d: Delivery) -> None:
        if d.pending == 0 and not self._synced:
            self._synced = True
            if self._reader is not None:
                self._reader.wake()
        key = msg.subject[len(self._prefix) :]
        gone = kv_op(msg.headers) != "PUT"
        try:
            if key.startswith(TOKEN):
                if gone:
                    self._tokens.pop(key, None)
                    return
                tok = msgspec.json.decode(msg.data, type=_Token)
                self._add_token(key, tok.exp)
                self.on_revoked(tok.user)
            elif key.startswith(USER):
                user = key[len(USER) :]
                if gone:
                    self._users.pop(user, None)
                    return
                self._users[user] = msgspec.json.decode(msg.data, type=_User).before
                self.on_revoked(user)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed entry %r in bucket %s", key, self.bucket)

    def _add_token(self, key: str, exp: float) -> None:
        self._tokens[key] = exp
        if len(self._tokens) >= self._prune_at:  # forget tokens that are dead anyway
            now = time.time()
            self._tokens = {k: e for k, e in self._tokens.items() if e > now}
            self._prune_at = max(1024, 2 * len(self._tokens))

    def revoked(self, ident: Identity) -> bool:
        before = self._users.get(ident.user)
        if before is not None and (ident.iat is None or ident.iat < before):
            return True
        return ident.jti is not None and token_key(ident.jti) in self._tokens

    async def revoke_token(self, ident: Identity) -> None:
        """Logout: this token is void here at once, and everywhere once written."""
        if ident.jti is None:
            return
        self._add_token(token_key(ident.jti), ident.exp)
        self.on_revoked(ident.user)
        assert self._kv is not None
        await write_token(self._kv, ident)

    async def revoke_user(self, user: str, before: float) -> None:
        self._users[user] = max(before, self._users.get(user, 0.0))
        self.on_revoked(user)
        assert self._kv is not None
        await write_user(self._kv, user, before)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._reader is not None:
            await self._reader.stop()
