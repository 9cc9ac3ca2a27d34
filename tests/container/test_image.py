"""The container image: built with the project's own ``deploy/Containerfile`` and run.

Opt-in (``NATSGATE_CONTAINER_TEST=1``; ``scripts/container-test.sh`` installs the tools and
runs it): it needs root, podman, buildah and mmdebstrap, and takes a minute or two. It does
what works without a registry and without ``podman run`` (which needs rlimits a sandbox may
refuse):

1. a base image from Debian's own packages (``mmdebstrap`` + ``podman import``), made once
   and kept as ``localhost/natsgate-base:bookworm`` (``NATSGATE_CONTAINER_BASE`` names
   another);
2. the wheels built on the host (``pip wheel``) into ``deploy/wheels`` of a copy of the
   working tree, so the build installs them offline (``--no-index``) as the Containerfile
   does when it finds them;
3. ``podman build --isolation chroot`` of that tree with the Containerfile;
4. ``buildah run --isolation chroot --network host``: ``natsgate serve`` in the image, as
   its own user and with its own ``PATH``, against the test's nats-server on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from natsgate.auth import mint_token
from natsgate.natsrunner import NatsServer

from ..conftest import SECRET, unique
from ..helpers import T, WsClient
from ..test_cli import free_port

ROOT = Path(__file__).resolve().parents[2]
BASE = os.environ.get("NATSGATE_CONTAINER_BASE", "localhost/natsgate-base:bookworm")
DEBIAN = ["mmdebstrap", "--variant=apt", "--include=python3,python3-venv,ca-certificates"]
TOOLS = ("podman", "buildah", "mmdebstrap")

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("NATSGATE_CONTAINER_TEST") != "1",
        reason="builds and runs the container image (root, podman, buildah, mmdebstrap; a "
        "minute or two): set NATSGATE_CONTAINER_TEST=1, or run scripts/container-test.sh",
    ),
    pytest.mark.timeout(1200),
]


def sh(*cmd: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure, its output is the assertion message."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def timed(what: str, t0: float) -> None:
    print(f"container test: {what} in {time.monotonic() - t0:.1f} s")


def base_image(tmp: Path) -> str:
    """The Debian base (python3, python3-venv): no registry needed, made once."""
    if sh("podman", "image", "exists", BASE, check=False).returncode == 0:
        print(f"container test: base image {BASE} (kept from an earlier run)")
        return BASE
    t0 = time.monotonic()
    sh(*DEBIAN, "bookworm", str(tmp / "rootfs.tar"), timeout=900)
    sh("podman", "import", str(tmp / "rootfs.tar"), BASE)
    (tmp / "rootfs.tar").unlink()
    timed(f"base image {BASE} made with mmdebstrap", t0)
    return BASE


def build_context(tmp: Path) -> Path:
    """The working tree's files (tracked and new, not ignored) plus the wheels in
    ``deploy/wheels``: what a checkout is after ``pip wheel . -w deploy/wheels``. A copy,
    so that the test leaves the tree as it was; ``.dockerignore`` comes along."""
    ctx = tmp / "ctx"
    files = sh(
        "git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"
    )
    for name in filter(None, files.stdout.split("\0")):
        src = ROOT / name
        if src.is_file():
            (ctx / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, ctx / name)
    t0 = time.monotonic()
    wheels = ctx / "deploy" / "wheels"
    sh(sys.executable, "-m", "pip", "wheel", "-q", str(ctx), "-w", str(wheels), timeout=900)
    timed(f"{len(list(wheels.glob('*.whl')))} wheels built on the host", t0)
    return ctx


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"{', '.join(missing)} not found: run scripts/container-test.sh"
    tmp = tmp_path_factory.mktemp("container")
    base = base_image(tmp)
    ctx = build_context(tmp)
    tag = f"localhost/natsgate:test-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    sh(
        "podman",
        "build",
        "--isolation",
        "chroot",
        "--format",
        "docker",  # keeps the HEALTHCHECK (OCI images have none)
        "--layers=false",  # no image left behind per stage
        "-f",
        str(ctx / "deploy" / "Containerfile"),
        "--build-arg",
        f"BASE={base}",
        "-t",
        tag,
        str(ctx),
        timeout=1200,
    )
    timed(f"image {tag} built", t0)
    yield tag
    sh("podman", "rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def ctr(image: str) -> Iterator[str]:
    """A buildah working container of the image (its root file system, config and user)."""
    name = f"natsgate-test-{uuid.uuid4().hex[:8]}"
    sh("buildah", "from", "--name", name, image)
    yield name
    sh("buildah", "rm", name, check=False)


def in_image(ctr: str, env: dict[str, str], *argv: str) -> list[str]:
    """``argv`` run in the image on the host's network (``buildah run`` takes the image's
    user, working directory and environment; ``env`` on top)."""
    cmd = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
    for k, v in env.items():
        cmd += ["--env", f"{k}={v}"]
    return [*cmd, ctr, "--", *argv]


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def gateway_pid(self) -> int:
        """The process of ``natsgate serve`` in the image (buildah runs it two levels
        down; a signal to ``buildah run`` is not passed on: buildah kills it)."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        todo, found = [self.proc.pid], []
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"/python3") and argv[1:3] == [
                b"/opt/natsgate/bin/natsgate",
                b"serve",
            ]:
                found.append(pid)
        assert len(found) == 1, f"natsgate serve under buildah run {self.proc.pid}: {found}"
        return found[0]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def serve(ctr: str, nats: NatsServer, tmp: Path) -> Served:
    port = free_port()
    env = {
        "JWT_SECRET": SECRET,
        "NATS_URL": nats.url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "AUTH_BUCKET": unique("caps_"),
        "AUTH_CREDS_BUCKET": unique("creds_"),
        "AUTH_REVOKED_BUCKET": unique("revoked_"),
    }
    log = tmp / f"serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            in_image(ctr, env, "natsgate", "serve"), stdout=out, stderr=subprocess.STDOUT, text=True
        )
    s = Served(proc, port, log)
    deadline = time.monotonic() + 12 * T
    while True:
        assert proc.poll() is None, f"natsgate serve ended ({proc.returncode}):\n{s.output()}"
        try:
            with urllib.request.urlopen(f"{s.url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return s
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no /healthz 200 within {12 * T:.0f} s:\n{s.output()}"
        time.sleep(0.2)


def stop(s: Served) -> int:
    if s.proc.poll() is None:
        os.kill(s.gateway_pid(), signal.SIGTERM)
    try:
        return s.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        raise AssertionError(f"natsgate serve did not stop on SIGTERM:\n{s.output()}") from None


@pytest.fixture(scope="module")
def served(
    ctr: str, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    t0 = time.monotonic()
    s = serve(ctr, nats_server, tmp_path_factory.mktemp("serve"))
    timed("natsgate serve in the image answered /healthz 200", t0)
    yield s
    stop(s)


def get(url: str) -> tuple[int, bytes, str]:
    with urllib.request.urlopen(url, timeout=T) as r:
        return r.status, r.read(), r.headers.get("Content-Type", "")


def test_the_image_serves_health_the_library_and_the_demo(served: Served) -> None:
    status, body, _ = get(f"{served.url}/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, body, ctype = get(f"{served.url}/natsgate.js")  # from the wheel's natsgate_web/
    assert status == 200 and "javascript" in ctype and b"export" in body
    status, body, _ = get(f"{served.url}/")
    assert status == 200 and b"<html" in body.lower()
    status, body, _ = get(f"{served.url}/metrics")
    assert status == 200 and b"natsgate_" in body


def test_it_runs_as_the_unprivileged_user_from_the_venv(served: Served) -> None:
    pid = served.gateway_pid()
    uids = next(
        line.split()[1:]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Uid:")
    )
    assert uids == ["10001"] * 4, uids


async def test_a_websocket_gets_its_capabilities_first(served: Served) -> None:
    c = await WsClient.open(served.ws_url, token=mint_token("container-alice", SECRET, 600))
    try:
        first = await c.recv()
        assert first["op"] == "cap_update", first
    finally:
        await c.close()


def test_natsgate_check_in_the_image(ctr: str, nats_server: NatsServer) -> None:
    r = sh(
        *in_image(ctr, {"JWT_SECRET": SECRET, "NATS_URL": nats_server.url}, "natsgate", "check"),
        check=False,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "JetStream: on" in r.stdout and r.stdout.strip().endswith("ok"), r.stdout


def test_the_healthcheck_command_passes(image: str, ctr: str, served: Served) -> None:
    """The image's own HEALTHCHECK, run in the image against the served gateway."""
    r = sh("podman", "image", "inspect", "--format", "{{json .HealthCheck}}", image)
    check = json.loads(r.stdout)
    assert check and check["Test"][0] == "CMD", r.stdout
    r = sh(*in_image(ctr, {"PORT": str(served.port)}, *check["Test"][1:]), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    with urllib.request.urlopen(f"{served.url}/healthz", timeout=T):  # still there
        pass


def test_sigterm_stops_it_with_exit_0(ctr: str, nats_server: NatsServer, tmp_path: Path) -> None:
    s = serve(ctr, nats_server, tmp_path)
    t0 = time.monotonic()
    code = stop(s)
    timed(f"stopped on SIGTERM with exit code {code}", t0)
    assert code == 0, s.output()
    assert "stopped" in s.output().splitlines()[-1], s.output()
