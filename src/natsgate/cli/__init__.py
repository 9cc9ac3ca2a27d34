"""``natsgate serve | demo | user | token`` (contract section 6): the parser and
:func:`main`; the commands live in :mod:`.serve` and :mod:`.users`."""

from __future__ import annotations

import argparse
import sys

from dotenv import load_dotenv

from ..config import DEFAULT_PROXY, Config
from ..natsrunner import ENV_FILE
from .serve import cmd_serve
from .users import cmd_token, cmd_user


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
