"""Why the gateway refused an upgrade. It answers 401 or 403 with ``{"error": reason}``
(token expired, no token, invalid token, token revoked, origin not allowed); aiohttp's
handshake error drops that body and says only "Invalid response status"."""

from __future__ import annotations

import asyncio
import json

import aiohttp

MAX_BODY = 4096  # a refusal is a short JSON object; anything longer is not the gateway's


class Refusals:
    """Makes the client's HTTP session and keeps the reason of the latest refused upgrade."""

    def __init__(self, timeout: float) -> None:
        self.reason = ""
        self._timeout = timeout

    def session(self) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._on_response)
        return aiohttp.ClientSession(trace_configs=[trace])

    def describe(self, exc: aiohttp.WSServerHandshakeError) -> str:
        """``token expired (HTTP 401)``, or aiohttp's words when the body said nothing."""
        return f"{self.reason} (HTTP {exc.status})" if self.reason else exc.message

    async def _on_response(
        self, _session: object, _ctx: object, params: aiohttp.TraceRequestEndParams
    ) -> None:
        resp = params.response
        self.reason = ""
        if resp.status < 400 or (resp.content_length or 0) > MAX_BODY:
            return
        try:
            async with asyncio.timeout(self._timeout):
                body = await resp.read()
            self.reason = str(json.loads(body)["error"])[:200]
        except Exception:  # not the gateway's JSON (a proxy's page): the status alone
            self.reason = ""
