"""Shared fixtures: a real nats-server, a real gateway on port 0, raw WebSocket clients.

Nothing is mocked. Waits are for events, bounded by one time unit ``T`` that
``NATSGATE_TEST_TIMEOUT_SCALE`` scales on slow machines.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from natsgate.auth import mint_token
from natsgate.config import Config
from natsgate.natsrunner import NatsServer

from .helpers import Gw, T, WsClient, start_gateway

SECRET = "test-secret-0123456789-abcdefghijklmnop"


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def gateway_env(nats_url: str) -> dict[str, str]:
    """What a ``natsgate`` process needs against a test nats-server: the test secret and
    buckets of its own."""
    return {
        "JWT_SECRET": SECRET,
        "NATS_URL": nats_url,
        "AUTH_BUCKET": unique("caps_"),
        "AUTH_CREDS_BUCKET": unique("creds_"),
        "AUTH_REVOKED_BUCKET": unique("revoked_"),
    }


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=tmp_path_factory.mktemp("js")).start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
def config(nats_server: NatsServer) -> Config:
    return Config(
        host="127.0.0.1",
        port=0,
        nats_urls=(nats_server.url,),
        jwt_secret=SECRET,
        auth_bucket=unique("caps_"),
        auth_creds_bucket=unique("creds_"),
        auth_revoked_bucket=unique("revoked_"),
        rate_per_s=0.0,  # tests send bursts; the limit has tests of its own
    )


@pytest_asyncio.fixture
async def gw(config: Config) -> AsyncIterator[Gw]:
    g = await start_gateway(config)
    yield g
    await g.stop()


@pytest_asyncio.fixture
async def make_gw(config: Config) -> AsyncIterator[Any]:
    """Start gateways with some config fields changed; all are stopped at the end."""
    started: list[Gw] = []

    async def make(**changes: Any) -> Gw:
        g = await start_gateway(dataclasses.replace(config, **changes))
        started.append(g)
        return g

    yield make
    for g in started:
        await g.stop()


@pytest.fixture
def token() -> Any:
    def make(user: str, ttl: float = 3600) -> str:
        return mint_token(user, SECRET, ttl)

    return make


async def connect(gw: Gw, user: str, *, first: bool = True, **kw: Any) -> WsClient:
    """A connected client; with ``first``, its first envelope (always ``cap_update``,
    protocol.md §1) is read and kept in ``client.first``."""
    c = await WsClient.open(gw.ws_url, token=mint_token(user, SECRET, 3600), **kw)
    if first:
        c.first = await c.recv()
        assert c.first["op"] == "cap_update", c.first
    return c


__all__ = [
    "SECRET",
    "Gw",
    "Path",
    "T",
    "WsClient",
    "aiohttp",
    "connect",
    "gateway_env",
    "json",
    "os",
    "unique",
]
