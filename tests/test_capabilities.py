"""The capability document and its checks (pure, deny by default)."""

from __future__ import annotations

import json

from natsgate.capabilities import NONE, Capabilities, Kind

DOC = {
    "subjects": ["chat.>"],
    "publish": ["chat.room.*"],
    "commands": ["svc.echo"],
    "buckets": {"todos": ["user.alice.>"]},
    "streams": {"CHAT": ["chat.room.*"]},
}


def caps(doc: object = DOC) -> Capabilities:
    return Capabilities.parse(json.dumps(doc).encode())


def test_default_deny() -> None:
    for c in (
        Capabilities.parse(None),
        Capabilities.parse(b""),
        Capabilities.parse(b"not json"),
        Capabilities.parse(b"[1]"),
        caps({}),
    ):
        assert not c.can_subscribe("a")
        assert not c.can_publish("a")
        assert not c.can_command("a")
        assert not c.can_watch("todos", ">")
        assert not c.can_read("CHAT", ["chat.room.1"])
        assert not c.can_join("a")
        assert not c.admin
    assert NONE.to_json() == {
        "subjects": [],
        "publish": [],
        "commands": [],
        "buckets": {},
        "streams": {},
        "presence": [],
        "admin": False,
    }


def test_grants() -> None:
    c = caps()
    assert c.can_subscribe("chat.room.*")
    assert not c.can_subscribe("other")
    assert c.can_publish("chat.room.1")
    assert not c.can_publish("chat.x.y")
    assert c.can_command("svc.echo") and not c.can_command("svc.other")
    assert c.can_watch("todos", "user.alice.>")
    assert not c.can_watch("todos", ">")
    assert not c.can_watch("todos", "user.bob.1")
    assert not c.can_watch("other", "user.alice.1")
    assert c.can_read("CHAT", ["chat.room.*"])
    assert not c.can_read("CHAT", ["chat.>"])
    assert not c.can_read("CHAT", [])


def test_invalid_grants_are_dropped() -> None:
    c = caps({"subjects": ["ok.>", "bad..x", "", "a.>.b"]})
    assert c.subjects == ["ok.>"]


def test_mistyped_document_grants_nothing() -> None:
    assert caps({"subjects": "chat.>"}) == NONE
    assert caps({"buckets": ["todos"]}) == NONE


def test_allows_rechecks_every_kind() -> None:
    c = caps()
    assert c.allows(Kind.SUB, "chat.x", ["chat.x"])
    assert not c.allows(Kind.SUB, "x", ["x"])
    assert c.allows(Kind.KV, "todos", ["user.alice.1"])
    assert c.allows(Kind.JS, "CHAT", ["chat.room.*"])
    assert not c.allows(Kind.JS, "CHAT", ["chat.room.*", "chat.other"])


def test_wildcard_bucket_and_stream_names() -> None:
    c = caps({"buckets": {"*": ["pub.>"]}, "streams": {"*": ["x.>"]}})
    assert c.can_watch("anything", "pub.a")
    assert c.can_read("S", ["x.y"])
    assert c.has_stream("S")
