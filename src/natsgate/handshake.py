"""The HTTP side of a WebSocket upgrade: read a request head, check it is an upgrade,
and write the answers (101, or a plain refusal). Pure logic, no I/O.

Only ``GET /ws`` heads are parsed here; every other request goes to aiohttp untouched.
The permessage-deflate extension (RFC 7692) is agreed here too: :func:`negotiate_deflate`.
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


def switching(accept: str, deflate: Deflate | None = None) -> bytes:
    ext = f"Sec-WebSocket-Extensions: {deflate.response()}\r\n" if deflate else ""
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n{ext}\r\n"
    ).encode()


# ------------------------------------------------------------------ permessage-deflate


@dataclass(frozen=True, slots=True)
class Deflate:
    """An agreed permessage-deflate (RFC 7692). Always without context takeover both
    ways, so a connection keeps no zlib state between messages and a message deflated
    once is valid for every connection with the same window (``deflate.py``)."""

    server_wbits: int = 15  # the window our messages use: 15 unless the client asked less
    echo_server_wbits: bool = False  # the offer named server_max_window_bits: answer it

    def response(self) -> str:
        out = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        if self.echo_server_wbits:
            out += f"; server_max_window_bits={self.server_wbits}"
        return out


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WBITS = {str(n): n for n in range(8, 16)}  # RFC 7692 §7.1.2: exactly "8" to "15"
Params = list[tuple[str, str | None]]


def parse_extensions(value: str) -> list[tuple[str, Params]] | None:
    """``Sec-WebSocket-Extensions`` (RFC 6455 §9.1) as ``[(name, [(param, value)])]``;
    None when it does not parse (then no extension is agreed; the upgrade goes on)."""
    out: list[tuple[str, Params]] = []
    pos, n = 0, len(value)

    def ows() -> None:
        nonlocal pos
        while pos < n and value[pos] in " \t":
            pos += 1

    def token() -> str | None:
        nonlocal pos
        start = pos
        while pos < n and value[pos] in _TCHAR:
            pos += 1
        return value[start:pos] or None

    def quoted() -> str | None:
        nonlocal pos
        end = value.find('"', pos + 1)
        if end < 0 or "\\" in value[pos:end]:
            return None
        inner, pos = value[pos + 1 : end], end + 1
        return inner if inner and all(c in _TCHAR for c in inner) else None

    while True:
        ows()
        name = token()
        if name is None:
            return None
        params: Params = []
        ows()
        while pos < n and value[pos] == ";":
            pos += 1
            ows()
            key = token()
            if key is None:
                return None
            ows()
            val = None
            if pos < n and value[pos] == "=":
                pos += 1
                ows()
                val = quoted() if pos < n and value[pos] == '"' else token()
                if val is None:
                    return None
                ows()
            params.append((key.lower(), val))
        out.append((name.lower(), params))
        if pos == n:
            return out
        if value[pos] != ",":
            return None
        pos += 1


def _accept_offer(params: Params) -> Deflate | None:
    """One permessage-deflate offer accepted, or None: declined (RFC 7692 §7.1)."""
    seen: set[str] = set()
    server_wbits: int | None = None
    for key, val in params:
        if key in seen:
            return None  # a parameter twice makes the offer invalid (§7)
        seen.add(key)
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if val is not None:
                return None
        elif key == "server_max_window_bits":
            server_wbits = _WBITS.get(val or "")
            # zlib's raw deflate has no 256-byte window: an 8 cannot be honoured (§7.1.2.1)
            if server_wbits is None or server_wbits < 9:
                return None
        elif key == "client_max_window_bits":
            # a client's limit on its own window: we inflate with 15, enough for any
            if val is not None and val not in _WBITS:
                return None
        else:
            return None  # a parameter we do not know (§7)
    return Deflate(server_wbits or 15, server_wbits is not None)


def negotiate_deflate(headers: CIMultiDict[str], mode: str) -> Deflate | None:
    """The first permessage-deflate offer of the request that we can honour, or None
    (also when ``mode`` is ``off``): a declined offer never fails the upgrade."""
    if mode == "off":
        return None
    offers = parse_extensions(", ".join(headers.getall("Sec-WebSocket-Extensions", [])))
    for name, params in offers or ():
        if name == "permessage-deflate" and (agreed := _accept_offer(params)) is not None:
            return agreed
    return None


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
