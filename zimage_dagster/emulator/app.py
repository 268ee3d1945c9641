"""The emulator as ASGI apps (Starlette): the provider's routes plus `/_emulator/*`, and a file
origin serving the result links (`/_files/*`).

A server runs them on two origins (`create_app(config, serve_files=False)` for the API,
`create_files_app(state)` for the files, see `OriginRouter`); in-process use (an
`httpx.ASGITransport`) may keep both on one app, the default.

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
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from zimage_dagster.emulator.config import MAX_CLOCK_SHIFT_S, ConfigError, EmulatorConfig
from zimage_dagster.emulator.errors import ApiError
from zimage_dagster.emulator.middleware import EmulatorMiddleware, route_of
from zimage_dagster.emulator.render import CONTENT_TYPES
from zimage_dagster.emulator.state import EmulatorState
from zimage_dagster.emulator.tasks import FILES_PREFIX
from zimage_dagster.emulator.validation import check_task_id, validate_create
from zimage_dagster.serving import BodyTooLargeError, read_body

MAX_BODY_BYTES = 1 << 20


def _state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


def _too_large() -> ApiError:
    return ApiError(
        413, "request_too_large", f"Request body must be at most {MAX_BODY_BYTES} bytes",
        type_="invalid_request_error",
    )  # fmt: skip


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _json_body(request: Request) -> Any:
    """The JSON body; over `MAX_BODY_BYTES` it is refused (413) as soon as that is known, by its
    declared length or while reading (a 60 MB body is never held whole)."""
    try:
        raw = await read_body(request, MAX_BODY_BYTES)
    except BodyTooLargeError:
        raise _too_large() from None
    if not raw.strip():
        raise ApiError(400, "invalid_request", "Request body is required (a JSON object)")
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_request", "Request body must be valid JSON") from None


# ------------------------------------------------------------------------------ provider routes


async def create_generation(request: Request) -> Response:
    state = _state(request)
    state.authenticate(request.headers.get("authorization"))
    state.check_rate_limit()
    body = await _json_body(request)
    create = validate_create(body, allow_loopback_callbacks=state.config.allow_loopback_callbacks)
    task = state.create_task(create)
    return JSONResponse(task.view(None))


async def get_task(request: Request) -> Response:
    state = _state(request)
    state.authenticate(request.headers.get("authorization"))
    state.check_rate_limit()
    task = state.get_task(request.path_params["task_id"])
    return JSONResponse(task.view(state.now()))


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
    if (
        isinstance(advance, bool)
        or not isinstance(advance, (int, float))
        or not math.isfinite(advance)
        or abs(advance) > MAX_CLOCK_SHIFT_S
    ):
        raise ApiError(
            400,
            "invalid_request",
            f"advance_s must be a finite number of seconds, at most {MAX_CLOCK_SHIFT_S:.0f} either way",
            param="advance_s",
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
    response = await _api_error(request, ApiError(exc.status_code, None, message))
    response.headers.update(exc.headers or {})  # e.g. `Allow` on a 405
    return response


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client closed the connection before its body arrived (a killed run): nothing to
    answer and nothing broke. 499 is nginx's "client closed request"; the stats count it."""
    return Response(status_code=499)


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


_EXCEPTION_HANDLERS: Mapping[Any, Any] = {
    ApiError: _api_error,
    HTTPException: _http_error,
    ClientDisconnect: _client_gone,
    Exception: _server_error,
}


def _build(routes: list[Route], state: EmulatorState, lifespan: Any = None) -> EmulatorApp:
    app = EmulatorApp(
        routes=routes, lifespan=lifespan, exception_handlers=dict(_EXCEPTION_HANDLERS)
    )
    # The provider's routes answer in JSON, never with a redirect.
    app.router.redirect_slashes = False
    app.state.emulator = state
    return app


def _files_route() -> Route:
    return Route(FILES_PREFIX + "{name}", get_file, methods=["GET", "HEAD"])


def create_app(config: EmulatorConfig | None = None, *, serve_files: bool = True) -> EmulatorApp:
    """A fresh emulator API app; its `EmulatorState` is `app.state.emulator`. With `serve_files`
    it also answers the result links itself (in-process use); a server gives them their own
    origin instead (`create_files_app`)."""
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
        Route("/_emulator/reset", control_reset, methods=["POST"]),
        Route("/_emulator/stats", control_stats, methods=["GET"]),
        Route("/_emulator/config", control_config, methods=["GET", "POST"]),
        Route("/_emulator/clock", control_clock, methods=["POST"]),
        Route("/_emulator/tasks", control_tasks, methods=["GET"]),
    ]
    if serve_files:
        routes.append(_files_route())
    return _build(routes, state, lifespan)


def create_files_app(state: EmulatorState) -> EmulatorApp:
    """The file origin of an emulator: only `/_files/*`, over the same state as its API app.

    >>> api = create_app(serve_files=False)
    >>> create_files_app(api.state.emulator).state.emulator is api.state.emulator
    True
    """
    return _build([_files_route()], state)


class OriginRouter:
    """One ASGI app for a server listening on several sockets: a request goes to the app of the
    port it arrived on (`scope["server"]`), else to `default`; lifespan events go to `default`."""

    def __init__(self, default: ASGIApp, by_port: Mapping[int, ASGIApp]) -> None:
        self.default = default
        self.by_port = dict(by_port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server") if scope["type"] != "lifespan" else None
        app = self.by_port.get(server[1], self.default) if server else self.default
        await app(scope, receive, send)
