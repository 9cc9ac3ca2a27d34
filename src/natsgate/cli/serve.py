"""``natsgate serve`` and ``natsgate demo``: the embedded nats-server when ``--local``,
the gateway in one process or ``--workers`` processes on one port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from ..config import Config, ConfigError, load
from ..natsrunner import (
    ENV_FILE,
    Credentials,
    NatsServer,
    NatsServerError,
    remove_env_file,
    write_env_file,
)
from .args import serve_env, serve_flags
from .connect import remove_local_secret, write_local_secret
from .logs import json_lines, setup_logging
from .output import fail, log, say


def _tell_where(cfg: Config, url: str) -> None:
    """What is where, for whoever reads the log first (docs/deploy.md)."""
    from .check import front_end

    login = (
        f"login at {url}/auth/login"
        if cfg.jwt_secret
        else "password login is off (JWT_JWKS_URL without JWT_SECRET: tokens come from "
        "the identity provider)"
    )
    log.info(
        "WebSocket at %s/ws; %s; health at %s/healthz", url.replace("http", "ws", 1), login, url
    )
    log.info("front end at %s/: %s", url, front_end(cfg))
    log.info("NATS: %s (connection name %s)", _no_password(cfg.nats_url), cfg.nats_name)
    log.info(
        "buckets: capabilities %s, passwords %s, revocations %s, presence %s",
        cfg.auth_bucket,
        cfg.auth_creds_bucket,
        cfg.auth_revoked_bucket,
        cfg.presence_bucket,
    )


def _no_password(url: str) -> str:
    import re

    return re.sub(r"//[^@/,]*@", "//", url)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


async def _serve(cfg: Config, *, demo_password: str | None = None, reuse_port: bool = False) -> int:
    from ..edge import Edge
    from ..fdlimit import raise_soft_limit
    from ..gateway import Gateway
    from ..server import make_app

    before, files = raise_soft_limit()
    gw = Gateway(cfg)
    log.info(
        "open files: %d%s; at most %d WebSockets in this process",
        files,
        f" (raised from {before})" if files > before else "",
        gw.max_conns,
    )
    await gw.start()
    edge = Edge(gw, make_app(gw))
    try:
        port = await edge.start(cfg.host, cfg.port, reuse_port=reuse_port)
    except OSError as exc:
        await gw.stop()
        await edge.cleanup()
        return fail(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}")
    # Handlers first: whoever reads the line below may signal at once (a supervisor, a
    # test), and SIGTERM must then drain rather than kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    shown = "127.0.0.1" if cfg.host in ("0.0.0.0", "") else cfg.host
    say(f"natsgate listening on http://{shown}:{port}")
    _tell_where(cfg, f"http://{shown}:{port}")

    services = None
    if demo_password is not None:
        from ..demo import Services, seed

        try:
            async with asyncio.timeout(30):
                await gw.ready.wait()
            await seed(
                gw.upstream,
                cfg.auth_bucket,
                cfg.auth_creds_bucket,
                demo_password,
                cfg.web_hash_salt,
            )
            import nats

            from ..upstream import credentials

            nc = await nats.connect(
                list(cfg.nats_urls), name="natsgate-demo-services", **credentials(cfg)
            )
            services = Services(nc)
            await services.start()
        except Exception as exc:
            log.error("demo set-up failed: %r", exc)
            stop.set()
        else:
            say(
                f"demo ready: open http://{shown}:{port}/ and log in as alice or bob "
                f"with password {demo_password}"
            )
    await stop.wait()
    log.info("stopping: no new connections; telling clients to reconnect elsewhere")
    edge.stop_listening()
    try:
        async with asyncio.timeout(cfg.drain_timeout_s or None):
            await gw.stop()
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
        return fail("--workers needs a fixed --port (each process binds the same one)")
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
    flags = serve_flags(args, demo=demo)
    env = serve_env(args, os.environ, demo=demo)
    try:
        cfg = load(flags, env)
    except ConfigError as exc:
        json_lines(env.get("LOG_FORMAT", "").strip().lower() == "json")
        return fail(str(exc))
    setup_logging(cfg.log_level, cfg.log_format)
    nats_server: NatsServer | None = None
    creds = Credentials.generate()
    env_file = cfg.data_dir.resolve() / ENV_FILE
    if cfg.local:
        # security.md: the embedded server accepts only the user made here, so no other
        # local process can rewrite the auth buckets; the operator's tools read env_file
        store = cfg.data_dir.resolve() / "jetstream"
        port = 4222 if _port_free("127.0.0.1", 4222) else -1
        try:
            nats_server = NatsServer(
                store_dir=store, port=port, credentials=creds, die_with_parent=True
            ).start()
        except NatsServerError as exc:
            return fail(str(exc), 1)
        try:
            write_env_file(env_file, nats_server.url, creds)
            if cfg.jwt_secret_ephemeral:  # natsgate token --data-dir signs with it
                write_local_secret(env_file.parent, cfg.jwt_secret)
        except OSError as exc:
            nats_server.stop()
            return fail(f"cannot write {env_file}: {exc.strerror or exc}", 1)
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
                return fail("--workers is for serve; run the demo as one process")
            return _workers(cfg, argv)
        password = None
        if demo:
            from ..demo import demo_password

            password, _ = demo_password(os.environ.get("DEMO_PASSWORD"))
        reuse = os.environ.get("NATSGATE_REUSE_PORT") == "1"
        return _run(lambda: _serve(cfg, demo_password=password, reuse_port=reuse))
    finally:
        if nats_server is not None:
            nats_server.stop()
            remove_env_file(env_file, creds)
            remove_local_secret(env_file.parent, cfg.jwt_secret)
