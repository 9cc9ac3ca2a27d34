"""Tokens of an identity provider (JWT_JWKS_URL): a real aiohttp server on port 0 serves
the key set, keys are made with ``cryptography`` (RSA 2048, EC P-256, Ed25519), and tokens
go through real WebSocket upgrades, ``/auth/me`` and the ``auth`` op of a real gateway."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from natsgate.auth import AuthError, UnknownKey, Verifier
from natsgate.jwks import KeySet, usable

from .conftest import SECRET, connect, unique
from .helpers import Gw, T, WsClient, eventually

ISSUER = "https://id.example.test/realms/app"
AUDIENCE = "natsgate"


# ------------------------------------------------------------------ keys and the provider


@dataclass
class Key:
    """One signing key of the provider: its private half signs, its JWK is published."""

    alg: str
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if self.alg == "RS256":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk_data = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif self.alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.jwk_data = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.jwk_data = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)

    def jwk(self) -> dict[str, Any]:
        # no "alg" in the EC key: the gateway infers it from the curve (P-256: ES256)
        extra = {} if self.alg == "ES256" else {"alg": self.alg}
        return {**self.jwk_data, "kid": self.kid, "use": "sig", **extra}

    def token(self, user: str = "alice", ttl: float = 3600, **claims: Any) -> str:
        body = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time() + ttl)}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.private, self.alg, headers={"kid": self.kid})

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


@dataclass
class Idp:
    url: str
    keys: list[Key]
    hits: int = 0
    status: int = 200

    def serve(self, *keys: Key) -> None:
        self.keys = list(keys)


@pytest_asyncio.fixture
async def idp() -> AsyncIterator[Idp]:
    """An identity provider's JWKS endpoint: a real HTTP server on port 0."""
    state = Idp("", [])

    async def jwks(request: web.Request) -> web.Response:
        state.hits += 1
        if state.status != 200:
            return web.Response(status=state.status, text="down")
        return web.json_response({"keys": [k.jwk() for k in state.keys]})

    app = web.Application()
    app.router.add_get("/certs", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/certs"
    yield state
    await runner.cleanup()


RSA, EC, ED = Key("RS256"), Key("ES256"), Key("EdDSA")  # made once: RSA keys take a while


async def status_of(gw: Gw, token: str) -> int:
    """The upgrade's answer: 101, or the refusal's status."""
    try:
        c = await WsClient.open(gw.ws_url, token=token)
    except aiohttp.WSServerHandshakeError as e:
        return e.status
    first = await c.recv()
    assert first["op"] == "cap_update"
    await c.close()
    return 101


async def me(gw: Gw, token: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/auth/me", headers=headers) as r:
        return r.status, await r.json()


def fake_clock(gw: Gw) -> Callable[[float], None]:
    """Move the key set's clock by hand (the 30 s bound without waiting 30 s)."""
    keys = gw.gateway.keys
    assert keys is not None
    now = [time.monotonic()]
    keys.clock = lambda: now[0]

    def advance(seconds: float) -> None:
        now[0] += seconds

    return advance


async def jwks_gw(make_gw: Any, idp: Idp, **changes: Any) -> Gw:
    changes.setdefault("jwt_issuer", ISSUER)
    changes.setdefault("jwt_audience", AUDIENCE)
    gw: Gw = await make_gw(jwt_jwks_url=idp.url, **changes)
    keys = gw.gateway.keys
    assert keys is not None
    await eventually(lambda: keys.loaded, 3 * T)
    return gw


# ------------------------------------------------------------------ accepted


async def test_each_key_type_opens_a_websocket_and_auth_me(make_gw: Any, idp: Idp) -> None:
    idp.serve(RSA, EC, ED)
    gw = await jwks_gw(make_gw, idp)
    for key in (RSA, EC, ED):
        user = unique("idp")
        await gw.set_caps(user, {"subjects": [f"x.{user}"]})
        c = await WsClient.open(gw.ws_url, token=key.token(user))
        first = await c.recv()
        assert first["op"] == "cap_update" and first["data"]["caps"]["subjects"] == [f"x.{user}"]
        await c.ok("sub", f"x.{user}")
        await c.close()
        status, body = await me(gw, key.token(user))
        assert (status, body["user"], body["caps"]["subjects"]) == (200, user, [f"x.{user}"])
    # HS256 tokens of JWT_SECRET still work beside them
    c = await connect(gw, unique("hs"))
    await c.close()
    assert idp.hits == 1  # known kids: no fetch beyond the one at start


async def test_auth_op_refreshes_with_a_provider_token(make_gw: Any, idp: Idp) -> None:
    idp.serve(RSA, ED)
    gw = await jwks_gw(make_gw, idp)
    user = unique("r")
    c = await WsClient.open(gw.ws_url, token=RSA.token(user, ttl=60))
    await c.recv()
    later = int(time.time()) + 7200
    reply = await c.ok("auth", data={"token": ED.token(user, exp=later)})
    assert reply["data"]["exp"] == later
    # an HS256 token of the same user refreshes too; another user's is forbidden
    from natsgate.auth import mint_token

    await c.ok("auth", data={"token": mint_token(user, SECRET, 3600)})
    assert (await c.error("auth", data={"token": RSA.token("mallory")}))["code"] == "forbidden"
    expired = RSA.token(user, ttl=-10)
    assert (await c.error("auth", data={"token": expired}))["code"] == "unauthorized"
    await c.close()


# ------------------------------------------------------------------ rotation and kids


async def test_rotation_new_key_works_and_the_old_is_refused_once_gone(
    make_gw: Any, idp: Idp
) -> None:
    old, new = Key("RS256"), Key("EdDSA")
    idp.serve(old)
    gw = await jwks_gw(make_gw, idp)
    advance = fake_clock(gw)
    assert await status_of(gw, old.token()) == 101
    idp.serve(old, new)  # the provider publishes the next key beside the current one
    advance(31)
    assert await status_of(gw, new.token()) == 101  # unknown kid: one refetch, then in
    assert idp.hits == 2
    assert await status_of(gw, old.token()) == 101  # both in the set
    idp.serve(new)  # the old key retires
    assert await status_of(gw, old.token()) == 101  # not refetched yet: still held
    advance(31)
    stranger = Key("ES256")  # a token with a kid nobody has: it makes the next refetch
    assert await status_of(gw, stranger.token()) == 401
    assert idp.hits == 3
    assert await status_of(gw, old.token()) == 401
    assert (await me(gw, old.token()))[0] == 401
    assert await status_of(gw, new.token()) == 101


async def test_unknown_kid_refetches_at_most_once_per_30_s(make_gw: Any, idp: Idp) -> None:
    idp.serve(RSA)
    gw = await jwks_gw(make_gw, idp)
    advance = fake_clock(gw)
    assert idp.hits == 1

    async def flood(n: int) -> list[int]:
        return await asyncio.gather(*(status_of(gw, Key("EdDSA").token()) for _ in range(n)))

    stranger = Key("EdDSA")
    assert set(await flood(20)) == {401}  # within 30 s of the fetch at start: no fetch
    assert (await me(gw, stranger.token()))[0] == 401
    assert idp.hits == 1
    advance(31)
    assert set(await flood(20)) == {401}  # twenty unknown kids at once: one shared fetch
    assert idp.hits == 2
    assert set(await flood(20)) == {401}
    assert (await me(gw, stranger.token()))[0] == 401
    c = await WsClient.open(gw.ws_url, token=RSA.token("alice"))
    await c.recv()
    assert (await c.error("auth", data={"token": stranger.token()}))["code"] == "unauthorized"
    assert idp.hits == 2
    advance(31)
    assert (await c.error("auth", data={"token": stranger.token()}))["code"] == "unauthorized"
    assert idp.hits == 3  # the auth op refetches too, under the same bound
    await c.close()
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
        text = await r.text()
    assert 'natsgate_jwks_fetches_total{outcome="ok"} 3.0' in text
    assert "natsgate_jwks_keys 1.0" in text


# ------------------------------------------------------------------ refused


async def test_wrong_issuer_or_audience_is_refused(make_gw: Any, idp: Idp) -> None:
    idp.serve(EC)
    gw = await jwks_gw(make_gw, idp)
    assert await status_of(gw, EC.token()) == 101
    assert await status_of(gw, EC.token(iss="https://evil.example.test")) == 401
    assert await status_of(gw, EC.token(aud="another-app")) == 401
    assert await status_of(gw, EC.token(aud=None)) == 401  # JWT_AUDIENCE set: aud required
    assert await status_of(gw, EC.token(iss=None)) == 401
    assert await status_of(gw, EC.token(aud=["other", AUDIENCE])) == 101  # one of several
    status, body = await me(gw, EC.token(aud="another-app"))
    assert (status, body["error"]) == (401, "token audience is not accepted")


async def test_algorithm_confusion_and_alg_none_are_refused(make_gw: Any, idp: Idp) -> None:
    idp.serve(RSA, EC)
    gw = await jwks_gw(make_gw, idp)
    claims = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600}
    # HS256 with the gateway's real secret, but naming a key of the provider
    hs_kid = jwt.encode(claims, SECRET, "HS256", headers={"kid": RSA.kid})
    assert await status_of(gw, hs_kid) == 401
    status, body = await me(gw, hs_kid)
    assert status == 401 and "HS256" in body["error"]
    # the classic: HS256 "signed" with the provider's public key as the HMAC secret
    assert await status_of(gw, _hmac_token(claims, RSA.kid, RSA.public_pem())) == 401
    # alg none, with and without a kid
    for kid in (RSA.kid, None):
        assert await status_of(gw, _unsigned(claims, kid)) == 401
    # signed by the EC key, naming the RSA key's kid (and the other way round)
    assert await status_of(gw, _resign(EC, claims, kid=RSA.kid)) == 401
    assert await status_of(gw, _resign(RSA, claims, kid=EC.kid)) == 401
    # RS512 by the RSA key: that key is pinned to RS256
    assert await status_of(gw, jwt.encode(claims, RSA.private, "RS512", {"kid": RSA.kid})) == 401
    assert idp.hits == 1  # none of these fetched anything (known kids, or not asymmetric)


async def test_user_claim_expiry_and_bad_user_ids(make_gw: Any, idp: Idp) -> None:
    idp.serve(ED)
    gw = await jwks_gw(make_gw, idp, jwt_user_claim="preferred_username")
    subject = str(uuid.uuid4())
    tok = ED.token(subject, preferred_username="carol")
    assert (await me(gw, tok))[1]["user"] == "carol"
    assert await status_of(gw, tok) == 101
    assert await status_of(gw, ED.token(subject)) == 401  # no preferred_username
    assert await status_of(gw, ED.token(subject, preferred_username="carol.smith")) == 401
    assert await status_of(gw, ED.token(subject, preferred_username="a>b")) == 401
    assert await status_of(gw, ED.token(subject, preferred_username=7)) == 401
    # exp: required, a number, in the future
    assert await status_of(gw, ED.token(preferred_username="carol", ttl=-5)) == 401
    assert await status_of(gw, ED.token(preferred_username="carol", exp=None)) == 401
    assert await status_of(gw, ED.token(preferred_username="carol", exp="9999999999")) == 401
    status, body = await me(gw, ED.token(preferred_username="carol", ttl=-5))
    assert (status, body["error"]) == (401, "token expired")


async def test_a_live_connection_of_a_provider_token_ends_at_its_exp(
    make_gw: Any, idp: Idp
) -> None:
    idp.serve(RSA)
    gw = await jwks_gw(make_gw, idp)
    c = await WsClient.open(gw.ws_url, token=RSA.token("dave", exp=time.time() + 1.5))
    await c.recv()
    err = await c.expect(lambda e: e["op"] == "error", 2 * T)
    assert err["data"]["code"] == "unauthorized"
    assert await c.wait_closed(2 * T) == 4001


# ------------------------------------------------------------------ JWKS only, start-up


async def test_jwks_only_takes_no_hs256_token_and_has_no_password_login(
    make_gw: Any, idp: Idp
) -> None:
    idp.serve(RSA)
    gw = await jwks_gw(make_gw, idp, jwt_secret="")
    assert await status_of(gw, RSA.token()) == 101
    assert await status_of(gw, _hmac_token({"sub": "x", "exp": 2**31}, None, b"")) == 401
    assert await status_of(gw, jwt.encode({"sub": "x", "exp": 2**31}, SECRET, "HS256")) == 401
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw.url}/auth/login", json={"username": "alice", "password": "pw"}) as r,
    ):
        assert r.status == 404
        assert "password login is off" in (await r.json())["error"]


async def test_provider_unreachable_at_start_then_back(make_gw: Any, idp: Idp) -> None:
    """The gateway starts and serves HS256 tokens while the key set cannot be had; the
    start-up loop keeps trying, and once the provider answers its tokens work."""
    idp.serve(EC)
    idp.status = 503
    gw: Gw = await make_gw(jwt_jwks_url=idp.url)
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/healthz") as r:
        assert r.status == 200  # readiness is NATS's: HS256 tokens work meanwhile
    c = await connect(gw, "erin")
    await c.close()
    await eventually(lambda: idp.hits >= 2, 3 * T)  # retried
    assert await status_of(gw, EC.token(aud=None, iss=None)) == 401
    idp.status = 200
    keys = gw.gateway.keys
    assert keys is not None
    await eventually(lambda: keys.loaded, 6 * T)
    assert await status_of(gw, EC.token(aud=None, iss=None)) == 101


async def test_the_set_is_refreshed_on_its_own_and_a_failed_fetch_keeps_the_keys(
    idp: Idp,
) -> None:
    """No token needs to name a new kid for a retired key to go: the periodic fetch."""
    old, new = Key("EdDSA"), Key("EdDSA")
    idp.serve(old)
    keys = KeySet(idp.url)
    keys.refresh_s = 0.2
    keys.start()
    try:
        await eventually(lambda: keys.holds(old.kid), 3 * T)
        idp.status = 503  # the provider fails: what was fetched stays
        hits = idp.hits
        await eventually(lambda: idp.hits >= hits + 2, 3 * T)
        assert keys.holds(old.kid)
        idp.status = 200
        idp.serve(new)
        await eventually(lambda: keys.holds(new.kid) and not keys.holds(old.kid), 6 * T)
        assert keys.find(None) is not None  # one key: a token without kid may use it
    finally:
        await keys.close()


# ------------------------------------------------------------------ pure: the verifier


class StaticKeys:
    """A key set already fetched (no refetch): the verifier's rules without sockets."""

    def __init__(self, *keys: Key) -> None:
        self.keys = usable(jwt.PyJWKSet([k.jwk() for k in keys]))

    def find(self, kid: str | None) -> jwt.PyJWK | None:
        return self.keys.get(kid) if kid is not None else None

    def holds(self, kid: str) -> bool:
        return kid in self.keys

    async def refetch(self) -> bool:
        return False


def test_usable_keeps_only_asymmetric_signing_keys() -> None:
    oct_key = {"kty": "oct", "k": base64.urlsafe_b64encode(b"k" * 32).decode(), "kid": "o"}
    enc = {**RSA.jwk(), "kid": "e", "use": "enc"}
    keys = usable(jwt.PyJWKSet([oct_key, enc, RSA.jwk(), ED.jwk()]))
    assert set(keys) == {RSA.kid, ED.kid}
    assert keys[RSA.kid].algorithm_name == "RS256" and keys[ED.kid].algorithm_name == "EdDSA"


@settings(max_examples=40, deadline=None)
@given(
    signer=st.sampled_from([RSA, EC, ED]),
    named=st.sampled_from([RSA, EC, ED]),
    alg=st.sampled_from(["RS256", "RS512", "PS256", "ES256", "EdDSA", "HS256"]),
)
def test_a_key_signs_only_with_its_own_algorithm(signer: Key, named: Key, alg: str) -> None:
    """Whatever the header says, a token is accepted only when the key its kid names made
    it, with that key's algorithm; an HS256 token naming a provider key never is."""
    v = Verifier(secret=SECRET, keys=StaticKeys(RSA, EC, ED), audience=AUDIENCE, issuer=ISSUER)
    claims = {"sub": "u", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}
    if alg == "HS256":
        token = jwt.encode(claims, SECRET, alg, headers={"kid": named.kid})
    else:
        try:
            token = jwt.encode(claims, signer.private, alg, headers={"kid": named.kid})
        except (TypeError, ValueError, jwt.InvalidKeyError):
            return  # this key cannot make that algorithm at all
    ok = alg != "HS256" and signer is named and alg == signer.alg
    try:
        v.verify(token)
    except AuthError:
        assert not ok
    else:
        assert ok


def test_verifier_refuses_without_keys_and_reports_unknown_kids() -> None:
    claims = {"sub": "u", "exp": int(time.time()) + 60}
    tok = RSA.token("u", aud=None, iss=None)
    with pytest.raises(AuthError, match="invalid token"):
        Verifier(secret=SECRET).verify(tok)  # no JWT_JWKS_URL: RS256 is not taken
    with pytest.raises(UnknownKey):
        Verifier(secret=SECRET, keys=StaticKeys(EC)).verify(tok)
    assert Verifier(secret=SECRET, keys=StaticKeys(RSA)).verify(tok).user == "u"
    with pytest.raises(AuthError):
        Verifier(secret="", keys=StaticKeys(RSA)).verify(_hmac_token(claims, None, b""))
    with pytest.raises(AuthError):
        Verifier(secret=SECRET).verify(jwt.encode(claims, SECRET, "HS384"))


# ------------------------------------------------------------------ hand-made tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _head(alg: str, kid: str | None) -> str:
    header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    return _b64(json.dumps(header).encode())


def _hmac_token(claims: dict[str, Any], kid: str | None, secret: bytes) -> str:
    signing = f"{_head('HS256', kid)}.{_b64(json.dumps(claims).encode())}"
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(sig)}"


def _unsigned(claims: dict[str, Any], kid: str | None) -> str:
    return f"{_head('none', kid)}.{_b64(json.dumps(claims).encode())}."


def _resign(key: Key, claims: dict[str, Any], *, kid: str) -> str:
    return jwt.encode(claims, key.private, key.alg, headers={"kid": kid})
