"""The flags of ``serve``, ``demo`` and ``check``, defined once: ``check`` tries out what
``serve`` with the same flags would do, so it must read them alike."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from ..config import DEFAULT_PROXY, Flags


def add_serve_flags(p: argparse.ArgumentParser, *, demo: bool = False) -> None:
    """``--local``, ``--proxy``, ``--log``, ``--host``, ``--port``, ``--data-dir``,
    ``--workers``, ``--static``/``--no-static`` (the demo is always local and serves
    itself)."""
    if demo:
        p.set_defaults(local=True, static=None, no_static=False)
    else:
        p.add_argument("--local", action="store_true", help="run an embedded nats-server")
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
    p.add_argument(
        "--data-dir",
        default=None,
        help="embedded server's data; the other commands find its credentials there "
        "(default ./data)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="processes sharing the port (default 1)"
    )
    if not demo:
        files = p.add_mutually_exclusive_group()
        files.add_argument(
            "--static", default=None, metavar="DIR", help="serve your app's files at / (STATIC_DIR)"
        )
        files.add_argument(
            "--no-static", action="store_true", help="serve no files at all (STATIC_DIR=none)"
        )


def serve_flags(args: argparse.Namespace, *, demo: bool = False) -> Flags:
    return Flags(
        local=args.local or demo,
        proxy=args.proxy,
        log=args.log,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        workers=args.workers,
        no_static=args.no_static,
    )


def serve_env(
    args: argparse.Namespace, base: Mapping[str, str], *, demo: bool = False
) -> dict[str, str]:
    """The environment the config is read from: ``--static`` over ``STATIC_DIR`` (checked
    alike); the demo serves the demo whatever ``STATIC_DIR`` says."""
    env = dict(base)
    if args.static is not None:
        env["STATIC_DIR"] = args.static
    if demo:
        env.pop("STATIC_DIR", None)
    return env
