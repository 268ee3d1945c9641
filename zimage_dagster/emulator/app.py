"""The emulator as an ASGI app (Starlette): the provider's routes plus `/_emulator/*` and `/_files/*`.

>>> import httpx, asyncio
>>> async def demo():
...     app = create_app(EmulatorConfig(latency_s=0.0))
...     async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emu") as c:
...         r = await c.post("/v1/images/generations", json={"model": "z-image-turbo", "prompt": "a cat", "seed": 1},
...                          headers={"Authorization": "Bearer sk-test"})
...         return r.status_code, r.json()["status"]
>>> asyncio.run(demo())
(200, 'pending')
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from zimage_dagster.emulator.config import ConfigError, EmulatorConfig
from zimage_dagster.emulator.errors import ApiError
from zimage_dagster.emulator.middleware import EmulatorMiddleware, route_of
from zimage_dagster.emulator.render import CONTENT_TYPES
from zimage_dagster.emulator.state import EmulatorState
from zimage_dagster.emulator.tasks import FILES_PREFIX
from zimage_dagster.emulator.validation import check_task_id, validate_create

MAX_BODY_BYTES = 1 << 20


def _state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(
            400, "invalid_request", f"Request body must be at most {MAX_BODY_BYTES} bytes"
        )
    if not raw.strip():
        raise ApiError(400, "invalid_request", "Request body is required (a JSON object)")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_request", "Request body must be valid JSON") from None


# ------------------------------------------------------------------------------ provider routes


async def create_generation(request: Request) -> Response:
    state = _state(request)
    state.authenticate(request.headers.get("authorization"))
    state.check_rate_limit()
    body = await _json_body(request)
    create = validate_create(body, allow_loopback_callbacks=state.config.allow_loopback_callbacks)
    task = state.create_task(create, _base_url(request))
    return JSONResponse(task.view(None))


async def get_task(request: Request) -> Response:
    state = _state(request)
    state.authenticate(request.headers.get("authorization"))
    state.check_rate_limit()
    task = state.get_task(request.path_params["task_id"])
    return JSONResponse(task.view(state.now(), _base_url(request)))


async def get_credits(request: Request) -> Response:
    state = _state(request)
    state.authenticate(request.headers.get("authorization"))
    state.check_rate_limit()
    return JSONResponse(state.credits())


async def get_file(request: Request) -> Response:
    """A result link: like a signed-URL host, no auth; 403 once expired, 404 if unknown."""
    state = _state(request)
    task = state.tasks.get(state.files.get(request.path_params["name"], ""))
    now = state.now()
    if task is None or task.failure is not None or not task.is_terminal(now):
        raise ApiError(404, "not_found", "The requested file does not exist")
    expires_at = task.end_at + state.config.result_ttl_s
    if now >= expires_at:
        raise ApiError(403, "permission_denied", "Request has expired", type_="access_denied")
    data = await state.renders.get(task.render_key)
    headers = {"Cache-Control": f"private, max-age={int(expires_at - now)}"}
    return Response(data, media_type=CONTENT_TYPES[task.image_format], headers=headers)


# ------------------------------------------------------------------------------ control routes


async def control_reset(request: Request) -> Response:
    await _state(request).reset()
    return JSONResponse({"ok": True})


async def control_stats(request: Request) -> Response:
    return JSONResponse(_state(request).control_stats())


async def control_config(request: Request) -> Response:
    state = _state(request)
    if request.method == "POST":
        changes = await _json_body(request)
        try:
            state.configure(changes)
        except ConfigError as exc:
            raise ApiError(400, "invalid_config", str(exc), param=exc.param) from None
    return JSONResponse(state.config.to_dict())


async def control_clock(request: Request) -> Response:
    state = _state(request)
    body = await _json_body(request)
    advance = body.get("advance_s") if isinstance(body, dict) else None
    if isinstance(advance, bool) or not isinstance(advance, (int, float)):
        raise ApiError(
            400, "invalid_request", "advance_s (a number of seconds) is required", param="advance_s"
        )
    state.clock.advance(float(advance))
    return JSONResponse({"now": state.now(), "skew_s": state.clock.skew_s})


async def control_tasks(request: Request) -> Response:
    return JSONResponse({"tasks": _state(request).list_tasks()})


# ------------------------------------------------------------------------------ errors


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    legacy = (
        route_of(request.url.path) == "credits" and _state(request).config.legacy_credits_errors
    )
    return JSONResponse(exc.envelope(legacy=legacy), status_code=exc.status, headers=exc.headers())


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404 and path.startswith("/v1/tasks/") and request.method == "GET":
        # An ID the route's pattern cannot hold (a line break...): still just a malformed ID.
        return await _api_error(request, _invalid_task_id(path[len("/v1/tasks/") :]))
    message = "No such route" if exc.status_code == 404 else str(exc.detail)
    return await _api_error(request, ApiError(exc.status_code, None, message))


async def _server_error(request: Request, exc: Exception) -> Response:
    return await _api_error(request, ApiError(500, "internal_error", "Internal server error"))


def _invalid_task_id(task_id: str) -> ApiError:
    try:
        check_task_id(task_id)
    except ApiError as error:
        return error
    return ApiError(404, "task_not_found", "The requested task could not be found")


class EmulatorApp(Starlette):
    """Starlette, with `EmulatorMiddleware` wrapped around the whole stack."""

    def build_middleware_stack(self) -> ASGIApp:
        return EmulatorMiddleware(super().build_middleware_stack(), self.state.emulator)


def create_app(config: EmulatorConfig | None = None) -> EmulatorApp:
    """A fresh emulator app; its `EmulatorState` is `app.state.emulator`."""
    state = EmulatorState(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await state.callbacks.aclose()
        state.renders.close()

    routes = [
        Route("/v1/images/generations", create_generation, methods=["POST"]),
        Route("/v1/tasks/{task_id:path}", get_task, methods=["GET"]),
        Route("/v1/credits", get_credits, methods=["GET"]),
        Route(FILES_PREFIX + "{name}", get_file, methods=["GET", "HEAD"]),
        Route("/_emulator/reset", control_reset, methods=["POST"]),
        Route("/_emulator/stats", control_stats, methods=["GET"]),
        Route("/_emulator/config", control_config, methods=["GET", "POST"]),
        Route("/_emulator/clock", control_clock, methods=["POST"]),
        Route("/_emulator/tasks", control_tasks, methods=["GET"]),
    ]
    app = EmulatorApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
    # The provider's routes answer in JSON, never with a redirect.
    app.router.redirect_slashes = False
    app.state.emulator = state
    return app
