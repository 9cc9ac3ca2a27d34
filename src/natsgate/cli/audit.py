"""``natsgate audit [--kind K] [--user U] [--json]``: follow the audit trail in a terminal,
one line per event, until Ctrl-C (docs/deploy.md, "The audit trail")."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..audit import Kind
from ..config import Config
from .connect import with_nats
from .output import fail

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from ..upstream import Upstream


def add_parser(sub: Any, data_dir: Any) -> None:
    p = sub.add_parser("audit", help="follow the audit trail (logins, refusals, admin actions)")
    p.add_argument("--kind", choices=[k.value for k in Kind], default=None)
    p.add_argument("--user", default=None, help="only events of this user")
    p.add_argument("--json", action="store_true", help="each event as the JSON it came as")
    data_dir(p)


def line(event: dict[str, Any]) -> str:
    """``time gateway kind user address {detail}``; ``-`` for what an event has not."""
    detail = event.get("detail") or {}
    return " ".join(
        [
            str(event.get("time", "-")),
            str(event.get("gateway", "-")),
            str(event.get("kind", "-")),
            f"user={event.get('user') or '-'}",
            f"address={event.get('address') or '-'}",
            json.dumps(detail, separators=(",", ":"), ensure_ascii=False),
        ]
    )


def cmd_audit(args: argparse.Namespace) -> int:
    async def follow(up: Upstream, cfg: Config, where: str) -> int:
        if not cfg.audit_prefix:
            return fail("AUDIT_PREFIX is empty: the gateways publish no audit events")
        subject = f"{cfg.audit_prefix}.{args.kind or '>'}"
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        async def on_event(msg: Msg) -> None:
            try:
                event = json.loads(msg.data)
            except ValueError:
                return
            if not isinstance(event, dict):
                return
            if args.user is not None and event.get("user") != args.user:
                return
            text = msg.data.decode() if args.json else line(event)
            sys.stdout.write(text + "\n")  # one write per line
            sys.stdout.flush()

        await up.nc.subscribe(subject, cb=on_event)
        await up.nc.flush()
        print(f"following {subject} on {where} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        closed = asyncio.ensure_future(_closed(up))
        waiting = asyncio.ensure_future(stop.wait())
        await asyncio.wait({closed, waiting}, return_when=asyncio.FIRST_COMPLETED)
        for task in (closed, waiting):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not stop.is_set():
            return fail(f"lost the connection to {where}", 1)
        return 0

    return asyncio.run(with_nats(follow, Path(args.data_dir)))


async def _closed(up: Upstream) -> None:
    """Until the NATS connection is gone for good (the command's has no reconnects; a
    client made by ``connect_once`` takes no callback for it, so it is looked at)."""
    while not up.nc.is_closed:  # noqa: ASYNC110 - no event to wait on, see above
        await asyncio.sleep(0.5)
