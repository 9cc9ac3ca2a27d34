"""``natsgate user add | passwd | caps | show | list | rm | revoke``: the operator's commands
on the NATS server's buckets, each one short connection (see :mod:`.connect`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..auth import USER_ID_RE, USER_ID_RULE, Passwords
from ..capabilities import Capabilities, CapabilitiesError
from ..config import Config, ConfigError
from .connect import with_nats
from .output import fail, log

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from ..upstream import Upstream


def read_caps(path: str) -> bytes:
    """The file as it will be stored, once :meth:`Capabilities.validate` took it."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read capabilities file {path}: {exc.strerror}") from None
    try:
        caps = Capabilities.validate(raw)
    except CapabilitiesError as exc:
        raise ConfigError(f"capabilities file {path}: {exc}") from None
    if caps == Capabilities():
        log.warning("capabilities file %s grants nothing", path)
    return raw


async def _get(kv: KeyValue, key: str) -> bytes | None:
    from nats.js.errors import NotFoundError

    try:
        entry = await kv.get(key, validate_keys=False)
    except NotFoundError:  # never written, or deleted
        return None
    return entry.value or None


async def _keys(kv: KeyValue) -> set[str]:
    from nats.js.errors import NoKeysError

    try:
        return set(await kv.keys())
    except NoKeysError:
        return set()


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Buckets:
    """The three buckets a user lives in, made when missing (as the gateway does)."""

    def __init__(self, up: Upstream, cfg: Config) -> None:
        self.up, self.cfg = up, cfg

    async def creds(self) -> KeyValue:
        from ..capstore import ensure_bucket

        return await ensure_bucket(self.up, self.cfg.auth_creds_bucket)

    async def caps(self) -> KeyValue:
        from ..capstore import ensure_bucket

        return await ensure_bucket(self.up, self.cfg.auth_bucket)

    async def revoke(self, user: str) -> None:
        """Every token of ``user`` issued before now is void, on every gateway."""
        from ..capstore import ensure_bucket
        from ..revocations import write_user

        kv = await ensure_bucket(self.up, self.cfg.auth_revoked_bucket, ttl_markers=True)
        await write_user(kv, user, time.time())

    async def revoked_before(self, user: str) -> float | None:
        from ..capstore import ensure_bucket
        from ..revocations import user_key

        kv = await ensure_bucket(self.up, self.cfg.auth_revoked_bucket, ttl_markers=True)
        raw = await _get(kv, user_key(user))
        try:
            return float(json.loads(raw)["before"]) if raw else None
        except (ValueError, KeyError, TypeError):
            return None


def _password(args: argparse.Namespace) -> str | None:
    """One line from standard input; at a terminal, asked for twice without echo."""
    if args.action not in ("add", "passwd"):
        return None
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass(f"password for {args.id}: ")
    if first and getpass.getpass("again: ") != first:
        raise ConfigError("the two passwords differ")
    return first


def cmd_user(args: argparse.Namespace) -> int:
    user: str | None = getattr(args, "id", None)
    if user is not None and not USER_ID_RE.match(user):
        return fail(f"invalid user id {user!r}: {USER_ID_RULE}")
    try:
        caps = read_caps(args.caps) if getattr(args, "caps", None) else None
    except ConfigError as exc:
        return fail(str(exc))
    try:
        password = _password(args)
    except ConfigError as exc:
        return fail(str(exc))
    if password == "":
        return fail("give the password on standard input")

    async def act(up: Upstream, cfg: Config, where: str) -> int:
        b = _Buckets(up, cfg)
        match args.action:
            case "list":
                return await _list(b, where)
            case "show":
                assert user is not None
                return await _show(b, user, where)
        assert user is not None
        # validate_keys off: a user id is any one subject token (auth0|42, ü), which
        # nats-py's stricter key pattern would refuse although NATS takes it
        match args.action:
            case "add":
                creds = await b.creds()
                existed = await _get(creds, user) is not None
                if existed and not args.force:
                    return fail(
                        f"user {user} exists on {where}; use natsgate user passwd {user} "
                        "(or user add --force)",
                        1,
                    )
                await creds.put(user, _hash(cfg, password), validate_keys=False)
                if existed:  # --force: a new password, as passwd
                    await b.revoke(user)
                print(f"user {user} {'replaced' if existed else 'added'} on {where}")
            case "passwd":
                creds = await b.creds()
                if await _get(creds, user) is None:
                    return fail(f"no user {user} on {where}; use natsgate user add {user}", 1)
                await creds.put(user, _hash(cfg, password), validate_keys=False)
                await b.revoke(user)
                print(
                    f"password of {user} changed on {where}; every token issued before now "
                    "is revoked"
                )
            case "revoke":
                await b.revoke(user)
                print(f"every token of {user} issued before now is revoked on {where}")
            case "rm":
                return await _rm(b, user, where)
        if caps is not None:
            kv = await b.caps()
            await kv.put(user, caps, validate_keys=False)
            print(f"capabilities of {user} set on {where}")
        return 0

    return asyncio.run(with_nats(act, Path(args.data_dir)))


def _hash(cfg: Config, password: str | None) -> bytes:
    assert password is not None
    return Passwords(cfg.web_hash_salt).hash(password).encode()


async def _list(b: _Buckets, where: str) -> int:
    with_password = await _keys(await b.creds())
    with_caps = await _keys(await b.caps())
    for user in sorted(with_password | with_caps):
        password = "password" if user in with_password else "no password"
        caps = "capabilities" if user in with_caps else "no capabilities"
        print(f"{user}\t{password}\t{caps}")
    n = len(with_password | with_caps)
    print(f"{n} user{'' if n == 1 else 's'} on {where}", file=sys.stderr)
    return 0


async def _show(b: _Buckets, user: str, where: str) -> int:
    """The password's presence (never its hash), the capabilities as stored, revocations."""
    hashed = await _get(await b.creds(), user)
    raw = await _get(await b.caps(), user)
    if hashed is None and raw is None:
        return fail(f"no user {user} on {where}", 1)
    print(f"user {user} on {where}")
    print(f"password: {'set' if hashed else 'not set (no login; tokens only)'}")
    before = await b.revoked_before(user)
    if before is not None:
        print(f"tokens issued before {_when(before)} are revoked")
    if raw is None:
        print("capabilities: none (grants nothing)")
        return 0
    try:
        doc = Capabilities.validate(raw).to_json()
    except CapabilitiesError as exc:
        print(f"capabilities do not validate ({exc}); the gateway grants what it can read:")
        doc = Capabilities.parse(raw).to_json()
    print("capabilities: " + json.dumps(doc, indent=2, ensure_ascii=False))
    return 0


async def _rm(b: _Buckets, user: str, where: str) -> int:
    """Password, capabilities (a deleted key revokes everything at once, on every gateway)
    and every token issued until now."""
    creds, caps = await b.creds(), await b.caps()
    had = [await _get(creds, user) is not None, await _get(caps, user) is not None]
    if not any(had):
        return fail(f"no user {user} on {where}", 1)
    if had[0]:
        await creds.delete(user, validate_keys=False)
    if had[1]:
        await caps.delete(user, validate_keys=False)
    await b.revoke(user)
    print(f"user {user} removed on {where}: password, capabilities and tokens revoked")
    return 0
