"""The HTTP side of a WebSocket upgrade: read a request head, check it is an upgrade,
and write the answers (101, or a plain refusal). Pure logic, no I/O.

Only ``GET /ws`` heads are parsed here; every other request goes to aiohttp untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlsplit

from multidict import CIMultiDict, MultiDict

from .wsframe import accept_key, valid_key

MAX_HEAD = 16 * 1024  # a JWT in a header or cookie fits with room to spare
WS_PATH = b"/ws"


class HeadError(Exception):
    """The head cannot be served: answer ``status`` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Head:
    """One parsed request head; lives only for the handshake."""

    path: str
    query: MultiDict[str]
    headers: CIMultiDict[str]

    @property
    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for raw in self.headers.getall("Cookie", []):
            try:
                jar.load(raw)
            except CookieError:
                continue  # as browsers do: a bad cookie header is skipped, not fatal
        return {k: m.value for k, m in jar.items()}


def routes_here(request_line: bytes) -> bool:
    """Whether a request line is ``GET /ws`` (with or without a query) and so ours."""
    if not request_line.startswith(b"GET " + WS_PATH):
        return False
    rest = request_line[len(WS_PATH) + 4 : len(WS_PATH) + 5]
    return rest in (b" ", b"?")


def parse_head(raw: bytes) -> Head:
    """Parse a request head (everything before the blank line)."""
    lines = raw.decode("latin-1").split("\r\n")  # latin-1: every byte is a character
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1":
        raise HeadError(400, "expected an HTTP/1.1 request line")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise HeadError(400, "malformed header line")
        headers.add(name, value.strip(" \t"))
    target = urlsplit(parts[1])
    return Head(target.path, MultiDict(parse_qsl(target.query)), headers)


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


def check_upgrade(head: Head) -> str:
    """The ``Sec-WebSocket-Accept`` to answer with, or :class:`HeadError` (RFC 6455 §4.2.1)."""
    h = head.headers
    if h.get("Content-Length", "0") != "0" or "Transfer-Encoding" in h:
        raise HeadError(400, "an upgrade request has no body")
    if "websocket" not in _tokens(h.get("Upgrade", "")):
        raise HeadError(400, "not a WebSocket upgrade (Upgrade: websocket is missing)")
    if "upgrade" not in _tokens(h.get("Connection", "")):
        raise HeadError(400, "not a WebSocket upgrade (Connection: upgrade is missing)")
    if h.get("Sec-WebSocket-Version") != "13":
        raise HeadError(426, "only WebSocket version 13 is supported")
    key = h.get("Sec-WebSocket-Key", "")
    if not valid_key(key):
        raise HeadError(400, "missing or invalid Sec-WebSocket-Key")
    return accept_key(key)


def switching(accept: str) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


def refusal(status: int, reason: str) -> bytes:
    """A plain JSON answer, ``{"error": reason}``, after which the connection closes."""
    body = json.dumps({"error": reason}).encode()
    extra = "Sec-WebSocket-Version: 13\r\n" if status == 426 else ""
    return (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    ).encode() + body
