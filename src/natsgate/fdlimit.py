"""Open files: every WebSocket holds one descriptor, so the process's ``RLIMIT_NOFILE``
is its ceiling of connections.

A process at its limit cannot accept: the kernel keeps completing handshakes into the
listen backlog and the clients hang until they time out, with nothing in the log (seen at
2 x 19,985 connections on ``--workers 2`` under a 20,000 hard limit). So ``serve`` raises
the soft limit to the hard one at start, and the gateway refuses upgrades with 503 (a
reason, and a client that reconnects elsewhere) while a reserve of descriptors is left for
NATS, the refusals themselves and plain HTTP.
"""

from __future__ import annotations

import resource

RESERVE = 128  # descriptors kept back from WebSockets: NATS, files, HTTP, the refusals


def raise_soft_limit() -> tuple[int, int]:
    """Raise the soft limit to the hard one (as far as the system lets an unprivileged
    process); returns (soft before, soft now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return soft, target
        except (ValueError, OSError):
            pass
    return soft, soft


def connection_ceiling() -> int:
    """The WebSockets this process can hold under its current soft limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(soft - RESERVE, soft // 2)
