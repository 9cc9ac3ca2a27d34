"""``natsgate serve | demo | user | token | check`` (docs/deploy.md): the parser and
:func:`main`; the commands live in :mod:`.serve`, :mod:`.users`, :mod:`.tokens` and
:mod:`.check`."""

from __future__ import annotations

import argparse
import sys

from dotenv import load_dotenv

from ..config import Config
from ..natsrunner import ENV_FILE
from .args import add_serve_flags
from .audit import add_parser as add_audit_parser
from .audit import cmd_audit
from .check import cmd_check
from .envhelp import env_help
from .output import quiet_stdout
from .serve import cmd_serve
from .tokens import cmd_token
from .users import cmd_user


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("natsgate")
    except PackageNotFoundError:  # a source tree never installed
        return "unknown (not installed)"


def _data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=str(Config().data_dir),
        help="without NATS_URL, use the embedded server of serve --local with this "
        f"--data-dir (its {ENV_FILE}; default ./data)",
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="natsgate", description="Put NATS in front of browsers.")
    ap.add_argument("--version", action="version", version=f"natsgate {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, help_ in (("serve", "run the gateway"), ("demo", "serve --local with demo data")):
        p = sub.add_parser(
            name,
            help=help_,
            epilog=env_help(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_serve_flags(p, demo=name == "demo")
    u = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = u.add_parser("add", help="add a user (password from stdin)")
    add.add_argument("id")
    add.add_argument("--caps", default=None, metavar="FILE")
    add.add_argument("--force", action="store_true", help="replace an existing user's password")
    passwd = u.add_parser(
        "passwd", help="set a user's password (from stdin); revokes its earlier tokens"
    )
    passwd.add_argument("id")
    caps = u.add_parser("caps", help="set a user's capabilities")
    caps.add_argument("id")
    caps.add_argument("caps", metavar="FILE")
    show = u.add_parser("show", help="a user's capabilities and whether it has a password")
    show.add_argument("id")
    listing = u.add_parser("list", help="every user: password and capabilities set or not")
    rm = u.add_parser("rm", help="remove a user: password, capabilities, and its tokens")
    rm.add_argument("id")
    revoke = u.add_parser(
        "revoke", help="revoke every token of a user issued before now (on every gateway)"
    )
    revoke.add_argument("id")
    for p in (add, passwd, caps, show, listing, rm, revoke):
        _data_dir(p)
    t = sub.add_parser("token", help="print a JWT for a user, or check one (--verify)")
    t.add_argument("id", nargs="?", default=None)
    t.add_argument(
        "--ttl",
        default="1h",
        help="how long the token is valid: a number with s, m, h or d (90s, 15m, 1h, 7d; "
        "a bare number is seconds); default %(default)s",
    )
    t.add_argument(
        "--verify",
        default=None,
        metavar="TOKEN",
        help="print a token's claims and whether it is valid now",
    )
    _data_dir(t)
    check = sub.add_parser(
        "check",
        help="check the configuration, NATS, JetStream, buckets, capabilities and the JWKS",
        description="What natsgate serve with the same flags and environment would find.",
    )
    add_serve_flags(check)
    add_audit_parser(sub, _data_dir)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one command. A reader that went away (``natsgate check | head -2``) ends it
    quietly, as it ends Unix tools: no traceback, exit 141 (128 + SIGPIPE, what a shell
    shows for those)."""
    try:
        try:
            return _command(sys.argv[1:] if argv is None else argv)
        finally:
            sys.stdout.flush()  # what is still buffered fails here, not at exit
    except BrokenPipeError:
        quiet_stdout()
        return 128 + 13


def _command(argv: list[str]) -> int:
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
        case "check":
            return cmd_check(args)
        case "audit":
            return cmd_audit(args)
    return 2
