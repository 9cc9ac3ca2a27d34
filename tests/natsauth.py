"""Decentralised NATS auth for tests: an operator, an account and a user, as JWTs signed
with nkeys (what `nsc` would make), so the gateway's NATS_JWT/NATS_NKEY and NATS_CREDS
paths run against a real nats-server that refuses anyone else."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import nkeys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keypair(prefix: int) -> tuple[str, str, nkeys.KeyPair]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    kp = nkeys.from_seed(bytearray(seed))
    return seed.decode(), kp.public_key.decode(), kp


def _jwt(issuer: nkeys.KeyPair, issuer_pub: str, sub: str, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer_pub,
        "name": name,
        "sub": sub,
        "nats": nats,
    }
    claims["jti"] = (
        base64.b32encode(hashlib.sha256(json.dumps(claims).encode()).digest()).decode().rstrip("=")
    )
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = issuer.sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64(sig)}"


@dataclass
class Decentralised:
    server_config: str  # lines for nats-server's config
    user_jwt: str
    user_seed: str

    def creds(self) -> str:
        return (
            f"-----BEGIN NATS USER JWT-----\n{self.user_jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{self.user_seed}\n------END USER NKEY SEED------\n"
        )


def make() -> Decentralised:
    _, op_pub, op_kp = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    _, acc_pub, acc_kp = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    _, sys_pub, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, user_pub, _ = _keypair(nkeys.PREFIX_BYTE_USER)
    operator = _jwt(
        op_kp, op_pub, op_pub, "op", {"type": "operator", "version": 2, "system_account": sys_pub}
    )
    system = _jwt(op_kp, op_pub, sys_pub, "SYS", {"type": "account", "version": 2})
    unlimited = -1
    account = _jwt(
        op_kp,
        op_pub,
        acc_pub,
        "acc",
        {
            "type": "account",
            "version": 2,
            "limits": {
                "subs": unlimited,
                "data": unlimited,
                "payload": unlimited,
                "imports": unlimited,
                "exports": unlimited,
                "wildcards": True,
                "conn": unlimited,
                "leaf": unlimited,
                "mem_storage": unlimited,
                "disk_storage": unlimited,
                "streams": unlimited,
                "consumer": unlimited,
            },
        },
    )
    user = _jwt(
        acc_kp,
        acc_pub,
        user_pub,
        "gateway",
        {
            "type": "user",
            "version": 2,
            "pub": {},
            "sub": {},
            "subs": unlimited,
            "data": unlimited,
            "payload": unlimited,
        },
    )
    config = "\n".join(
        [
            f"operator: {operator}",
            f"system_account: {sys_pub}",
            "resolver: MEMORY",
            "resolver_preload: {",
            f"  {acc_pub}: {account}",
            f"  {sys_pub}: {system}",
            "}",
        ]
    )
    return Decentralised(config, user, user_seed)
