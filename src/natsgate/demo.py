"""``natsgate demo``: the data and services the demo page needs (deploy.md).

Users ``alice`` and ``bob``; streams ``CHAT`` and ``NOTIFY`` (each user's notifications,
``notify.<user>``, read through a durable: docs/protocol.md, "Durable subscriptions and
acknowledgements"); bucket ``todos``; services ``svc.echo`` (the request payload back,
unchanged) and ``svc.todos.*`` (writes the caller's todos, trusting the gateway's
``Natsgate-User`` header). The chat room's page joins its presence (who is online) and
says who is typing on ``chat.typing.<room>``, plain publish/subscribe that no stream keeps.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError

from .auth import Passwords
from .bridges.core import USER_HEADER
from .capstore import ensure_bucket
from .upstream import Upstream

log = logging.getLogger("natsgate.demo")

USERS = ("alice", "bob")
DEMO_BUCKET = "todos"
NOTIFY_STREAM = "NOTIFY"
NOTIFY_MAX_AGE_S = 86_400.0  # a notification nobody read in a day is gone
NOTIFY_MAX_PER_USER = 1_000  # messages kept per notify.<user> subject


def demo_caps(user: str) -> dict[str, Any]:
    return {
        # chat.> covers the rooms, their presence (read) and chat.typing.<room>
        "subjects": ["chat.>"],
        # anyone with this grant may notify the user: the stream stores a plain publish
        "publish": ["chat.>", f"notify.{user}"],
        "commands": ["svc.echo", "svc.todos.*"],
        "buckets": {DEMO_BUCKET: [f"user.{user}.>"]},
        # one's own notifications only: a durable's filter must be covered by the grant
        "streams": {"CHAT": ["chat.room.*"], NOTIFY_STREAM: [f"notify.{user}"]},
        # joining a room's presence: shown as online there
        "presence": ["chat.room.*"],
    }


async def seed(
    upstream: Upstream, caps_bucket: str, creds_bucket: str, password: str, pepper: str
) -> None:
    """Create (or update) the demo users, stream and bucket. Safe to run again."""
    js = upstream.js
    caps_kv = await ensure_bucket(upstream, caps_bucket)
    creds_kv = await ensure_bucket(upstream, creds_bucket)
    hasher = Passwords(pepper)
    for user in USERS:
        await caps_kv.put(user, json.dumps(demo_caps(user)).encode())
        await creds_kv.put(user, hasher.hash(password).encode())
    streams = [
        StreamConfig(name="CHAT", subjects=["chat.room.*"], max_msgs_per_subject=10_000),
        StreamConfig(
            name=NOTIFY_STREAM,
            subjects=["notify.>"],
            max_age=NOTIFY_MAX_AGE_S,
            max_msgs_per_subject=NOTIFY_MAX_PER_USER,
        ),
    ]
    for cfg in streams:
        try:
            await js.stream_info(cfg.name or "")
        except NotFoundError:
            await js.add_stream(cfg)
    try:
        await js.key_value(DEMO_BUCKET)
    except Exception:
        await js.create_key_value(bucket=DEMO_BUCKET, history=5)


def demo_password(env_value: str | None) -> tuple[str, bool]:
    """``DEMO_PASSWORD`` or a fresh random one (then True: print it)."""
    if env_value:
        return env_value, False
    return secrets.token_urlsafe(9), True


class Services:
    """The demo's request/reply services, on a NATS connection of their own."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc

    async def start(self) -> None:
        js = self.nc.jetstream()
        self.kv = await js.key_value(DEMO_BUCKET)
        await self.nc.subscribe("svc.echo", cb=self._echo, queue="svc.echo")
        await self.nc.subscribe("svc.todos.*", cb=self._todos, queue="svc.todos")
        await self.nc.flush()

    async def _echo(self, msg: Msg) -> None:
        await msg.respond(msg.data)

    async def _todos(self, msg: Msg) -> None:
        user = (msg.headers or {}).get(USER_HEADER)
        action = msg.subject.rsplit(".", 1)[-1]
        try:
            if not user:
                raise ValueError("no Natsgate-User header: call through the gateway")
            body = json.loads(msg.data or b"{}")
            if not isinstance(body, dict):
                raise ValueError("payload must be a JSON object")
            result = await self._apply(user, action, body)
        except (ValueError, KeyError, json.JSONDecodeError, BadRequestError) as exc:
            result = {"ok": False, "error": str(exc)}
        except KeyNotFoundError:
            result = {"ok": False, "error": "no such todo"}
        await msg.respond(json.dumps(result).encode())

    async def _apply(self, user: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        prefix = f"user.{user}."
        if action == "add":
            text = str(body.get("text", "")).strip()
            if not text or len(text) > 500:
                raise ValueError("text must be 1 to 500 characters")
            todo_id = f"{int(time.time() * 1000):x}{secrets.token_hex(3)}"
            todo = {"id": todo_id, "text": text, "done": False}
            await self.kv.put(prefix + todo_id, json.dumps(todo).encode())
            return {"ok": True, "todo": todo}
        todo_id = str(body.get("id", ""))
        if not todo_id.isalnum():
            raise ValueError("id is required")
        key = prefix + todo_id
        if action == "toggle":
            entry = await self.kv.get(key)
            todo = json.loads(entry.value or b"{}")
            todo["done"] = not todo.get("done", False)
            await self.kv.update(key, json.dumps(todo).encode(), last=entry.revision)
            return {"ok": True, "todo": todo}
        if action == "delete":
            await self.kv.delete(key)
            return {"ok": True}
        raise ValueError(f"unknown action {action!r}; use add, toggle or delete")
