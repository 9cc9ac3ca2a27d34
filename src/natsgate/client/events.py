"""The client's events: a small typed emitter (see :meth:`Emitter.on`)."""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, overload

from .registry import CapUpdate
from .subscriptions import JsSubscription
from .wire import ClientState, DisconnectInfo, NatsgateError, ReconnectInfo

log = logging.getLogger("natsgate.client")

Remover = Callable[[], None]
NOTHING: Any = object()  # no current value to give a new listener


class Emitter(abc.ABC):
    """Listeners by event name; a coroutine listener runs in a task its owner spawns."""

    _listeners: dict[str, list[Callable[[Any], object]]]

    @abc.abstractmethod
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> Any:
        """Start ``coro`` as a task owned (and ended) by the client."""

    @overload
    def on(self, event: Literal["state"], callback: Callable[[ClientState], object]) -> Remover: ...
    @overload
    def on(
        self, event: Literal["cap_update"], callback: Callable[[CapUpdate], object]
    ) -> Remover: ...
    @overload
    def on(
        self, event: Literal["error"], callback: Callable[[NatsgateError], object]
    ) -> Remover: ...
    @overload
    def on(
        self, event: Literal["disconnect"], callback: Callable[[DisconnectInfo], object]
    ) -> Remover: ...
    @overload
    def on(
        self, event: Literal["reconnect"], callback: Callable[[ReconnectInfo], object]
    ) -> Remover: ...
    @overload
    def on(
        self, event: Literal["gap"], callback: Callable[[JsSubscription], object]
    ) -> Remover: ...
    def on(self, event: str, callback: Callable[[Any], object]) -> Remover:
        """Call ``callback`` on each ``event``; returns a function that removes it.

        Events: ``state`` (the new ClientState), ``cap_update`` (CapUpdate), ``error``
        (NatsgateError not tied to an awaited op), ``disconnect`` (DisconnectInfo: an open
        socket closed), ``reconnect`` (ReconnectInfo: open again, subscriptions re-sent),
        ``gap`` (a JsSubscription whose resume found messages gone from the stream).
        Callbacks may be coroutine functions; they then run in a task the client owns.

        ``cap_update`` holds a current value: a callback registered after ``await
        connect()`` is called once, soon after, with the latest capabilities (``revoked``
        and ``ended`` empty), then with each update. ``state`` events are transitions
        only; ``client.state`` and ``client.caps`` say what is now.
        """
        listeners = self._listeners.setdefault(event, [])
        listeners.append(callback)
        current = self._current(event)
        if current is not NOTHING:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # registered outside a loop: nothing has happened yet
                pass
            else:
                loop.call_soon(self._replay, event, callback, listeners, current)

        def remove() -> None:
            if callback in listeners:
                listeners.remove(callback)

        return remove

    def _current(self, event: str) -> Any:
        """What a listener of ``event`` registered now is given at once, or NOTHING."""
        return NOTHING

    def _replay(
        self, event: str, callback: Callable[[Any], object], listeners: list[Any], arg: Any
    ) -> None:
        if callback in listeners:  # not removed meanwhile
            self._call(event, callback, arg)

    def _emit(self, event: str, arg: Any) -> None:
        for callback in list(self._listeners.get(event, ())):
            self._call(event, callback, arg)

    def _call(self, event: str, callback: Callable[[Any], object], arg: Any) -> None:
        try:
            result = callback(arg)
        except Exception:
            log.exception("%s listener failed", event)
            return
        if inspect.iscoroutine(result):
            self.spawn(self._guard(result, event), f"on-{event}")

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, Any], event: str) -> None:
        try:
            await coro
        except Exception:
            log.exception("%s listener failed", event)
