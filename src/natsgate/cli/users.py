"""``natsgate user add | caps | revoke`` (on the NATS server's buckets) and ``natsgate
token``: the operator's commands, each one short connection to NATS or none."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..auth import USER_ID_RE, USER_ID_RULE, Passwords, mint_token
from ..capabilities import Capabilities
from ..config import Config, ConfigError, Flags, check_secret, load
from ..natsrunner import ENV_FILE, read_env_file
from .output import fail, log

if TYPE_CHECKING:
    from ..upstream import Upstream


def _nats_env(data_dir: Path) -> tuple[dict[str, str], str]:
    """The environment the user commands load their config from, and the NATS server it
    names, for their output. Without ``NATS_URL``, the file an embedded server of
    ``serve --local`` wrote under the same ``--data-dir`` (its URL and its one user)."""
    env = dict(os.environ)
    path = data_dir / ENV_FILE
    if not env.get("NATS_URL") and path.is_file():
        for name in ("NATS_CREDS", "NATS_JWT", "NATS_NKEY"):
            env.pop(name, None)  # the file's user, not these
        try:
            env.update(read_env_file(path))
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        return env, f"the embedded nats-server at {env.get('NATS_URL')} (credentials in {path})"
    url = env.get("NATS_URL") or Config().nats_url
    return env, "NATS at " + re.sub(r"//[^@/,]*@", "//", url)  # no password in the output


async def _with_nats(action: object, data_dir: Path) -> int:
    from ..metrics import Metrics
    from ..upstream import Upstream

    try:
        env, where = _nats_env(data_dir)
        cfg = load(Flags(local=True), env)  # no JWT_SECRET needed to manage users
    except ConfigError as exc:
        return fail(str(exc))
    up = Upstream(cfg, Metrics())
    try:
        await up.connect_once()  # with NATS_CREDS, NATS_JWT + NATS_NKEY or a user, like serve
    except Exception as exc:
        return fail(f"cannot connect to {where}: {exc}", 1)
    try:
        return await action(up, cfg, where)  # type: ignore[operator, no-any-return]
    finally:
        await up.nc.close()


def _read_caps(path: str) -> bytes:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read capabilities file {path}: {exc.strerror}") from None
    try:
        json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"capabilities file {path} is not JSON: {exc}") from None
    if Capabilities.parse(raw).to_json() == Capabilities().to_json() and raw.strip() not in (
        b"{}",
    ):
        log.warning("capabilities file %s grants nothing", path)
    return raw


def cmd_user(args: argparse.Namespace) -> int:
    from ..capstore import ensure_bucket
    from ..revocations import write_user

    if not USER_ID_RE.match(args.id):
        return fail(f"invalid user id {args.id!r}: {USER_ID_RULE}")
    try:
        caps = _read_caps(args.caps) if getattr(args, "caps", None) else None
    except ConfigError as exc:
        return fail(str(exc))
    if args.action == "add":
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            return fail("give the password on standard input")

    async def act(up: Upstream, cfg: Config, where: str) -> int:
        # validate_keys off: a user id is any one subject token (auth0|42, ü), which
        # nats-py's stricter key pattern would refuse although NATS takes it
        if args.action == "add":
            creds = await ensure_bucket(up, cfg.auth_creds_bucket)
            hashed = Passwords(cfg.web_hash_salt).hash(password).encode()
            await creds.put(args.id, hashed, validate_keys=False)
            print(f"user {args.id} added on {where}")
        if args.action == "revoke":
            kv = await ensure_bucket(up, cfg.auth_revoked_bucket, ttl_markers=True)
            await write_user(kv, args.id, time.time())
            print(f"every token of {args.id} issued before now is revoked on {where}")
        if caps is not None:
            kv = await ensure_bucket(up, cfg.auth_bucket)
            await kv.put(args.id, caps, validate_keys=False)
            print(f"capabilities of {args.id} set on {where}")
        return 0

    return asyncio.run(_with_nats(act, Path(args.data_dir)))


_TTL = re.compile(r"^(\d+)([smhd]?)$")


def parse_ttl(text: str) -> int:
    m = _TTL.match(text.strip())
    if not m:
        raise ConfigError(f"--ttl must look like 90s, 15m, 1h or 7d, got {text!r}")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def cmd_token(args: argparse.Namespace) -> int:
    secret = os.environ.get("JWT_SECRET")
    if not secret:
        return fail("JWT_SECRET is required to sign a token")
    try:
        check_secret(secret)
        ttl = parse_ttl(args.ttl)
    except ConfigError as exc:
        return fail(str(exc))
    if not USER_ID_RE.match(args.id):
        return fail(f"invalid user id {args.id!r}: {USER_ID_RULE}")
    print(mint_token(args.id, secret, ttl))
    return 0
