"""The identity provider's key set (``JWT_JWKS_URL``): fetched off the event loop with
aiohttp, parsed by PyJWT (:class:`jwt.PyJWKSet`), kept in memory for
:class:`~natsgate.auth.Verifier`.

When it is fetched:

- at start, then every :attr:`KeySet.refresh_s` (5 minutes), so a key the provider
  dropped stops working within that time even if no new key ever shows up;
- when a token names a ``kid`` the set does not hold: at most once per
  :attr:`KeySet.refetch_s` (30 s) counting every fetch, and concurrent callers share the
  one fetch in flight. A flood of tokens with made-up kids costs one fetch per 30 s.

A fetch that fails (unreachable, not 200, not a key set, over 1 MiB, over 5 s) keeps the
keys there were; until the first success, the start-up loop retries with a growing pause
(1 s up to 30 s) and logs a warning each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
from jwt import PyJWK, PyJWKSet

from .auth import ASYMMETRIC
from .metrics import Metrics

log = logging.getLogger("natsgate.jwks")

MAX_BYTES = 1 << 20  # a key set larger than this is refused
KEY_TYPES = ("RSA", "EC", "OKP")


class FetchError(Exception):
    """The key set could not be fetched or read; the message says why (no secrets)."""


def usable(keys: PyJWKSet) -> dict[str | None, PyJWK]:
    """The signing keys of a set by ``kid``: asymmetric, of an algorithm we take, not
    marked for encryption. A symmetric (``oct``) key published in a JWKS would let anyone
    sign: never used."""
    out: dict[str | None, PyJWK] = {}
    for key in keys:
        if (
            key.key_type in KEY_TYPES
            and key.algorithm_name in ASYMMETRIC
            and key.public_key_use in (None, "sig")
        ):
            out.setdefault(key.key_id, key)
    return out


class KeySet:
    """The keys, and when to fetch them again (the gateway starts and closes it)."""

    def __init__(
        self,
        url: str,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.metrics = metrics
        self.clock = clock  # monotonic seconds; tests move it instead of waiting 30 s
        self.refetch_s = 30.0  # an unknown kid fetches at most this often
        self.refresh_s = 300.0  # and the set is fetched again this often anyway
        self.timeout_s = 5.0  # one fetch, connect to last byte
        self.fetches = 0  # fetches started, ok or not
        self.loaded = False  # one fetch has succeeded
        self._keys: dict[str | None, PyJWK] = {}
        self._last = -math.inf  # when the last fetch started (clock)
        self._inflight: asyncio.Task[bool] | None = None
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lookups

    def find(self, kid: str | None) -> PyJWK | None:
        """The key a token's ``kid`` names; a token without one may use a set that holds
        exactly one key."""
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid) if kid is not None else None

    def holds(self, kid: str) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    # ------------------------------------------------------------------ fetching

    def may_refetch(self) -> bool:
        """Whether :meth:`refetch` would fetch (or join a fetch) now."""
        return self._inflight is not None or self.clock() - self._last >= self.refetch_s

    async def refetch(self) -> bool:
        """For a token with an unknown ``kid``: join the fetch in flight, or start one
        unless one started within :attr:`refetch_s`. True when a fetch ran and
        succeeded (the caller may look again)."""
        if self._inflight is None:
            if self.clock() - self._last < self.refetch_s:
                return False
            self._fetch()
        assert self._inflight is not None
        return await asyncio.shield(self._inflight)  # a caller gone does not stop the fetch

    def _fetch(self) -> asyncio.Task[bool]:
        """Start a fetch that every caller until its end shares."""
        if self._inflight is None:
            self._last = self.clock()
            self.fetches += 1
            task = asyncio.get_running_loop().create_task(self._load(), name="jwks-fetch")
            self._inflight = task
            task.add_done_callback(self._fetched)
        return self._inflight

    def _fetched(self, task: asyncio.Task[bool]) -> None:
        self._inflight = None

    async def _load(self) -> bool:
        try:
            keys = usable(PyJWKSet.from_dict(await self.download()))
        except (FetchError, jwt.PyJWTError, ValueError, TypeError, AttributeError) as exc:
            log.warning("cannot load the key set from %s: %s", self.url, exc)
            self._count("failed")
            return False
        if not keys:
            log.warning("the key set at %s holds no signing key we can use", self.url)
            self._count("failed")
            return False
        gone = set(self._keys) - set(keys)
        new = set(keys) - set(self._keys)
        if new or gone:
            log.info(
                "key set from %s: %d keys (new %s, gone %s)",
                self.url,
                len(keys),
                sorted(map(str, new)) or "-",
                sorted(map(str, gone)) or "-",
            )
        self._keys = keys
        self.loaded = True
        self._count("ok")
        if self.metrics is not None:
            self.metrics.jwks_keys.set(len(keys))
        return True

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.jwks_fetches.labels(outcome).inc()

    async def download(self) -> dict[str, Any]:
        """One fetch of the key set's JSON, bounded in time and size (``natsgate check``
        uses it alone)."""
        try:
            async with (
                asyncio.timeout(self.timeout_s),
                aiohttp.ClientSession(trust_env=True) as http,
                http.get(self.url, headers={"Accept": "application/json"}) as resp,
            ):
                if resp.status != 200:
                    raise FetchError(f"HTTP {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_BYTES:
                        raise FetchError("larger than 1 MiB")
        except TimeoutError:
            raise FetchError(f"no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise FetchError(str(exc) or type(exc).__name__) from None
        try:
            data = json.loads(body)
        except ValueError:
            raise FetchError("not JSON") from None
        if not isinstance(data, dict):
            raise FetchError('not a key set (want {"keys": [...]})')
        return data

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        """Fetch now, and keep the set fresh until :meth:`close`."""
        self._task = asyncio.get_running_loop().create_task(self._keep(), name="jwks")

    async def _keep(self) -> None:
        pause = 1.0
        while True:
            if await asyncio.shield(self._fetch()):
                pause = 1.0
                await asyncio.sleep(self.refresh_s)
            else:
                if not self.loaded:
                    log.warning(
                        "no keys from %s yet: its tokens are refused; retrying in %g s",
                        self.url,
                        pause,
                    )
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.refetch_s)

    async def close(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._inflight = None
