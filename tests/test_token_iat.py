"""A token is never issued in the future of the clock that minted it.

Regression: ``iat`` was rounded to the nearest millisecond, so a token minted at
x.9996 s said x+1, and PyJWT (which compares ``iat`` with the whole current second)
refused it as not yet valid when it came back within the same 0.4 ms: one upgrade in a
test of 300 failed with 401 "invalid token"."""

from __future__ import annotations

import time

import jwt
from hypothesis import given
from hypothesis import strategies as st

from natsgate import auth

SECRET = "t" * 16 + "0123456789abcdefghij"


@given(st.floats(min_value=1.7e9, max_value=4e9, allow_nan=False))
def test_iat_is_never_after_the_minting_clock(now: float) -> None:
    real = time.time
    try:
        time.time = lambda: now  # the minting clock only; nothing else runs meanwhile
        token = auth.mint_token("alice", SECRET, 60)
    finally:
        time.time = real
    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    assert iat <= now


def test_a_token_minted_at_the_end_of_a_second_verifies_at_once() -> None:
    for _ in range(3):  # the old rounding failed about 2 tries in 5
        while time.time() % 1 < 0.9995:  # wait for the last half millisecond of a second
            time.sleep(max(0.0, 0.9995 - time.time() % 1) / 2)
        token = auth.mint_token("alice", SECRET, 60)
        assert auth.verify_token(token, SECRET).user == "alice"
