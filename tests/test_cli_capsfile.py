"""Capability files validated strictly (:meth:`Capabilities.validate`) by ``natsgate user add
--caps`` and ``natsgate user caps``: one line naming the field and why, exit 2, nothing
written. The gateway's own reading (:meth:`Capabilities.parse`) stays lenient."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsgate.capabilities import FIELDS, Capabilities, CapabilitiesError
from natsgate.natsrunner import NatsServer

from .conftest import unique
from .test_cli import run

BAD = [
    ({"subjects": "chat.>"}, "subjects must be a list of patterns, got a string"),
    ({"subjets": ["chat.>"]}, "unknown field 'subjets' (did you mean 'subjects'?)"),
    ({"subjects": ["chat..x"]}, 'subjects[0] "chat..x" is no pattern: subject has an empty token'),
    ({"publish": ["a.>.b"]}, "publish[0] \"a.>.b\" is no pattern: '>' may only be the last"),
    ({"commands": ["svc.ec*"]}, 'commands[0] "svc.ec*" is no pattern: wildcards must be whole'),
    ({"admin": "yes"}, 'admin must be true or false, got a string ("yes")'),
    ({"admin": 1}, "admin must be true or false, got a number (1)"),
    ({"buckets": ["todos"]}, "buckets must be an object of name -> list of patterns, got a list"),
    ({"buckets": {"todos": "user.>"}}, "buckets.todos must be a list of patterns"),
    ({"streams": {"CHAT": ["ok", 7]}}, "streams.CHAT[1] must be a pattern string, got a number"),
    ({"streams": {"a.b": ["x"]}}, 'streams has the key "a.b": a name, or'),
    ({"presence": [""]}, 'presence[0] "" is no pattern: subject is empty'),
    ({"subjects": None}, "subjects must be a list of patterns, got null"),
    (["chat.>"], "must be a JSON object, got a list"),
]


@pytest.mark.parametrize(("doc", "needle"), BAD)
def test_validate_names_the_field_and_why(doc: object, needle: str) -> None:
    with pytest.raises(CapabilitiesError) as err:
        Capabilities.validate(json.dumps(doc))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)
    # the gateway still reads it leniently: whatever it cannot read grants nothing
    Capabilities.parse(json.dumps(doc).encode())


def test_validate_takes_every_field() -> None:
    doc = {
        "subjects": ["chat.>", "$KV.todos.>"],
        "publish": ["chat.room.*"],
        "commands": ["svc.echo"],
        "buckets": {"todos": ["user.alice.>"], "*": ["public.>"]},
        "streams": {"CHAT": ["chat.room.*"], ">": ["x"]},
        "presence": ["room.1"],
        "admin": True,
    }
    caps = Capabilities.validate(json.dumps(doc).encode())
    assert caps.to_json() == doc
    assert Capabilities.validate(b"{}") == Capabilities()
    with pytest.raises(CapabilitiesError, match="not JSON"):
        Capabilities.validate(b"{nope")


_TOKEN = st.sampled_from(["chat", "room", "*", ">", "a", "$KV", "", "x y", "ü", "b*"])
_PATTERN = st.lists(_TOKEN, min_size=0, max_size=4).map(".".join)
_VALUE: st.SearchStrategy[Any] = st.one_of(
    st.lists(_PATTERN, max_size=3),
    st.dictionaries(st.sampled_from(["todos", "*", "a.b", ">", "C"]), st.lists(_PATTERN)),
    st.booleans(),
    _PATTERN,
    st.none(),
    st.integers(),
)
_DOC = st.dictionaries(st.sampled_from([*FIELDS, "subjets", "admins"]), _VALUE, max_size=5)


@given(_DOC)
def test_validate_agrees_with_what_the_gateway_reads(doc: dict[str, Any]) -> None:
    """What the validator takes, the gateway reads the same (nothing dropped, nothing
    added); what it refuses, it refuses with one line that names a field or the document."""
    raw = json.dumps(doc).encode()
    try:
        caps = Capabilities.validate(raw)
    except CapabilitiesError as exc:
        msg = str(exc)
        assert "\n" not in msg and msg
        assert any(name in msg for name in (*doc, "JSON object"))
        return
    assert Capabilities.parse(raw) == caps
    assert Capabilities.validate(json.dumps(caps.to_json())) == caps


@pytest.fixture
def env(nats_server: NatsServer) -> dict[str, str]:
    return {
        "NATS_URL": nats_server.url,
        "AUTH_BUCKET": unique("caps_"),
        "AUTH_CREDS_BUCKET": unique("creds_"),
        "AUTH_REVOKED_BUCKET": unique("revoked_"),
        "JWT_SECRET": "",
    }


def _show(user: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run(["user", "show", user], env)


@pytest.mark.parametrize(("doc", "needle"), BAD[:6])
def test_bad_caps_file_is_refused_with_one_line(
    doc: object, needle: str, env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "caps.json"
    path.write_text(json.dumps(doc))
    r = run(["user", "add", "erin", "--caps", str(path)], env, stdin="pw\n")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"natsgate: capabilities file {path}: ")
    assert needle in lines[0]
    assert _show("erin", env).returncode == 1  # nothing was written, not even the password
    r = run(["user", "caps", "erin", str(path)], env)
    assert r.returncode == 2 and needle in r.stderr


def test_good_caps_file_is_stored_as_written(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "caps.json"
    doc = {"subjects": ["chat.>"], "buckets": {"todos": ["user.frank.>"]}, "admin": False}
    path.write_text(json.dumps(doc))
    r = run(["user", "caps", "frank", str(path)], env)
    assert r.returncode == 0 and "capabilities of frank set on NATS at nats://" in r.stdout
    r = _show("frank", env)
    assert r.returncode == 0, r.stderr
    assert "password: not set" in r.stdout
    shown = json.loads(r.stdout.split("capabilities: ", 1)[1])
    assert shown["subjects"] == ["chat.>"] and shown["buckets"] == {"todos": ["user.frank.>"]}
    path.write_text("{}")
    r = run(["user", "caps", "frank", str(path)], env)
    assert r.returncode == 0 and "grants nothing" in r.stderr
