"""Serving an ASGI app with uvicorn on a socket we bind ourselves (port 0: a free one).

Shared by the emulator, the callback receiver and the gallery (they also run as console scripts
whose first line of output is the URL: :func:`serve`). No Dagster import.

>>> from starlette.applications import Starlette
>>> with ThreadedServer(Starlette(), name="doctest") as server:
...     server.url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import socket
import threading
import time
from types import TracebackType
from typing import Any, TypeVar

import uvicorn
from starlette.requests import Request
from starlette.types import ASGIApp

__all__ = [
    "KEEP_ALIVE_S",
    "BodyTooLargeError",
    "HelpFormatter",
    "PortUnavailableError",
    "ServerError",
    "Service",
    "ThreadedServer",
    "bind_socket",
    "json_object_arg",
    "read_body",
    "serve",
    "socket_port",
    "socket_url",
]

_S = TypeVar("_S", bound="Service")


class Service:
    """Something started by ``start()`` and stopped by ``stop()``; a ``with`` block does both."""

    def start(self: _S) -> _S:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


#: Idle keep-alive connections are kept this long (uvicorn's default is 5 s; the provider's
#: Cloudflare front keeps them for minutes, and clients keep theirs 30 s: a shorter server
#: timeout makes them reuse connections the server is closing).
KEEP_ALIVE_S = 75


class ServerError(RuntimeError):
    """The server did not start or stop in time."""


class PortUnavailableError(OSError):
    """``host:port`` cannot be listened on (most often: the port is in use). Its text is one
    line naming the address and what to do, for a console script to print as it is.

    >>> busy = bind_socket()
    >>> try:
    ...     bind_socket(port=busy.getsockname()[1])
    ... except PortUnavailableError as exc:
    ...     print(str(exc).replace(str(busy.getsockname()[1]), "PORT"))
    cannot listen on 127.0.0.1:PORT: the port is in use (another server is on it); choose another with --port, or --port 0 for a free one
    >>> busy.close()
    """

    def __init__(self, host: str, port: int, cause: OSError, option: str = "--port") -> None:
        self.host, self.port, self.cause = host, port, cause
        if cause.errno == errno.EADDRINUSE:
            why = "the port is in use (another server is on it)"
        else:
            why = cause.strerror or str(cause)
        shown = f"[{host}]" if ":" in host else host
        self.message = (
            f"cannot listen on {shown}:{port}: {why}; choose another with {option}, "
            f"or {option} 0 for a free one"
        )
        super().__init__(cause.errno, self.message)

    def __str__(self) -> str:
        return self.message


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket (port 0: a free one, chosen by the OS); a port that cannot be
    listened on raises :class:`PortUnavailableError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortUnavailableError(host, port, exc) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def socket_url(sock: socket.socket, *, scheme: str = "http", host: str | None = None) -> str:
    """``http://host:port`` of a bound socket (IPv6 hosts in brackets); ``host`` names it
    otherwise (e.g. ``localhost`` for a socket bound to 127.0.0.1)."""
    bound, port = sock.getsockname()[:2]
    host = host or bound
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


def socket_port(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` of the console scripts: every option's default (an option whose default is
    ``None`` says its own in its help text, e.g. "default: $ZIMAGE_BASE_URL"), and the
    description and the example (the epilog) as written.

    >>> p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter, epilog="example:\\n  x -n 3")
    >>> _ = p.add_argument("-n", type=int, default=2, help="how many")
    >>> _ = p.add_argument("--url", help="where (default: $URL)")
    >>> text = p.format_help()
    >>> "how many (default: 2)" in text, "(default: None)" in text, "  x -n 3" in text
    (True, False, True)
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def json_object_arg(text: str) -> dict[str, Any]:
    """An ``argparse`` type: a JSON object given inline, or as ``@file.json``.

    >>> json_object_arg('{"latency_s": 2}')
    {'latency_s': 2}
    """
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as fh:
            text = fh.read()
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def serve(app: ASGIApp, host: str, port: int, *, log_level: str = "warning") -> None:
    """Serve ``app`` in the foreground until interrupted; the first line on stdout is its URL
    (what a console script prints, so that a caller starting it on port 0 learns the port)."""
    sock = bind_socket(host, port)
    print(socket_url(sock), flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class ThreadedServer(Service):
    """uvicorn serving ``app`` in a background thread, for the life of a ``with`` block.

    ``sockets``: sockets already bound (``bind_socket``) to serve on besides the one it binds
    itself, so one server can answer on several origins (the app tells them apart by
    ``scope["server"]``). ``ssl``: ``(certfile, keyfile)`` to serve https. ``http``: uvicorn's
    HTTP protocol (a name or a class; e.g. the callback receiver's, which bounds header reads).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "asgi-server",
        sockets: list[socket.socket] | None = None,
        ssl: tuple[str, str] | None = None,
        http: type[asyncio.Protocol] | str = "auto",
    ) -> None:
        self.app = app
        self._http = http
        self._host = host
        self._port = port
        self._name = name
        self._extra = list(sockets or [])
        self._ssl = ssl
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.url = ""

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, timeout: float = 10.0) -> ThreadedServer:
        if self._thread is not None:
            raise ServerError(f"{self._name} already started")
        self._socket = bind_socket(self._host, self._port)
        self.url = socket_url(self._socket, scheme="https" if self._ssl else "http")
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=KEEP_ALIVE_S,
            ssl_certfile=self._ssl[0] if self._ssl else None,
            ssl_keyfile=self._ssl[1] if self._ssl else None,
            http=self._http,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket, *self._extra]},
            name=self._name,
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"{self._name} did not start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        thread = self._thread
        if thread is not None:
            thread.join(timeout=timeout)
        for sock in [self._socket, *self._extra]:
            if sock is not None:
                sock.close()
        self._extra = []
        self._server = self._thread = self._socket = None
        if thread is not None and thread.is_alive():
            raise ServerError(f"{self._name} thread did not stop")


class BodyTooLargeError(Exception):
    """A request body over the reader's limit (by its declared length or by the bytes read)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, read chunk by chunk, and refused as soon as it is known to exceed
    ``limit``: by its declared ``Content-Length`` (before a byte of it is read), else while
    reading (a chunked body), so that an oversized body is never held whole. The emulator and
    the callback receiver both read their bodies with it.

    >>> import asyncio
    >>> async def body_of(data: bytes, limit: int) -> bytes:
    ...     async def receive():
    ...         return {"type": "http.request", "body": data, "more_body": False}
    ...     scope = {"type": "http", "headers": [(b"content-length", str(len(data)).encode())]}
    ...     return await read_body(Request(scope, receive), limit)
    >>> asyncio.run(body_of(b'{"id": 1}', 64))
    b'{"id": 1}'
    >>> asyncio.run(body_of(b"x" * 65, 64))
    Traceback (most recent call last):
    ...
    zimage_dagster.serving.BodyTooLargeError: request body over 64 bytes
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
