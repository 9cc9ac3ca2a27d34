"""nats-py's client, with subscriptions whose messages are handed over as they are read.

nats-py gives every subscription with a callback a queue and a task: each message is
put on the queue, the task wakes, takes it and awaits the callback. For the hub, whose
callback only encodes a frame and appends it to outboxes (it never awaits), that costs
about half the CPU of taking a message from NATS (4.4 vs 2.3 µs per message on 1,000
distinct subjects, measured here with nats-py 2.16). A *direct* subscription skips both:
the message goes to a plain function from nats-py's reader, in the order it was read.

This overrides nats-py's private ``Client._process_msg``. Where its signature is not the
one this was written against, :func:`supported` is false and direct subscriptions fall
back to nats-py's callbacks (the same messages, the slower way).

The client also reads in larger rounds: nats-py stops reading its socket at 64 KiB
buffered, so a backlog from NATS was handed over some 500 messages per event loop step,
and each step ends with one write per connection that got anything (outbox.py). With up
to :data:`READ_LIMIT` read per step, a connection that gets many messages while the
gateway is behind gets them in one frame: on 1,000 distinct subjects that cut the
gateway's CPU per delivery from 7.5 to 4.6 µs (docs/benchmarks.md). An idle gateway
is unchanged: a step reads what is there.

But a step that handles 2 MiB holds the event loop for tens of milliseconds, and every
other connection's ``ping`` or ``pub`` waited for it (a client's ping under that load:
106 ms at p50, 34 before). So the reader hands the loop back every :data:`READ_SLICE`
bytes while more is waiting, and says meanwhile that it is :attr:`Client.behind`: the
flusher (``outbox.py``) then writes only the connections that have an answer waiting
and keeps the fan-out back until the backlog is read or for ``Flusher.max_hold_s``, so
the batches stay large and the answers come within a slice.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable

from nats import errors
from nats.aio.client import DEFAULT_BUFFER_SIZE
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger("natsgate.directsub")

# subject, payload, headers (None when the message has none)
Deliver = Callable[[str, bytes, dict[str, str] | None], None]

_EXPECTED = ("self", "sid", "subject", "reply", "data", "headers")

# bytes buffered from NATS before reading pauses: asyncio pauses at twice a StreamReader's
# limit, so a step handles at most about 2 MiB (some 15,000 messages, ~50 ms of work)
READ_LIMIT = 1 << 20
READ_SLICE = 256 << 10  # handled before the event loop gets a turn, while more is waiting


def supported() -> bool:
    """Whether this nats-py has the private hook, as this module knows it."""
    hook = getattr(NatsClient, "_process_msg", None)
    if hook is None or not inspect.iscoroutinefunction(hook):
        return False
    for name in ("_process_headers", "_read_loop", "_process_op_err"):
        if not inspect.iscoroutinefunction(getattr(NatsClient, name, None)):
            return False
    return tuple(inspect.signature(hook).parameters) == _EXPECTED


SUPPORTED = supported()


class Client(NatsClient):
    """A nats-py client that can also make direct subscriptions."""

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, Deliver] = {}
        self.behind = False  # more was waiting when the reader last gave the loop a turn

    async def _read_loop(self) -> None:
        """nats-py's reader (2.16), but it gives the event loop a turn every READ_SLICE
        bytes while more is buffered (a full read says so), and tells it (``behind``)."""
        if not SUPPORTED:
            await super()._read_loop()
            return
        sliced = 0
        while True:
            try:
                if self.is_closed or self.is_reconnecting or self._transport is None:
                    break
                if self._transport.at_eof():
                    err = errors.UnexpectedEOF()
                    await self._error_cb(err)
                    await self._process_op_err(err)
                    break
                b = await self._transport.read(DEFAULT_BUFFER_SIZE)
                await self._ps.parse(b)
                if len(b) < DEFAULT_BUFFER_SIZE:  # read all there was
                    sliced = 0
                    self.behind = False
                elif (sliced := sliced + len(b)) >= READ_SLICE:
                    sliced = 0
                    self.behind = True
                    await asyncio.sleep(0)
            except errors.ProtocolError:
                await self._process_op_err(errors.ProtocolError())
                break
            except OSError as e:
                await self._process_op_err(e)
                break
            except asyncio.CancelledError:
                break
            except Exception:
                log.exception("nats: encountered error")
                break
        self.behind = False

    async def _process_connect_init(self) -> None:
        """nats-py's (re)connect, after which its reader is widened (READ_LIMIT)."""
        await super()._process_connect_init()
        widen(self._transport)

    async def subscribe_direct(
        self, subject: str, deliver: Deliver, *, fallback: bool = not SUPPORTED
    ) -> Subscription:
        """Subscribe; ``deliver`` is called for each message, synchronously, and must not
        raise (what it raises is logged and the message dropped)."""
        if fallback:

            async def cb(msg: Msg) -> None:
                deliver(msg.subject, msg.data, msg.headers)

            return await self.subscribe(subject, cb=cb)
        sub = await self.subscribe(subject)  # no callback: nats-py starts no task for it
        self._direct[sub._id] = deliver
        return sub

    async def unsubscribe_direct(self, sub: Subscription) -> None:
        self._direct.pop(sub._id, None)
        await sub.unsubscribe()

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        deliver = self._direct.get(sid)
        if deliver is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        if sid not in self._subs:  # unsubscribed meanwhile
            self._direct.pop(sid, None)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        hdr = await self._process_headers(headers) if headers else None
        try:
            deliver(subject.decode(), data, hdr)
        except Exception:  # never into nats-py's reader, which would drop the connection
            log.exception("delivering a message on %r", subject)


def widen(transport: object) -> bool:
    """Let the stream nats-py reads from buffer up to :data:`READ_LIMIT` (private to
    nats-py and asyncio both: where either differs, nothing changes and False)."""
    reader = getattr(transport, "_io_reader", None)
    if not isinstance(reader, asyncio.StreamReader):
        return False
    if not isinstance(getattr(reader, "_limit", None), int):
        return False
    reader._limit = max(reader._limit, READ_LIMIT)  # type: ignore[attr-defined]
    return True
