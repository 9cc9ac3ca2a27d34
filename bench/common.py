"""What every benchmark process shares: the payload format, the shared delivery counters,
and the process hygiene (file limits, dying with the parent)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import mmap
import os
import random
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------ payload

PAYLOAD_BYTES = 100
_PAD = b"x" * PAYLOAD_BYTES


# BENCH_PAYLOAD=chat: a chat message of 200-400 bytes instead (what compression is for;
# the 100-byte payload's padding would flatter any compressor)
CHAT = os.environ.get("BENCH_PAYLOAD") == "chat"
_WORDS = (
    b"ok thanks see you at the meeting moved to three pm can someone review my pull request "
    b"lunch today sounds good I will be late the build is green again great idea let us ship "
    b"it tomorrow morning who has the notes from yesterday"
).split()
_USERS = (b"alice", b"bob", b"carol", b"dave", b"erin", b"frank")


def payload(seq: int, t_ns: int) -> bytes:
    """A 100-byte JSON payload carrying its sequence number and publish time (ns since the
    epoch, ``time.time_ns``: one clock for every process on this machine)."""
    if CHAT:
        return chat_payload(seq, t_ns)
    head = b'{"s":%d,"t":%d,"p":"' % (seq, t_ns)
    return head + _PAD[: max(4, PAYLOAD_BYTES - 2 - len(head))] + b'"}'


def chat_payload(seq: int, t_ns: int) -> bytes:
    """A chat line as a JSON object of 200-400 bytes, different per message (its words
    picked by a generator seeded with ``seq``)."""
    rng = random.Random(seq)
    text = b" ".join(rng.choice(_WORDS) for _ in range(rng.randint(15, 40)))
    return b'{"s":%d,"t":%d,"id":"m%08d","user":"%s","room":"general","text":"%s",%s}' % (
        seq,
        t_ns,
        seq,
        rng.choice(_USERS),
        text,
        b'"reactions":[],"edited":false,"thread":null',
    )


# the receiving side finds these with a regex that tolerates ", " and ": " (Socket.IO
# re-encodes the payload with Python's json module)
SEQ_PATTERN = rb'"s":\s*(\d+),\s*"t":\s*(\d+)'

# ------------------------------------------------------------------ shared counters


class Counters:
    """One uint64 per load-generator process in a small file mapped by every process: the
    publisher reads the sum to keep its in-flight window, the orchestrator reads it at the
    window's edges. A plain file (not multiprocessing.shared_memory): no resource tracker."""

    def __init__(self, path: Path, slots: int, *, create: bool = False) -> None:
        self.path = path
        size = max(8, slots * 8)
        if create:
            path.write_bytes(b"\0" * size)
        self._fd = os.open(path, os.O_RDWR)
        self._mm = mmap.mmap(self._fd, size)
        self.mv = memoryview(self._mm).cast("Q")

    def total(self) -> int:
        return sum(self.mv)

    def close(self) -> None:
        try:
            self.mv.release()
            self._mm.close()
        except (BufferError, ValueError):
            pass
        os.close(self._fd)


# ------------------------------------------------------------------ process hygiene


def raise_nofile(want: int = 65_536) -> int:
    """Raise RLIMIT_NOFILE (soft and, as root, hard) to ``want``; returns the soft limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        new_hard = max(hard, want) if hard != resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, new_hard), new_hard))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE: as far as the hard limit allows
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def die_with_parent() -> None:
    """preexec_fn for children: SIGTERM when the orchestrator dies, however it dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass


# ------------------------------------------------------------------ the orchestrator's pipe


def say(obj: dict[str, Any]) -> None:
    """One JSON line to the orchestrator."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def commands(lifetime_s: float, limit: int = 1 << 24) -> AsyncIterator[dict[str, Any]]:
    """The orchestrator's JSON-line commands on standard input, after saying ``ready``; ends
    when the input closes, on ``{"cmd": "exit"}``, or after ``lifetime_s`` (every child
    stops by itself)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    say({"ev": "ready"})
    end = time.monotonic() + lifetime_s
    while (left := end - time.monotonic()) > 0:
        try:
            line = await asyncio.wait_for(reader.readline(), left)
        except TimeoutError:
            return
        if not line:
            return  # the orchestrator is gone
        cmd = json.loads(line)
        if cmd.get("cmd") == "exit":
            return
        yield cmd
