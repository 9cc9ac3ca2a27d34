"""What an op handler may touch: the connection it serves (:class:`Conn`) and the
gateway's shared parts (:class:`Services`). Narrow on purpose: a handler cannot reach the
socket, the connection's life cycle or another connection."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

from .. import protocol as p
from ..auth import Identity, Verifier
from ..bridges.durable import DurableBridge
from ..bridges.jetstream import JsBridge
from ..bridges.kv import KvBridge
from ..bridges.presence import PresenceBridge
from ..capabilities import Capabilities, Reserved
from ..config import Config
from ..errors import ErrorCode, ProtocolError
from ..hub import Hub
from ..metrics import Metrics
from ..outbox import Outbox
from ..revocations import Revocations
from ..subscriptions import SubKey, Subscription
from ..upstream import Upstream


class Services(Protocol):
    """The gateway's parts that ops use (the :class:`~natsgate.gateway.Gateway` has them)."""

    @property
    def config(self) -> Config: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def upstream(self) -> Upstream: ...
    @property
    def hub(self) -> Hub: ...
    @property
    def kv(self) -> KvBridge: ...
    @property
    def js(self) -> JsBridge: ...
    @property
    def durables(self) -> DurableBridge: ...
    @property
    def reserved(self) -> Reserved: ...
    @property
    def revocations(self) -> Revocations: ...
    @property
    def presence(self) -> PresenceBridge: ...
    @property
    def verifier(self) -> Verifier: ...


class Conn(Protocol):
    """One connection as its ops see it (the :class:`~natsgate.session.Session`)."""

    @property
    def user(self) -> str: ...
    @property
    def conn_id(self) -> str: ...
    @property
    def caps(self) -> Capabilities: ...
    @property
    def config(self) -> Config: ...
    @property
    def outbox(self) -> Outbox: ...
    @property
    def services(self) -> Services: ...
    @property
    def subs(self) -> dict[SubKey, Subscription]: ...
    @property
    def cmds(self) -> dict[asyncio.Task[Any], p.Cmd]: ...

    def ack(self, op: p.ClientOp, **extra: Any) -> None: ...
    def send_error(self, err: ProtocolError) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...
    def spawn_detached(self, coro: Coroutine[Any, Any, Any]) -> None: ...
    def refresh(self, identity: Identity) -> None: ...


def forbidden(what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.FORBIDDEN, f"your capabilities do not cover {what}")
