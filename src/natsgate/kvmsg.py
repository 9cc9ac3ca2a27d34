"""What a message of a KV bucket's stream means (pure, no I/O).

A bucket ``B`` is the stream ``KV_B``; a key's writes are messages on ``$KV.B.<key>``, a
put with no header, a delete or purge marked by ``KV-Operation`` (or, since nats-server
2.11, a TTL marker's ``Nats-Marker-Reason``). The KV watches, the capability store and the
revocation list all read buckets this way.
"""

from __future__ import annotations

from collections.abc import Mapping

PUT, DEL, PURGE = "PUT", "DEL", "PURGE"


def kv_op(headers: Mapping[str, str] | None) -> str:
    """``PUT``, ``DEL`` or ``PURGE``, from a KV message's headers."""
    if not headers:
        return PUT
    op = headers.get("KV-Operation")
    if op:
        return op
    reason = headers.get("Nats-Marker-Reason")  # nats-server 2.11+ TTL markers
    if reason in ("MaxAge", "Purge"):
        return PURGE
    if reason == "Remove":
        return DEL
    return PUT
