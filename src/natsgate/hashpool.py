"""Password checks in a bounded pool (security.md).

An argon2id check costs ~150 ms of CPU on purpose. Run on the default executor, a flood of
logins (each from a fresh address and user name, so the throttle never bites) would queue
without bound and keep every core busy. Here at most ``threads`` checks run and
``waiting`` more wait; beyond that a login is answered 503 with ``Retry-After`` at once.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from .auth import Passwords


class PoolFull(Exception):
    """Every thread is busy and the queue is full: ask the client to come back."""


def default_threads() -> int:
    """Half the cores (argon2 releases the GIL): the other half keeps serving sockets."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class HashPool:
    def __init__(self, passwords: Passwords, threads: int = 0, waiting: int = 0) -> None:
        self.passwords = passwords
        self.threads = threads or default_threads()
        self.capacity = self.threads + (waiting or 4 * self.threads)
        self._busy = 0
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="argon2")

    @property
    def busy(self) -> int:
        return self._busy

    async def verify(self, stored: str | None, password: str) -> bool:
        if self._busy >= self.capacity:
            raise PoolFull
        self._busy += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, self.passwords.verify, stored, password
            )
        finally:
            self._busy -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
