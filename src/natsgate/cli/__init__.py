"""``natsgate serve | demo | user | token`` (contract section 6)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dotenv import load_dotenv

from .auth import USER_ID_RE, USER_ID_RULE, Passwords, mint_token
from .capabilities import Capabilities
from .config import DEFAULT_PROXY, Config, ConfigError, Flags, check_secret, load
from .natsrunner import (
    ENV_FILE,
    Credentials,
    NatsServer,
    NatsServerError,
    read_env_file,
    remove_env_file,
    write_env_file,
)

if TYPE_CHECKING:
    from .upstream import Upstream

log = logging.getLogger("natsgate")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=_LEVELS[level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "debug":  # nats-py is chatty about reconnects we already report
        logging.getLogger("nats").setLevel(logging.CRITICAL)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _say(line: str) -> None:
    """One line in one write: with ``--workers`` several processes share stdout, and
    ``print`` writes the text and its newline separately, so lines could interleave."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _fail(message: str, code: int = 2) -> int:
    print(f"natsgate: {message}", file=sys.stderr)
    return code


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# ------------------------------------------------------------------ serve / demo


async def _serve(cfg: Config, *, demo_password: str | None = None, reuse_port: bool = False) -> int:
    from .edge import Edge
    from .gateway import Gateway
    from .server import make_app

    gw = Gateway(cfg)
    await gw.start()
    edge = Edge(gw, make_app(gw))
    try:
        port = await edge.start(cfg.host, cfg.port, reuse_port=reuse_port)
    except OSError as exc:
        await gw.stop()
        await edge.cleanup()
        return _fail(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}")
    shown = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
    _say(f"natsgate listening on http://{shown}:{port}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    services = None
    if demo_password is not None:
        from .demo import Services, seed

        try:
            await asyncio.wait_for(gw.ready.wait(), 30)
            await seed(
                gw.upstream,
                cfg.auth_bucket,
                cfg.auth_creds_bucket,
                demo_password,
                cfg.web_hash_salt,
            )
            import nats

            from .upstream import credentials

            nc = await nats.connect(
                list(cfg.nats_urls), name="natsgate-demo-services", **credentials(cfg)
            )
            services = Services(nc)
            await services.start()
        except Exception as exc:
            log.error("demo set-up failed: %r", exc)
            stop.set()
        else:
            _say(
                f"demo ready: open http://{shown}:{port}/ and log in as alice or bob "
                f"with password {demo_password}"
            )
    await stop.wait()
    log.info("stopping: no new connections; telling clients to reconnect elsewhere")
    edge.stop_listening()
    try:
        await asyncio.wait_for(gw.stop(), cfg.drain_timeout_s or None)
    except TimeoutError:
        log.warning("drain took longer than %.0fs; exiting anyway", cfg.drain_timeout_s)
    if services is not None:
        with contextlib.suppress(Exception):
            await services.nc.drain()
    await edge.cleanup()
    log.info("stopped")
    return 0


def _run(coro_factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency, absent on Windows
        pass
    return asyncio.run(coro_factory())


def _workers(cfg: Config, argv: list[str]) -> int:
    """Run ``cfg.workers`` serve processes on one port (SO_REUSEPORT) and supervise them."""
    if cfg.port == 0:
        return _fail("--workers needs a fixed --port (each process binds the same one)")
    env = dict(
        os.environ,
        NATS_URL=cfg.nats_url,
        JWT_SECRET=cfg.jwt_secret,
        NATSGATE_REUSE_PORT="1",
        WORKERS="1",
    )
    if cfg.local and cfg.nats_user:  # the embedded server's one user; no other (not .env's)
        env.update(
            NATS_USER=cfg.nats_user,
            NATS_PASSWORD=cfg.nats_password,
            NATS_CREDS="",
            NATS_JWT="",
            NATS_NKEY="",
        )
    args = [a for a in argv if a != "--local"]
    # drop "--workers N" / "--workers=N"; the children are single processes
    clean: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        clean.append(a)
    procs = [
        subprocess.Popen([sys.executable, "-m", "natsgate", *clean], env=env)
        for _ in range(cfg.workers)
    ]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [p.wait() for p in procs]
    return 0 if stopping or all(c == 0 for c in codes) else max(codes)


def cmd_serve(args: argparse.Namespace, argv: list[str], *, demo: bool) -> int:
    flags = Flags(
        local=args.local or demo,
        proxy=args.proxy,
        log=args.log,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        workers=args.workers,
    )
    try:
        cfg = load(flags)
    except ConfigError as exc:
        return _fail(str(exc))
    _setup_logging(cfg.log_level)
    nats_server: NatsServer | None = None
    creds = Credentials.generate()
    env_file = cfg.data_dir.resolve() / ENV_FILE
    if cfg.local:
        # contract §7: the embedded server accepts only the user made here, so no other
        # local process can rewrite the auth buckets; the operator's tools read env_file
        store = cfg.data_dir.resolve() / "jetstream"
        port = 4222 if _port_free("127.0.0.1", 4222) else -1
        try:
            nats_server = NatsServer(store_dir=store, port=port, credentials=creds).start()
        except NatsServerError as exc:
            return _fail(str(exc), 1)
        try:
            write_env_file(env_file, nats_server.url, creds)
        except OSError as exc:
            nats_server.stop()
            return _fail(f"cannot write {env_file}: {exc.strerror or exc}", 1)
        log.info(
            "embedded nats-server at %s (JetStream data in %s); it accepts only the user "
            "in %s (readable by you only; for the nats CLI: set -a; . %s; set +a)",
            nats_server.url,
            store,
            env_file,
            env_file,
        )
        cfg = dataclasses.replace(
            cfg,
            nats_urls=(nats_server.url,),
            nats_creds=None,
            nats_jwt=None,
            nats_nkey=None,
            nats_user=creds.user,
            nats_password=creds.password,
        )
    if cfg.jwt_secret_ephemeral:
        log.warning(
            "JWT_SECRET is not set: using an ephemeral secret (tokens end with this process)"
        )
    try:
        if cfg.workers > 1:
            if demo:
                return _fail("--workers is for serve; run the demo as one process")
            return _workers(cfg, argv)
        password = None
        if demo:
            from .demo import demo_password

            password, _ = demo_password(os.environ.get("DEMO_PASSWORD"))
        reuse = os.environ.get("NATSGATE_REUSE_PORT") == "1"
        return _run(lambda: _serve(cfg, demo_password=password, reuse_port=reuse))
    finally:
        if nats_server is not None:
            nats_server.stop()
            remove_env_file(env_file, creds)


# ------------------------------------------------------------------ user / token


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
    from .metrics import Metrics
    from .upstream import Upstream

    try:
        env, where = _nats_env(data_dir)
        cfg = load(Flags(local=True), env)  # no JWT_SECRET needed to manage users
    except ConfigError as exc:
        return _fail(str(exc))
    up = Upstream(cfg, Metrics())
    try:
        await up.connect_once()  # with NATS_CREDS, NATS_JWT + NATS_NKEY or a user, like serve
    except Exception as exc:
        return _fail(f"cannot connect to {where}: {exc}", 1)
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
    from .capstore import ensure_bucket
    from .revocations import open_bucket, write_user

    if not USER_ID_RE.match(args.id):
        return _fail(f"invalid user id {args.id!r}: {USER_ID_RULE}")
    try:
        caps = _read_caps(args.caps) if getattr(args, "caps", None) else None
    except ConfigError as exc:
        return _fail(str(exc))
    if args.action == "add":
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            return _fail("give the password on standard input")

    async def act(up: Upstream, cfg: Config, where: str) -> int:
        # validate_keys off: a user id is any one subject token (auth0|42, ü), which
        # nats-py's stricter key pattern would refuse although NATS takes it
        if args.action == "add":
            creds = await ensure_bucket(up, cfg.auth_creds_bucket)
            hashed = Passwords(cfg.web_hash_salt).hash(password).encode()
            await creds.put(args.id, hashed, validate_keys=False)
            print(f"user {args.id} added on {where}")
        if args.action == "revoke":
            kv = await open_bucket(up.js, cfg.auth_revoked_bucket)
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
        return _fail("JWT_SECRET is required to sign a token")
    try:
        check_secret(secret)
        ttl = parse_ttl(args.ttl)
    except ConfigError as exc:
        return _fail(str(exc))
    if not USER_ID_RE.match(args.id):
        return _fail(f"invalid user id {args.id!r}: {USER_ID_RULE}")
    print(mint_token(args.id, secret, ttl))
    return 0


# ------------------------------------------------------------------ parser


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="natsgate", description="Put NATS in front of browsers.")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in (("serve", "run the gateway"), ("demo", "serve --local with demo data")):
        p = sub.add_parser(name, help=help_)
        if name == "serve":
            p.add_argument("--local", action="store_true", help="run an embedded nats-server")
        else:
            p.set_defaults(local=True)
        p.add_argument(
            "--proxy",
            nargs="?",
            const=DEFAULT_PROXY,
            default=None,
            metavar="URL",
            help=f"forward the front end to a dev server (default {DEFAULT_PROXY})",
        )
        p.add_argument("--log", choices=("debug", "info", "warn", "error"), default=None)
        p.add_argument("--host", default=None)
        p.add_argument("--port", type=int, default=None)
        p.add_argument("--data-dir", default=None, help="embedded server's data (default ./data)")
        p.add_argument(
            "--workers", type=int, default=None, help="processes sharing the port (default 1)"
        )
    u = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = u.add_parser("add", help="add a user (password from stdin)")
    add.add_argument("id")
    add.add_argument("--caps", default=None, metavar="FILE")
    caps = u.add_parser("caps", help="set a user's capabilities")
    caps.add_argument("id")
    caps.add_argument("caps", metavar="FILE")
    revoke = u.add_parser(
        "revoke", help="revoke every token of a user issued before now (on every gateway)"
    )
    revoke.add_argument("id")
    for p in (add, caps, revoke):
        p.add_argument(
            "--data-dir",
            default=str(Config().data_dir),
            help="without NATS_URL, use the embedded server of serve --local with this "
            f"--data-dir (its {ENV_FILE}; default ./data)",
        )
    t = sub.add_parser("token", help="print a JWT for a user")
    t.add_argument("id")
    t.add_argument("--ttl", default="1h")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    load_dotenv(".env", override=False)
    args = _parser().parse_args(argv)
    match args.command:
        case "serve":
            return cmd_serve(args, argv, demo=False)
        case "demo":
            return cmd_serve(args, argv, demo=True)
        case "user":
            return cmd_user(args)
        case "token":
            return cmd_token(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
