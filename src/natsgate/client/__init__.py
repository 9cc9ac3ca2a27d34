"""natsgate.client: an asyncio client for the natsgate gateway.

The same operations as the browser library, over one WebSocket: core, KV and JetStream
subscriptions, publish, command, capability updates as events; reconnects with full-jitter
backoff, re-subscribes, and resumes JetStream subscriptions where they stopped.
See ``docs/python-client.md``.

Exceptions: everything the client reports is a :class:`NatsgateError` with a ``code``::

    NatsgateError
      code: the gateway's error codes (protocol.md §3): forbidden, not_found, timeout,
            no_responders, bad_request, limit, unauthorized, ...
            or the client's own: disconnected, closed, protocol (and timeout)
"""

from __future__ import annotations

import asyncio
from typing import Unpack

from ..errors import CLOSE_INFO, CloseAction, CloseCode, CloseInfo, close_action
from .client import Client
from .durable import DurableSubscription
from .options import ClientOptions, TokenProvider
from .reconnect import backoff_delay
from .registry import CapUpdate
from .subscriptions import (
    CoreSubscription,
    JsSubscription,
    KvSubscription,
    Membership,
    PresenceSubscription,
    Subscription,
    SubState,
)
from .wire import (
    ClientState,
    DisconnectInfo,
    DurableInfo,
    Headers,
    JsMessage,
    KvEvent,
    Message,
    NatsgateError,
    PresenceEvent,
    ReconnectInfo,
)


async def connect(url: str, **options: Unpack[ClientOptions]) -> Client:
    """Connect to ``url`` (``ws(s)://host:port/ws``) and wait until the client is OPEN.

    ``token`` is sent as ``Authorization: Bearer`` on the upgrade; ``token_provider`` is
    called for a fresh token before every reconnect (and the first connect without
    ``token``).  Reconnect delays grow from ``min_backoff`` to ``max_backoff`` seconds
    with full jitter and start over once a connection stayed up ``stable_after`` seconds.
    ``connect_timeout`` bounds this call (failed attempts are retried meanwhile) and each
    later attempt's upgrade and first ``cap_update``.  ``heartbeat``: seconds between the
    client's WebSocket pings (a missing pong drops the socket); None turns them off.
    With a ``token_provider``, a fresh token is fetched and sent (the ``auth`` op)
    ``refresh_before`` seconds before the current one expires, so the connection and its
    subscriptions live on without a reconnect (None: only at reconnects).

    Options and their defaults are those of :class:`Client` (:class:`ClientOptions`).

    Raises NatsgateError: ``unauthorized``/``forbidden`` when the upgrade is refused,
    ``disconnected`` when no connection opened within ``connect_timeout``.
    """
    client = Client(url, **options)
    connect_timeout = client.connect_timeout
    client.start()
    try:
        async with asyncio.timeout(connect_timeout):
            await client.ready()
    except TimeoutError:
        await client.close()
        raise NatsgateError(
            "disconnected",
            f"no connection to {url} within {connect_timeout}s (last: {client.last_failure})",
        ) from None
    except BaseException:
        await client.close()
        raise
    return client


__all__ = [
    "CLOSE_INFO",
    "CapUpdate",
    "Client",
    "ClientOptions",
    "ClientState",
    "CloseAction",
    "CloseCode",
    "CloseInfo",
    "CoreSubscription",
    "DisconnectInfo",
    "DurableInfo",
    "DurableSubscription",
    "Headers",
    "JsMessage",
    "JsSubscription",
    "KvEvent",
    "KvSubscription",
    "Membership",
    "Message",
    "NatsgateError",
    "PresenceEvent",
    "PresenceSubscription",
    "ReconnectInfo",
    "SubState",
    "Subscription",
    "TokenProvider",
    "backoff_delay",
    "close_action",
    "connect",
]
