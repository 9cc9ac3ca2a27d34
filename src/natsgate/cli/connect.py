"""How the operator's commands (``user``, ``token``, ``check``) find the NATS server and the
JWT secret: the environment, else what ``serve --local`` wrote under ``--data-dir``, so that
they reach the same server the gateway uses and say which one it was."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, ConfigError, Flags, load
from ..natsrunner import ENV_FILE, read_env_file
from .output import fail

if TYPE_CHECKING:
    from ..upstream import Upstream

Action = Callable[["Upstream", Config, str], Awaitable[int]]


SECRET_FILE = "jwt.env"  # under --data-dir: the JWT_SECRET serve --local made up


def local_env(data_dir: Path) -> dict[str, str] | None:
    """What ``serve --local --data-dir`` wrote for its embedded server (URL and its one
    user; the ``JWT_SECRET`` it made up, when it did), or None when no server runs there."""
    path = data_dir / ENV_FILE
    if not path.is_file():
        return None
    try:
        env = read_env_file(path)
        secret = data_dir / SECRET_FILE
        if secret.is_file():
            env["JWT_SECRET"] = read_env_file(secret).get("JWT_SECRET", "")
        return env
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def write_local_secret(data_dir: Path, secret: str) -> Path:
    """The ephemeral secret of ``serve --local``, readable by this user only (0600 from the
    first byte), so that ``natsgate token --data-dir`` signs tokens this server takes."""
    path = data_dir / SECRET_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# The JWT_SECRET of a running serve --local; gone when it stops.\n")
        f.write(f"JWT_SECRET={secret}\n")
    return path


def remove_local_secret(data_dir: Path, secret: str) -> None:
    """Remove the file when its server stops, unless another one has since written its own."""
    path = data_dir / SECRET_FILE
    with contextlib.suppress(OSError):
        if read_env_file(path).get("JWT_SECRET") == secret:
            path.unlink()


def nats_env(
    data_dir: Path, base: Mapping[str, str] | None = None, *, prefer_local: bool = False
) -> tuple[dict[str, str], str]:
    """The environment a command loads its config from (``base``, else the process's), and
    the NATS server it names, for its output. Without ``NATS_URL`` (or with ``prefer_local``:
    ``serve --local`` ignores it), the server of ``serve --local`` under ``data_dir``."""
    env = dict(os.environ if base is None else base)
    local = None if env.get("NATS_URL") and not prefer_local else local_env(data_dir)
    if local is not None:
        for name in ("NATS_CREDS", "NATS_JWT", "NATS_NKEY"):
            env.pop(name, None)  # the file's user, not these
        secret = local.pop("JWT_SECRET", None)
        env.update(local)
        if secret and not env.get("JWT_SECRET"):
            env["JWT_SECRET"] = secret
        where = f"the embedded nats-server at {env.get('NATS_URL')} (credentials in "
        return env, where + f"{data_dir / ENV_FILE})"
    url = env.get("NATS_URL") or Config().nats_url
    return env, "NATS at " + re.sub(r"//[^@/,]*@", "//", url)  # no password in the output


def jwt_secret(data_dir: Path) -> str | None:
    """``JWT_SECRET`` from the environment, else the one ``serve --local`` made up and
    wrote under ``data_dir`` (it signs with that one while it runs)."""
    secret = os.environ.get("JWT_SECRET")
    if secret:
        return secret
    local = local_env(data_dir)
    return (local or {}).get("JWT_SECRET") or None


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, TimeoutError) or not text:
        return text or f"{type(exc).__name__} (no answer within a few seconds)"
    if "authorization violation" in text.lower():
        text += (
            "; credentials come from NATS_USER + NATS_PASSWORD, NATS_CREDS or NATS_JWT + "
            "NATS_NKEY, or, for the embedded server of a serve --local, from the --data-dir "
            f"it was started with (its <data-dir>/{ENV_FILE}): pass the same --data-dir"
        )
    return text


async def with_nats(
    action: Action,
    data_dir: Path,
    *,
    flags: Flags | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``action(upstream, config, where)`` on one bounded connection to NATS. The config
    is loaded with ``flags`` and ``env`` when given (``check``: as ``serve`` would, with its
    flags); else leniently, no ``JWT_SECRET`` needed to manage users."""
    from ..metrics import Metrics
    from ..upstream import Upstream

    # nats-py logs each failed attempt with a traceback; the one line below says it all
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    try:
        local = flags is not None and flags.local
        full, where = nats_env(data_dir, env, prefer_local=local)
        cfg = load(flags or Flags(local=True), full)
    except ConfigError as exc:
        return fail(str(exc))
    up = Upstream(cfg, Metrics())
    try:
        await up.connect_once()  # with NATS_CREDS, NATS_JWT + NATS_NKEY or a user, like serve
    except Exception as exc:
        return fail(f"cannot connect to {where}: {_why(exc)}", 1)
    try:
        return await action(up, cfg, where)
    finally:
        await up.nc.close()
