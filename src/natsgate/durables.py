"""Whose durable is whose (pure, no I/O).

A user's durable ``D`` on a stream is the NATS consumer ``ng_<32 hex digits of the user
id's SHA-256>_<D>``: consumer names may not hold every character a user id may (``/``,
``\\``), the hash part has a fixed length so the durable name after it is unambiguous,
and two users can reach each other's durables only by a SHA-256 collision, whatever
names they choose. The user id itself is in the consumer's metadata, which the gateway
checks before it binds.
"""

from __future__ import annotations

import hashlib

PREFIX = "ng_"
OWNER_KEY = "natsgate_user"
NAME_KEY = "natsgate_durable"
_HASH_HEX = 32


def user_prefix(user: str) -> str:
    """The start of every consumer name of ``user``'s durables."""
    return f"{PREFIX}{hashlib.sha256(user.encode()).hexdigest()[:_HASH_HEX]}_"


def consumer_name(user: str, durable: str) -> str:
    return user_prefix(user) + durable


def durable_of(user: str, consumer: str) -> str | None:
    """The durable name when ``consumer`` is one of ``user``'s, else None."""
    prefix = user_prefix(user)
    return consumer[len(prefix) :] if consumer.startswith(prefix) else None
