"""HTTP fault injection: which rule fires on a request, and how a fault is acted out on the wire.

Rules come from `EmulatorConfig.http_faults` (see `FaultRule`); the first matching rule whose
count is not used up and whose (seeded) probability draw succeeds fires.

>>> import random
>>> engine = FaultEngine([FaultRule(route="create", count=1)], random.Random(0))
>>> engine.pick("task") is None, engine.pick("create") is not None, engine.pick("create") is None
(True, True, True)
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from zimage_dagster.emulator.config import FaultRule
from zimage_dagster.emulator.errors import ApiError

Send = Any  # the ASGI send callable


class DroppedConnection(ConnectionAbortedError):
    """Raised to drop a connection when the server gives no access to its transport."""


class FaultEngine:
    """Picks the fault for a request; remembers how often count-limited rules have fired."""

    def __init__(self, rules: list[FaultRule], rng: random.Random) -> None:
        self.rules = list(rules)
        self._remaining = [rule.count for rule in self.rules]
        self._fired = [0 for _ in self.rules]
        self._rng = rng

    def pick(self, route: str) -> FaultRule | None:
        for i, rule in enumerate(self.rules):
            if rule.route not in (route, "*"):
                continue
            remaining = self._remaining[i]
            if remaining is not None and remaining <= 0:
                continue
            if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                continue
            if remaining is not None:
                self._remaining[i] = remaining - 1
            self._fired[i] += 1
            return rule
        return None

    def remaining(self) -> list[int | None]:
        """How many more times each rule may fire (`None`: unlimited)."""
        return list(self._remaining)

    def fired(self) -> list[int]:
        """How many times each rule has fired, in the order of `http_faults`.

        Tells faults apart that leave the same trace in the per-route status counts (a `slow`
        rule answers with the real status; `after_create` and plain rules share their status).
        """
        return list(self._fired)


def fault_error(rule: FaultRule) -> ApiError:
    return ApiError(
        rule.status, rule.code, rule.message or "Injected fault", retry_after=rule.retry_after
    )


async def send_json(
    send: Send, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def close_connection(send: Send) -> None:
    """Close the client connection at once, whatever was sent so far.

    uvicorn's `send` is a bound method of its request cycle, which holds the transport; closing
    it and yielding to the loop lets uvicorn see the disconnect (no 500 is sent, nothing logged).
    Elsewhere (e.g. httpx's ASGITransport) a `DroppedConnection` is raised instead.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "close"):
        raise DroppedConnection("emulator fault: connection dropped")
    transport.close()
    for _ in range(3):
        await asyncio.sleep(0)


async def act_out(rule: FaultRule, send: Send, *, legacy_envelope: bool) -> str:
    """Perform a status/drop/truncate fault on `send`; returns the label recorded in stats."""
    if rule.action == "status":
        error = fault_error(rule)
        await send_json(send, error.status, error.envelope(legacy=legacy_envelope), error.headers())
        return str(error.status)
    if rule.action == "truncate":
        head = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send(
            {"type": "http.response.body", "body": b'{"id": "task-unified-', "more_body": True}
        )
        await close_connection(send)
        return "truncated"
    await close_connection(send)
    return "dropped"
