"""The one table of error codes and close codes (protocol.md §3 and §6).

Error codes travel in ``error`` envelopes; close codes end the WebSocket.  Each close code
says whether a client should reconnect, like centrifuge's ``disconnect.go``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


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
    """WebSocket close codes: those the gateway sends, and CLIENT_TIMEOUT, which only the
    clients send (when they drop a socket themselves)."""

    NORMAL = 1000  # answers a close the peer started; never ends a live connection
    GOING_AWAY = 1001  # the socket failed under the gateway (a write), or it is stopping
    PROTOCOL_ERROR = 1002  # a frame that breaks RFC 6455 (unmasked, reserved bits, ...)
    INVALID_DATA = 1007  # a text message or close reason that is not UTF-8
    POLICY = 1008  # refused by policy; reconnecting unchanged cannot help
    TOO_BIG = 1009  # a message over MAX_FRAME_BYTES
    INTERNAL = 1011  # the gateway failed
    RESTART = 1012  # the gateway is stopping: reconnect (elsewhere) now
    TRY_AGAIN_LATER = 1013  # backpressure, unfinished input, input budget: back off
    CLIENT_TIMEOUT = 4000  # the clients' own: no cap_update or no pong in time
    UNAUTHORIZED = 4001  # token expired or revoked: get a new token before reconnecting
    NO_PONG = 4002  # missed the server's pings: reconnect
    ADMIN_DISCONNECT = 4003  # an administrator closed the connection: do not come back


class CloseAction(enum.Enum):
    """What a client does after the socket closed with a given code."""

    BACKOFF = "backoff"  # reconnect after a growing, jittered delay
    PROMPT = "prompt"  # reconnect at once (with a little jitter), backoff reset
    AUTH = "auth"  # the token is no good: reconnect only with a fresh one
    STOP = "stop"  # do not reconnect


@dataclass(frozen=True, slots=True)
class CloseInfo:
    meaning: str
    action: CloseAction

    @property
    def reconnect(self) -> bool:
        """Whether a client comes back at all (AUTH: only with a new token)."""
        return self.action is not CloseAction.STOP


_B, _P, _A, _S = CloseAction.BACKOFF, CloseAction.PROMPT, CloseAction.AUTH, CloseAction.STOP

CLOSE_INFO: Final[Mapping[CloseCode, CloseInfo]] = MappingProxyType(
    {
        # The browser library (client/natsgate/errors.js, CLOSE_CODES) repeats this table word
        # for word; tests/test_close_codes.py holds the two together.
        CloseCode.NORMAL: CloseInfo("normal closure", _B),
        CloseCode.GOING_AWAY: CloseInfo("going away", _B),
        CloseCode.PROTOCOL_ERROR: CloseInfo("protocol error", _B),
        CloseCode.INVALID_DATA: CloseInfo("invalid data: not UTF-8", _B),
        CloseCode.POLICY: CloseInfo("policy violation", _S),
        CloseCode.TOO_BIG: CloseInfo("message too big", _B),
        CloseCode.INTERNAL: CloseInfo("internal error", _B),
        CloseCode.RESTART: CloseInfo("gateway restart: reconnect elsewhere now", _P),
        CloseCode.TRY_AGAIN_LATER: CloseInfo(
            "try again later: the client was too slow, or the gateway is full", _B
        ),
        CloseCode.CLIENT_TIMEOUT: CloseInfo("closed by the client: no cap_update or pong", _B),
        CloseCode.UNAUTHORIZED: CloseInfo("unauthorized: the token expired or was revoked", _A),
        CloseCode.NO_PONG: CloseInfo("no pong: the server's pings went unanswered", _B),
        CloseCode.ADMIN_DISCONNECT: CloseInfo("disconnected by an administrator", _S),
    }
)
"""Every close code with its meaning and what a client does after it.

Why these actions (Centrifugo's model: only a code that says "stop" stops a client):

- 1000: the gateway sends it only to answer a close the client started, so a client that
  did not ask got it from something in between (a proxy); giving up for good would leave
  a page silently dead, so it backs off and retries.
- 1002, 1007: our clients cannot send what earns them (browsers and aiohttp frame and
  encode every message), so one means a broken proxy or a gateway bug; retrying with a
  growing delay recovers from the first and costs the second little.
- 1009: the message that was too big was one message; the next connection may well not
  send it again.
- 1008, 4003: the gateway (or its administrator) does not want this client back as it
  is; it stops, and the application decides (reload, sign in again).
"""


def close_action(code: int | None) -> CloseAction:
    """What to do after close ``code``; None or a code not in the table (1006: the socket
    dropped without a close frame, a proxy's own code) means BACKOFF."""
    try:
        return CLOSE_INFO[CloseCode(code or 1006)].action
    except ValueError:
        return CloseAction.BACKOFF


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
