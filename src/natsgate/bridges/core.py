"""Core NATS on the write side: ``pub`` and ``cmd`` (subscriptions go through the hub).

Every message the gateway sends for a client carries ``Natsgate-User``, set here and only
here, so services can trust who is asking (protocol.md §3).
"""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from ..errors import ErrorCode, ProtocolError
from ..upstream import flush

USER_HEADER = "Natsgate-User"


def identity_headers(user: str) -> dict[str, str]:
    return {USER_HEADER: user}


async def publish(nc: Client, subject: str, payload: bytes, user: str, *, confirm: bool) -> None:
    """Publish; with ``confirm``, return only once the NATS server has it."""
    if not nc.is_connected and confirm:
        raise ProtocolError(ErrorCode.INTERNAL, "NATS is unreachable; try again shortly")
    await nc.publish(subject, payload, headers=identity_headers(user))
    if confirm:
        try:
            await flush(nc, 5)
        except (TimeoutError, nats.errors.Error):
            raise ProtocolError(ErrorCode.INTERNAL, "NATS did not confirm the publish") from None


async def request(nc: Client, subject: str, payload: bytes, user: str, timeout_s: float) -> Msg:
    """A NATS request. Fails at once, not after its timeout, while NATS is away."""
    if not nc.is_connected:
        raise ProtocolError(ErrorCode.NO_RESPONDERS, "NATS is unreachable; try again shortly")
    try:
        return await nc.request(subject, payload, timeout=timeout_s, headers=identity_headers(user))
    except nats.errors.NoRespondersError:
        raise ProtocolError(ErrorCode.NO_RESPONDERS, f"no service answers on {subject}") from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise ProtocolError(
            ErrorCode.TIMEOUT, f"no reply within {round(timeout_s * 1000)} ms"
        ) from None
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.ConnectionDrainingError,
        nats.errors.StaleConnectionError,
    ):
        raise ProtocolError(
            ErrorCode.NO_RESPONDERS, "NATS connection lost during the request; try again"
        ) from None
