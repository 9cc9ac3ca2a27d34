"""Who is really at the other end, behind trusted proxies (``TRUSTED_PROXIES``). Pure.

The login throttle, ``MAX_CONNS_PER_IP`` and the logs count clients by address; behind a
load balancer every peer is the balancer. ``X-Forwarded-For`` is believed only from a
trusted peer, and read from the right: each trusted hop appended the address it saw, so
the first address from the right that is not a trusted proxy is the client. Anything to
its left was written by the client itself and is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from .config import IPNetwork


def _trusted(addr: str, proxies: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(addr.strip().removeprefix("[").split("]")[0])
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(peer: str, forwarded_for: list[str], proxies: Sequence[IPNetwork]) -> str:
    """The client's address: ``peer`` unless it is a trusted proxy, else the last
    untrusted hop named in the ``X-Forwarded-For`` headers (all of them, in order)."""
    if not proxies or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage where an address should be: trust nothing of it
    return hops[0] if hops else peer
