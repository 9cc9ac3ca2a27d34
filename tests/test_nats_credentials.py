"""The gateway's own NATS credentials (deploy.md): NATS_CREDS, or NATS_JWT + NATS_NKEY,
against a real nats-server in operator mode that refuses anyone without them; and
NATS_USER + NATS_PASSWORD, the embedded server's one user (security.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from natsgate.config import Config, Flags, load
from natsgate.natsrunner import Credentials, NatsServer

from . import natsauth
from .conftest import SECRET, connect, unique
from .helpers import start_gateway


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NatsServer, natsauth.Decentralised]]:
    auth = natsauth.make()
    server = NatsServer(store_dir=tmp_path_factory.mktemp("js"), extra_config=auth.server_config)
    server.start()
    yield server, auth
    server.stop()


async def roundtrip(cfg: Config, creds_file: Path) -> None:
    gw = await start_gateway(cfg)
    nc: NATS = await nats.connect(cfg.nats_urls[0], user_credentials=str(creds_file))
    try:
        user, p = unique("u"), unique("s")
        await gw.set_caps(user, {"subjects": [f"{p}.>"]})
        c = await connect(gw, user)
        await c.ok("sub", f"{p}.a")
        await nc.publish(f"{p}.a", b'"through an authenticated NATS"')
        assert (await c.expect(op="msg"))["data"] == "through an authenticated NATS"
        await c.close()
    finally:
        await nc.close()
        await gw.stop()


async def test_anonymous_is_refused(secured: tuple[NatsServer, natsauth.Decentralised]) -> None:
    server, _ = secured
    with pytest.raises(nats.errors.Error):
        await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)


async def test_creds_file(
    secured: tuple[NatsServer, natsauth.Decentralised], config: Config, tmp_path: Path
) -> None:
    server, auth = secured
    creds = tmp_path / "gateway.creds"
    creds.write_text(auth.creds())
    cfg = dataclasses.replace(config, nats_urls=(server.url,), nats_creds=creds)
    await roundtrip(cfg, creds)


async def test_jwt_and_nkey(
    secured: tuple[NatsServer, natsauth.Decentralised], config: Config, tmp_path: Path
) -> None:
    server, auth = secured
    creds = tmp_path / "other.creds"
    creds.write_text(auth.creds())
    cfg = dataclasses.replace(
        config, nats_urls=(server.url,), nats_jwt=auth.user_jwt, nats_nkey=auth.user_seed
    )
    await roundtrip(cfg, creds)


def test_user_commands_use_the_credentials(
    secured: tuple[NatsServer, natsauth.Decentralised], tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    server, auth = secured
    creds = tmp_path / "cli.creds"
    creds.write_text(auth.creds())
    env = {
        **os.environ,
        "NATS_URL": server.url,
        "AUTH_BUCKET": unique("caps_"),
        "AUTH_CREDS_BUCKET": unique("creds_"),
    }
    env.pop("NATS_CREDS", None)
    cmd = [sys.executable, "-m", "natsgate", "user", "add", "dave"]
    refused = subprocess.run(cmd, env=env, input="pw\n", capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "cannot connect to NATS" in refused.stderr
    ok = subprocess.run(
        cmd,
        env={**env, "NATS_CREDS": str(creds)},
        input="pw\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "user dave added" in ok.stdout


async def test_user_and_password(config: Config, tmp_path: Path) -> None:
    """NATS_USER + NATS_PASSWORD, against a server that accepts only that user (what
    ``serve --local`` runs), and kept out of the config's repr."""
    creds = Credentials.generate()
    server = NatsServer(store_dir=tmp_path / "js", credentials=creds).start()
    try:
        with pytest.raises(nats.errors.Error):
            await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)
        cfg = load(
            Flags(),
            {
                "JWT_SECRET": SECRET,
                "NATS_URL": server.url,
                "NATS_USER": creds.user,
                "NATS_PASSWORD": creds.password,
            },
        )
        assert creds.password not in repr(cfg) and creds.password not in repr(creds)
        cfg = dataclasses.replace(
            config, nats_urls=cfg.nats_urls, nats_user=cfg.nats_user, nats_password=creds.password
        )
        gw = await start_gateway(cfg)
        nc: NATS = await nats.connect(server.url, user=creds.user, password=creds.password)
        try:
            user, p = unique("u"), unique("s")
            await gw.set_caps(user, {"subjects": [f"{p}.>"]})
            c = await connect(gw, user)
            await c.ok("sub", f"{p}.a")
            await nc.publish(f"{p}.a", b'"with a password"')
            assert (await c.expect(op="msg"))["data"] == "with a password"
            await c.close()
        finally:
            await nc.close()
            await gw.stop()
    finally:
        server.stop()
