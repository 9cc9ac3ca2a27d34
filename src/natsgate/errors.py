"""The one table of error codes and close codes (contract sections 3 and 5).

Error codes travel in ``error`` envelopes; close codes end the WebSocket.  Each close code
says whether a client should reconnect, like centrifuge's ``disconnect.go``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorCode(enum.StrEnum):
    """Codes of the ``error`` envelope. After any but BACKPRESSURE and UNAUTHORIZED the
    connection stays open with all its subscriptions."""

    BAD_REQUEST = "bad_request"  # not JSON, unknown op, missing or mistyped field, bad subject
    UNSUPPORTED_VERSION = "unsupported_version"  # "v" other than 1
    UNAUTHORIZED = "unauthorized"  # token missing, invalid or expired
    FORBIDDEN = "forbidden"  # capabilities do not cover the request
    NOT_FOUND = "not_found"  # no such bucket or stream
    TIMEOUT = "timeout"  # a cmd got no reply in time
    NO_RESPONDERS = "no_responders"  # nobody listens on the cmd subject (or NATS is away)
    LIMIT = "limit"  # too many subscriptions or pending commands, frame too large, too fast
    BACKPRESSURE = "backpressure"  # the client reads too slowly; the socket is closed next
    INTERNAL = "internal"  # the gateway failed; details are in its log, never on the wire


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway uses."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002  # a frame that breaks RFC 6455 (unmasked, reserved bits, ...)
    INVALID_DATA = 1007  # a close reason that is not UTF-8
    POLICY = 1008  # refused by policy (e.g. origin); do not reconnect unchanged
    TOO_BIG = 1009  # a frame over MAX_FRAME_BYTES
    INTERNAL = 1011
    RESTART = 1012  # the gateway is stopping: reconnect (elsewhere) now
    TRY_AGAIN_LATER = 1013  # backpressure: reconnect after a backoff
    UNAUTHORIZED = 4001  # token expired or revoked: get a new token before reconnecting
    NO_PONG = 4002  # missed the server's pings: reconnect


@dataclass(frozen=True, slots=True)
class CloseInfo:
    reason: str
    reconnect: bool


CLOSE_INFO: dict[CloseCode, CloseInfo] = {
    CloseCode.NORMAL: CloseInfo("normal closure", reconnect=False),
    CloseCode.GOING_AWAY: CloseInfo("going away", reconnect=True),
    CloseCode.PROTOCOL_ERROR: CloseInfo("protocol error", reconnect=False),
    CloseCode.INVALID_DATA: CloseInfo("invalid data", reconnect=False),
    CloseCode.POLICY: CloseInfo("policy violation", reconnect=False),
    CloseCode.TOO_BIG: CloseInfo("frame too large", reconnect=True),
    CloseCode.INTERNAL: CloseInfo("internal error", reconnect=True),
    CloseCode.RESTART: CloseInfo("server restart", reconnect=True),
    CloseCode.TRY_AGAIN_LATER: CloseInfo("slow consumer", reconnect=True),
    CloseCode.UNAUTHORIZED: CloseInfo("unauthorized", reconnect=False),
    CloseCode.NO_PONG: CloseInfo("ping timeout", reconnect=True),
}


class ProtocolError(Exception):
    """A client op that cannot be carried out; becomes one ``error`` envelope.

    ``message`` is for people and never carries internal details.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        inbox: str | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.inbox = inbox
        self.target = target
