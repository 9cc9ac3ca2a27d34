"""``natsgate check``: would ``serve`` start, and with what? The configuration as serve
loads it, one bounded connection to NATS, JetStream, the gateway's buckets and the
capability documents in them. A few lines; exit 0 when all is well, 1 when something is
not (2: the configuration itself, as for serve)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from ..capabilities import Capabilities, CapabilitiesError
from ..config import Config
from .connect import with_nats

if TYPE_CHECKING:
    from ..upstream import Upstream

MAX_LISTED = 5  # invalid capability documents named; the rest are counted


def front_end(cfg: Config) -> str:
    """What the gateway serves at ``/`` (also logged by serve at start)."""
    if cfg.proxy:
        return f"forwarded to the dev server at {cfg.proxy}"
    if not cfg.serve_static:
        return "none (STATIC_DIR=none or --no-static: / answers 404)"
    if cfg.static_dir is not None:
        return f"the files of {cfg.static_dir.resolve()}"
    return "the built-in demo (set STATIC_DIR or --static DIR for your app)"


def cmd_check(args: argparse.Namespace) -> int:
    async def act(up: Upstream, cfg: Config, where: str) -> int:
        return await _check(up, cfg, where)

    return asyncio.run(with_nats(act, Path(args.data_dir), strict=True))


async def _check(up: Upstream, cfg: Config, where: str) -> int:
    from nats.js.errors import NotFoundError

    problems = 0
    print(f"config: ok; would listen on {cfg.host}:{cfg.port}")
    print(f"front end: {front_end(cfg)}")
    if cfg.static_dir is not None and not (cfg.static_dir / "index.html").is_file():
        print(f"  note: {cfg.static_dir} has no index.html (/ would answer 404)")
    v = up.nc.connected_server_version
    print(f"NATS: connected to {where} (nats-server {v.major}.{v.minor}.{v.patch})")
    try:
        info = await up.js.account_info()
    except Exception as exc:
        print(f"JetStream: not available ({exc or type(exc).__name__}); the gateway needs it")
        return 1
    room = info.limits.max_streams - info.streams if info.limits.max_streams >= 0 else None
    print(f"JetStream: on ({info.streams} streams in this account)")
    missing = 0
    for label, name in (
        ("capabilities", cfg.auth_bucket),
        ("passwords", cfg.auth_creds_bucket),
        ("revocations", cfg.auth_revoked_bucket),
        ("presence", cfg.presence_bucket),
    ):
        try:
            kv = await up.js.key_value(name)
            values = (await kv.status()).values
            print(f"bucket {name} ({label}): exists, {values} entries")
        except NotFoundError:
            missing += 1
            print(f"bucket {name} ({label}): missing; serve creates it at start")
    if room is not None and missing > room:
        problems += 1
        print(f"  problem: the account may make {room} more streams, {missing} are needed")
    problems += await _check_caps(up, cfg.auth_bucket)
    print("ok" if problems == 0 else f"{problems} problem{'s' if problems > 1 else ''}")
    return 0 if problems == 0 else 1


async def _check_caps(up: Upstream, bucket: str) -> int:
    """Every stored capability document through the strict validator."""
    from nats.js.errors import NoKeysError, NotFoundError

    try:
        kv = await up.js.key_value(bucket)
        keys = await kv.keys()
    except (NotFoundError, NoKeysError):
        return 0
    bad: list[str] = []
    for user in sorted(keys):
        try:
            entry = await kv.get(user, validate_keys=False)
            Capabilities.validate(entry.value or b"")
        except NotFoundError:
            continue
        except CapabilitiesError as exc:
            bad.append(f"{user}: {exc}")
    if not bad:
        print(f"capabilities: {len(keys)} documents, all valid")
        return 0
    print(f"capabilities: {len(bad)} of {len(keys)} documents do not validate (the gateway")
    print("  ignores what it cannot read; fix with natsgate user caps ID FILE):")
    for line in bad[:MAX_LISTED]:
        print(f"  {line}")
    if len(bad) > MAX_LISTED:
        print(f"  ... and {len(bad) - MAX_LISTED} more")
    return 1
