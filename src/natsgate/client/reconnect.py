"""What the client does after each connection attempt ends: reconnect, after which delay,
only with a fresh token, or stop.

Pure: no I/O, no clock, randomness only through the ``rand`` argument.  The close codes'
actions are the gateway's own table (:func:`natsgate.errors.close_action`); this module
adds what a client must know besides the code: upgrade refusals (401, 403), whether a
token provider can mint a new token, the attempt counter and when it starts over.  The
run loop in ``connection.py`` calls :func:`decide` once per ended attempt and carries out
the :class:`Decision`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..errors import CLOSE_INFO, CloseAction, CloseCode, close_action


def backoff_delay(
    attempt: int, min_backoff: float, max_backoff: float, rand: float | None = None
) -> float:
    """Seconds before reconnect attempt ``attempt`` (0 for the first retry).

    Full jitter over an exponential window, with a floor: ``min + U(0, 1) * window`` where
    the window doubles per attempt up to ``max_backoff``; the result is capped at
    ``max_backoff``.  Jitter over the whole window spreads a crowd of clients dropped
    together by a restart; the floor keeps a flapping gateway from being hit at 0 ms.
    The browser library's ``backoffDelay`` is the same formula in milliseconds.
    """
    window = min(max_backoff, min_backoff * 2 ** min(max(attempt, 0), 30))
    r: float = random.random() if rand is None else rand
    return float(min(max_backoff, min_backoff + r * window))


# --------------------------------------------------------------------------- how an attempt ended


@dataclass(frozen=True, slots=True)
class Closed:
    """The socket closed with ``code`` (1006: it dropped without a close frame)."""

    code: int
    reason: str = ""
    open_for: float | None = None  # seconds it was OPEN; None: no cap_update came


@dataclass(frozen=True, slots=True)
class Refused:
    """The gateway answered the upgrade with HTTP ``status`` (401 token, 403 origin, 429,
    503, ...)."""

    status: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Unreachable:
    """No socket at all: refused connection, DNS, timeout, or the token_provider failed."""

    reason: str = ""


Outcome = Closed | Refused | Unreachable


# --------------------------------------------------------------------------- the decision


@dataclass(frozen=True, slots=True)
class Policy:
    """The client's options that bear on reconnecting (seconds)."""

    min_backoff: float = 0.25
    max_backoff: float = 10.0
    stable_after: float = 5.0  # a connection open this long starts the attempt count over
    fresh_tokens: bool = False  # a token_provider can mint a new token


@dataclass(frozen=True, slots=True)
class Retry:
    """What one decision hands the next; ``Retry()`` before the first attempt."""

    attempt: int = 0  # attempts since the last stable connection or 1012
    opened: bool = False  # a connection was OPEN once: a 401 now means an expired token
    token_retried: bool = False  # a 401/4001 made us ask for a new token; none opened since


class Verdict(enum.Enum):
    RECONNECT = "reconnect"  # dial again after ``delay``
    NEW_TOKEN = "new_token"  # dial again after ``delay``, with a token fresh from the provider
    STOP = "stop"  # give up: the client becomes CLOSED with ``error``


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    delay: float | None  # seconds before the next attempt; None with STOP
    retry: Retry  # for the next decision
    error: str = ""  # STOP: the NatsgateError code, ``unauthorized`` or ``forbidden``
    message: str = ""  # STOP: why, for people


def decide(
    outcome: Outcome,
    retry: Retry,
    policy: Policy,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """What to do after ``outcome`` (protocol.md §2 and §6; docs/python-client.md).

    Close codes follow :func:`~natsgate.errors.close_action`: STOP stops, AUTH (4001)
    reconnects only with a new token (stops without a provider), PROMPT reconnects after
    ``U(0, min_backoff)`` and starts the attempt count over, anything else (codes outside
    the table too) backs off by :func:`backoff_delay`.  A refused upgrade: 403 stops; 401
    stops on the first connect, without a provider, or when a new token was refused too,
    and otherwise asks for one new token.  After a connection that was OPEN, the next dial
    asks the provider (when there is one) for a new token.
    """
    lo = min(policy.min_backoff, policy.max_backoff)
    hi = policy.max_backoff
    new_token = False
    if isinstance(outcome, Closed) and outcome.open_for is not None:
        stable = outcome.open_for >= policy.stable_after
        retry = Retry(0 if stable else retry.attempt, opened=True)
        new_token = policy.fresh_tokens
    match outcome:
        case Refused(status=403, reason=reason):
            return _stop(retry, "forbidden", f"upgrade refused: {reason}")
        case Refused(status=401, reason=reason):
            if not retry.opened or not policy.fresh_tokens:
                return _stop(retry, "unauthorized", f"upgrade refused: {reason}")
            if retry.token_retried:
                return _stop(retry, "unauthorized", "fresh token refused")
            retry = replace(retry, token_retried=True)
            new_token = True
            action = CloseAction.BACKOFF
        case Closed(code=code, reason=reason):
            action = close_action(code)
            if action is CloseAction.STOP:
                why = reason or CLOSE_INFO[CloseCode(code)].meaning
                return _stop(retry, "forbidden", f"closed by the gateway ({code}): {why}")
            if action is CloseAction.AUTH:
                if not policy.fresh_tokens:
                    return _stop(retry, "unauthorized", reason or "token expired")
                retry = replace(retry, token_retried=True)
                new_token = True
        case _:  # another refusal, or unreachable
            action = CloseAction.BACKOFF
    if action is CloseAction.PROMPT:
        attempt, delay = 0, rand() * lo
    else:
        attempt, delay = retry.attempt, backoff_delay(retry.attempt, lo, hi, rand())
    verdict = Verdict.NEW_TOKEN if new_token else Verdict.RECONNECT
    return Decision(verdict, delay, replace(retry, attempt=attempt + 1))


def _stop(retry: Retry, error: str, message: str) -> Decision:
    return Decision(Verdict.STOP, None, retry, error, message)
