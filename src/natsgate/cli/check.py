"""``natsgate check``: would ``serve`` (with the same flags) start, and with what? The
configuration as serve loads it, one bounded fetch of the identity provider's key set, one
bounded connection to NATS, JetStream, the gateway's buckets and the capability documents
in them. A few lines; exit 0 when all is well, 1 when something is
not (2: the configuration itself, as for serve)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..capabilities import Capabilities, CapabilitiesError
from ..config import Config, ConfigError, Flags, load
from .args import serve_env, serve_flags
from .connect import local_env, with_nats
from .output import fail

if TYPE_CHECKING:
    from ..upstream import Upstream

MAX_LISTED = 5  # invalid capability documents named; the rest are counted
JWKS_TIMEOUT_S = 4.0  # one fetch of JWT_JWKS_URL, connect to last byte


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
    flags, env = serve_flags(args), serve_env(args, os.environ)
    data_dir = Path(args.data_dir) if args.data_dir else Config().data_dir
    try:
        embedded = flags.local and local_env(data_dir) is None
    except ConfigError as exc:
        return fail(str(exc))
    if embedded:  # serve --local would start its own server: nothing to connect to yet
        return asyncio.run(_check_embedded(flags, env))

    async def act(up: Upstream, cfg: Config, where: str) -> int:
        return await _check(up, cfg, where)

    return asyncio.run(with_nats(act, data_dir, flags=flags, env=env))


def _check_config(cfg: Config) -> None:
    workers = f" ({cfg.workers} processes)" if cfg.workers > 1 else ""
    print(f"config: ok; would listen on {cfg.host}:{cfg.port}{workers}")
    print(f"front end: {front_end(cfg)}")
    if cfg.static_dir is not None and not (cfg.static_dir / "index.html").is_file():
        print(f"  note: {cfg.static_dir} has no index.html (/ would answer 404)")


async def _check_jwks(cfg: Config) -> int:
    """One bounded fetch of ``JWT_JWKS_URL``, as the gateway makes at start: 1 when it
    fails (the gateway would refuse every token of the identity provider)."""
    if cfg.jwt_jwks_url is None:
        return 0
    import jwt

    from ..jwks import FetchError, KeySet, usable

    url = cfg.jwt_jwks_url
    keyset = KeySet(url)
    keyset.timeout_s = JWKS_TIMEOUT_S
    try:
        keys = usable(jwt.PyJWKSet.from_dict(await keyset.download()))
    except (FetchError, jwt.PyJWTError, ValueError, TypeError, AttributeError) as exc:
        print(f"JWKS: cannot fetch the key set from {url}: {exc or type(exc).__name__}")
        return 1
    if not keys:
        print(f"JWKS: the key set at {url} holds no signing key the gateway can use")
        return 1
    print(f"JWKS: {len(keys)} signing key{'s' if len(keys) > 1 else ''} from {url}")
    return 0


def _verdict(problems: int) -> int:
    print("ok" if problems == 0 else f"{problems} problem{'s' if problems > 1 else ''}")
    return 0 if problems == 0 else 1


async def _check_embedded(flags: Flags, env: dict[str, str]) -> int:
    """``check --local`` with no ``serve --local`` running on that ``--data-dir``: the
    config, the nats-server binary serve would start, the JWKS."""
    from ..natsrunner import NatsServerError, find_binary

    try:
        cfg = load(flags, env)
    except ConfigError as exc:
        return fail(str(exc))
    _check_config(cfg)
    problems = await _check_jwks(cfg)
    try:
        binary = find_binary()
    except NatsServerError as exc:
        print(f"NATS: {exc}")
        return _verdict(problems + 1)
    store = (cfg.data_dir / "jetstream").resolve()
    print(f"NATS: serve --local would start {binary} (JetStream data in {store})")
    print("  none runs with this --data-dir now: buckets and capabilities not checked")
    return _verdict(problems)


async def _check(up: Upstream, cfg: Config, where: str) -> int:
    from nats.js.errors import NotFoundError

    _check_config(cfg)
    problems = await _check_jwks(cfg)
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
    return _verdict(problems)


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
