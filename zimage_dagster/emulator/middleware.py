"""The outermost ASGI layer: a request ID on every answer, per-route accounting and HTTP
fault injection.

It sits outside Starlette's own middleware so that, under uvicorn, it holds the server's real
`send` (needed to drop a connection without an answer).

>>> route_of("/v1/images/generations"), route_of("/v1/tasks/x"), route_of("/_files/a.png"), route_of("/_emulator/stats")
('create', 'task', 'files', None)
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from zimage_dagster.emulator.faults import DroppedConnection, act_out
from zimage_dagster.emulator.state import EmulatorState
from zimage_dagster.emulator.tasks import FILES_PREFIX

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def route_of(path: str) -> str | None:
    """The fault/stats route name of a path: create, task, credits, files, or None (control...)."""
    if path == "/v1/images/generations":
        return "create"
    if path.startswith("/v1/tasks/") or path == "/v1/tasks":
        return "task"
    if path == "/v1/credits":
        return "credits"
    if path.startswith(FILES_PREFIX):
        return "files"
    return None


def new_request_id() -> str:
    """A fresh request ID, as the provider's gateway returns in `x-request-id`.

    >>> len(new_request_id()), new_request_id() != new_request_id()
    (32, True)
    """
    return secrets.token_hex(16)


def with_request_id(send: Send) -> Send:
    """`send` that adds an `x-request-id` header to the answer (faults included). Keeps the
    server's bound method reachable (`__self__`), which dropping a connection needs."""
    request_id = new_request_id().encode()

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers.append((b"x-request-id", request_id))
            message = {**message, "headers": headers}
        await send(message)

    sending.__self__ = getattr(send, "__self__", None)  # type: ignore[attr-defined]
    return sending


class EmulatorMiddleware:
    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = with_request_id(send)
        route = route_of(scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        state = self.state
        stats = state.stats
        if route == "files":
            stats.file_requests += 1
            if any(name.lower() == b"authorization" for name, _ in scope["headers"]):
                stats.file_requests_with_authorization += 1
        legacy = route == "credits" and state.config.legacy_credits_errors
        rule = state.faults.pick(route)
        label: int | str = "none"
        try:
            if rule is not None:
                stats.faults_fired += 1
                if rule.action == "slow" and not rule.after_create:
                    await asyncio.sleep(rule.delay_s)
                    rule = None
            if rule is None:

                async def recording_send(message: Message) -> None:
                    nonlocal label
                    if message["type"] == "http.response.start":
                        label = message["status"]
                    await send(message)

                await self.app(scope, receive, recording_send)
            elif not rule.after_create:
                await _drain_request(receive)
                label = await act_out(rule, send, legacy_envelope=legacy)
            else:
                # Run the real handler (a create makes its task), hold its answer, then act.
                held: list[Message] = []

                async def holding_send(message: Message) -> None:
                    held.append(message)

                await self.app(scope, receive, holding_send)
                if rule.action == "slow":
                    await asyncio.sleep(rule.delay_s)
                    for message in held:
                        await send(message)
                    label = held[0]["status"] if held else "none"
                else:
                    label = await act_out(rule, send, legacy_envelope=legacy)
        except DroppedConnection:
            label = "dropped"
            raise
        finally:
            stats.record_request(route, label)


async def _drain_request(receive: Receive) -> None:
    """Read the request body to its end before a fault answers or drops the connection.

    Closing a socket whose request body is still unread makes the kernel send a reset, which a
    client sees as a read error instead of "closed without an answer": a drop would then look
    different depending on how much of the body had arrived.
    """
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
