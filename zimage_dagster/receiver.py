"""A small receiver for the provider's task callbacks: the sensor then acts without polling.

When a task is created with ``callback_url``, the provider POSTs the task (the same JSON as the
query answer) to that URL when it completes or fails; 10 s timeout, a non-2xx answer is retried
after 1, 2 and 4 s. Callbacks are **not signed**, so this receiver:

- listens on ``/callbacks/<token>`` only, where the token is a long random secret compared in
  constant time (any other path, or a wrong token: 404);
- trusts nothing in the body but the task ID, and only if it has the provider's format
  (``task-unified-<digits>-<8 lowercase alnum>``);
- looks the task up in the ledger's task-ID index (O(1); an unknown task: 200, nothing done,
  no API call), then re-reads the task from the API with its own client, and records what the
  API says: ``completed`` (with ``completed_at``) or ``failed`` (code and message), marked
  ``via: "callback"``, through the one writer of a task's end
  (:func:`~zimage_dagster.engine.collect.record_end`). A task the API calls pending or unknown is recorded as nothing; an entry
  that moved on meanwhile (a collect run marked it ``collected`` during the re-read) is left as it
  is: ledger states only move forward (a compare-and-set, see :mod:`zimage_dagster.engine.ledger`);
- reads at most 64 KiB of body (413 as soon as ``Content-Length`` or the bytes read say more,
  chunked bodies too; the rest is never read), cuts off a client whose headers or body take
  more than 10 s, answers a body it cannot parse (deeply nested JSON too) with 400;
- answers at once (2xx) unless the API could not be read, in which case 503 lets the provider
  retry. The task-status sensor puts the partition into its next collect run without polling
  the task.

Run it::

    zimage-callback-receiver --host 127.0.0.1 --port 8787 --storage s3://bucket/images \\
        --token-file /etc/zimage/callback-token

The first line of stdout is its base URL. The API key comes from ``ZIMAGE_API_KEY`` (and the base
URL from ``ZIMAGE_BASE_URL`` or ``--base-url``). A missing token file is created with a fresh
token (mode 0600). Give the tasks the public URL: set ``ZIMAGE_CALLBACK_URL`` (read by the
deferred submit and the sensor) to ``https://hooks.example.com/callbacks/<token>``.

Behind HTTPS: the provider only calls ``https://`` URLs on public addresses, so put the receiver
(bound to loopback) behind a TLS reverse proxy. Caddy (certificates automatic)::

    {
        servers {
            timeouts {
                read_header 10s
                read_body 10s
            }
        }
    }
    hooks.example.com {
        handle /callbacks/* {
            request_body {
                max_size 64KB
            }
            reverse_proxy 127.0.0.1:8787
        }
        respond 404
    }

(Caddy writes no access log unless a ``log`` directive asks for one: keep it that way here,
the path holds the token.)

nginx::

    server {
        listen 443 ssl;
        server_name hooks.example.com;
        ssl_certificate     /etc/letsencrypt/live/hooks.example.com/fullchain.pem;
        ssl_certificate_key /etc/letsencrypt/live/hooks.example.com/privkey.pem;
        client_max_body_size 64k;
        location /callbacks/ {
            proxy_pass http://127.0.0.1:8787;
            proxy_read_timeout 10s;
            access_log off;          # the path holds the token: keep it out of logs
        }
        location / { return 404; }
    }

Keep the token out of access logs (the path holds it), rotate it by changing the file and
``ZIMAGE_CALLBACK_URL`` together (tasks in flight keep the old URL: their callbacks will 404 and
the sensor polls them instead).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from upath import UPath
from uvicorn.protocols.http.h11_impl import H11Protocol

from zimage_dagster.api import AsyncZImageClient, ConfigurationError, NotFoundError, ZImageError
from zimage_dagster.api._core import DEFAULT_BASE_URL, ENV_BASE_URL, resolve_settings
from zimage_dagster.engine.collect import record_end
from zimage_dagster.engine.ledger import LedgerStatus, TaskLedger
from zimage_dagster.engine.store import ImageStore
from zimage_dagster.serving import (
    BodyTooLargeError,
    HelpFormatter,
    PortUnavailableError,
    Service,
    ThreadedServer,
    bind_socket,
    read_body,
    socket_url,
)

__all__ = [
    "CALLBACK_PATH",
    "TASK_ID_PATTERN",
    "CallbackReceiver",
    "create_receiver_app",
    "guarded_http_protocol",
    "load_or_create_token",
    "main",
]

log = logging.getLogger(__name__)

CALLBACK_PATH = "/callbacks"
#: The provider's task ID format.
TASK_ID_PATTERN = re.compile(r"task-unified-[0-9]{1,20}-[a-z0-9]{8}")
MAX_BODY_BYTES = 64 * 1024
MIN_TOKEN_CHARS = 16
#: A request whose headers (or body) take longer than this is cut off (a slow client).
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 10.0


def guarded_http_protocol(header_timeout_s: float = HEADER_TIMEOUT_S) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers are not all
    received within ``header_timeout_s`` (uvicorn itself waits for them for ever; its keep-alive
    timeout only covers idle connections between requests). Pass it as ``uvicorn.Config(http=)``.
    """

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                if self._header_timer is None:
                    self._arm()  # part of a request's headers: they must all come in time
            elif self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def create_receiver_app(
    storage: str | os.PathLike[str] | UPath | ImageStore,
    token: str,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    api_timeout_s: float = 5.0,
    client: AsyncZImageClient | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> Starlette:
    """The receiver as an ASGI app.

    Args:
        storage: the image store root (or store) whose ledger records the results.
        token: the secret path component (at least 16 characters).
        api_key / base_url: for the receiver's own client (default: the environment).
        api_timeout_s: how long re-reading one task may take (the provider waits 10 s).
        client: an open client to use instead (the caller closes it).
        max_body_bytes: a larger body is answered 413 as soon as that is known (a larger
            ``Content-Length``, or the bytes read so far), without reading the rest.
        body_timeout_s: a body not received within this is answered 408 (the connection closes).
    """
    if len(token) < MIN_TOKEN_CHARS or not re.fullmatch(r"[A-Za-z0-9_\-]+", token):
        raise ValueError(
            f"the callback token must be at least {MIN_TOKEN_CHARS} URL-safe characters"
        )
    store = storage if isinstance(storage, ImageStore) else ImageStore(storage)
    ledger = TaskLedger(store)
    expected = token.encode()
    holder: dict[str, AsyncZImageClient] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if client is not None:
            holder["client"] = client
            yield
            return
        async with AsyncZImageClient(
            api_key, base_url=base_url, timeout=api_timeout_s, deadline=api_timeout_s
        ) as own:
            holder["client"] = own
            yield

    async def receive(request: Request) -> Response:
        given = str(request.path_params.get("token", "")).encode()
        if not hmac.compare_digest(given, expected):
            return PlainTextResponse("Not Found", status_code=404)
        try:
            raw = await asyncio.wait_for(read_body(request, max_body_bytes), body_timeout_s)
        except BodyTooLargeError:
            # The rest of the body is not read: the connection closes after the answer.
            return PlainTextResponse("body too large", status_code=413, headers=_CLOSE)
        except asyncio.TimeoutError:
            return PlainTextResponse("body not received in time", status_code=408, headers=_CLOSE)
        try:
            body = json.loads(raw)
            task_id = body["id"]
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: deep nesting
            return PlainTextResponse("expected a task JSON object with an id", status_code=400)
        if not isinstance(task_id, str) or not TASK_ID_PATTERN.fullmatch(task_id):
            return PlainTextResponse("not a task ID", status_code=400)
        return await _record(ledger, holder["client"], task_id, api_timeout_s)

    async def not_found(request: Request) -> Response:
        return PlainTextResponse("Not Found", status_code=404)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route(f"{CALLBACK_PATH}/{{token}}", receive, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        ],
        lifespan=lifespan,
    )


_CLOSE = {"Connection": "close"}


async def _record(
    ledger: TaskLedger, client: AsyncZImageClient, task_id: str, timeout: float
) -> Response:
    entry = await asyncio.to_thread(ledger.find_task, task_id)
    if entry is None:
        return JSONResponse({"recorded": False, "reason": "unknown task"})
    if entry.status != LedgerStatus.SUBMITTED:
        return JSONResponse({"recorded": False, "reason": f"already {entry.status.value}"})
    try:
        task = await asyncio.wait_for(client.get_task(task_id), timeout=timeout)
    except NotFoundError:
        return JSONResponse({"recorded": False, "reason": "the API does not know this task"})
    except (ZImageError, asyncio.TimeoutError) as exc:
        log.warning("callback for %s: could not re-read the task: %s", task_id, exc)
        return JSONResponse({"recorded": False, "reason": "API unavailable"}, status_code=503)
    if not (task.is_completed or task.is_failed):
        return JSONResponse(
            {"recorded": False, "reason": f"the API says {task.status}"}, status_code=202
        )
    written = await asyncio.to_thread(
        record_end, ledger, entry.asset, entry.partition_key, task, logger=log, via="callback"
    )
    if written is None:
        return JSONResponse({"recorded": False, "reason": "the partition moved on"})
    if written.status not in (LedgerStatus.COMPLETED, LedgerStatus.FAILED):
        # A collect run stored the image while we re-read the task: states only move forward.
        return JSONResponse({"recorded": False, "reason": f"already {written.status.value}"})
    return JSONResponse({"recorded": True, "status": str(task.status)})


def load_or_create_token(path: str | os.PathLike[str]) -> str:
    """The token in ``path``; a missing file is created with a fresh token (mode 0600)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    print(f"wrote a new callback token to {os.fspath(path)}", file=sys.stderr)
    return token


class CallbackReceiver(Service):
    """The receiver on a free port in a background thread (for tests and embedding).

    >>> with CallbackReceiver("/tmp/zimage-doctest", "t" * 32) as rx:  # doctest: +SKIP
    ...     print(rx.callback_url)   # http://127.0.0.1:PORT/callbacks/ttt...
    """

    def __init__(
        self,
        storage: str | os.PathLike[str] | UPath | ImageStore,
        token: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        **app_options: Any,
    ) -> None:
        self.app = create_receiver_app(storage, token, **app_options)
        self._token = token
        self._serving = ThreadedServer(
            self.app,
            host=host,
            port=port,
            name="zimage-callback-receiver",
            http=guarded_http_protocol(header_timeout_s),
        )
        self.url = ""

    @property
    def callback_url(self) -> str:
        return f"{self.url}{CALLBACK_PATH}/{self._token}"

    def start(self) -> CallbackReceiver:
        self._serving.start()
        self.url = self._serving.url
        return self

    def stop(self) -> None:
        self._serving.stop()


#: What ``zimage-callback-receiver --help`` ends with.
EPILOG = """\
example:
  export ZIMAGE_API_KEY=sk-...
  zimage-callback-receiver --storage s3://bucket/images --token-file /etc/zimage/callback-token

It checks its settings (the API key, the token, the storage, the port) before it prints its URL,
the first line of stdout; a problem is one line on stderr and exit 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zimage-callback-receiver",
        description="Receive Z-Image-Turbo task callbacks and record them in the task ledger.",
        formatter_class=HelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8787, help="port (0: any free port)")
    parser.add_argument(
        "--storage",
        required=True,
        help="image store root (path or fsspec URL) (default: none, required)",
    )
    parser.add_argument(
        "--token-file",
        help="file holding the secret path token, created if missing "
        "(default: $ZIMAGE_CALLBACK_TOKEN)",
    )
    parser.add_argument(
        "--base-url", help=f"API base URL (default: ${ENV_BASE_URL}, else {DEFAULT_BASE_URL})"
    )
    parser.add_argument(
        "--api-timeout", type=float, default=5.0, help="seconds to re-read one task from the API"
    )
    return parser


def _fail(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Exit 2 with one line on stderr (``argparse``'s own errors add the usage first)."""
    parser.exit(2, f"{parser.prog}: {message}\n")


def _app(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Starlette:
    """The receiver's app, every setting checked first; a problem exits 2 with one line."""
    # The receiver's client needs a key: check it now, not when the first callback comes in.
    try:
        resolve_settings(None, args.base_url)
    except ConfigurationError as exc:
        _fail(parser, str(exc))
    if args.token_file:
        try:
            token = load_or_create_token(args.token_file)
        except OSError as exc:
            _fail(parser, f"--token-file {args.token_file}: {exc.strerror or exc}")
    else:
        token = os.environ.get("ZIMAGE_CALLBACK_TOKEN", "")
        if not token:
            _fail(parser, "pass --token-file or set ZIMAGE_CALLBACK_TOKEN")
    try:
        app = create_receiver_app(
            args.storage, token, base_url=args.base_url, api_timeout_s=args.api_timeout
        )
    except (ValueError, OSError, ZImageError) as exc:
        _fail(parser, str(exc))
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """``zimage-callback-receiver``: serve the receiver; print the base URL on the first line.

    Settings are checked first (the API key, the token, the storage, the port): a problem is one
    line on stderr and exit 2, before any URL is printed.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    app = _app(parser, args)
    try:
        sock = bind_socket(args.host, args.port)
    except PortUnavailableError as exc:
        _fail(parser, str(exc))
    print(socket_url(sock), flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            http=guarded_http_protocol(),
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
