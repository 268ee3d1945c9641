"""Helpers for the emulator tests (not tests themselves).

`SpecClient` is an httpx client whose every response on a provider route is validated against the
provider's documents (the vendored copies), so every test that uses it is a conformance test too.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jsonschema

from zimage_dagster.emulator.middleware import route_of
from zimage_dagster.emulator.spec import CREATE_DOC, CREDITS_DOC, TASK_DOC, load_document

ROUTES = {
    "create": (CREATE_DOC, "/v1/images/generations", "post"),
    "task": (TASK_DOC, "/v1/tasks/{task_id}", "get"),
    "credits": (CREDITS_DOC, "/v1/credits", "get"),
}

VALID = {"model": "z-image-turbo", "prompt": "a cute cat", "size": "1:1", "seed": 12345}


def response_schema(route: str, status: int) -> dict[str, Any]:
    """The documented schema for `status` on `route` (ErrorResponse for undocumented errors),
    with the document's components attached so `$ref`s resolve."""
    doc_name, path, method = ROUTES[route]
    doc = load_document(doc_name)
    responses = doc["paths"][path][method]["responses"]
    entry = responses.get(str(status))
    if entry is not None:
        schema = entry["content"]["application/json"]["schema"]
    elif status >= 400:
        schema = {"$ref": "#/components/schemas/ErrorResponse"}
    else:
        raise AssertionError(f"undocumented success status {status} on {route}")
    return {**schema, "components": doc["components"]}


def check_conforms(route: str, status: int, body: Any) -> None:
    """Raise if `body` does not validate against the documented schema (plus the error shape rules)."""
    schema = response_schema(route, status)
    jsonschema.Draft202012Validator(schema).validate(body)
    if status >= 400:
        assert isinstance(body, dict), body
        assert set(body) == {"error"}, body
        error = body["error"]
        assert {"code", "message", "type"} <= set(error), error


def _validate_response(response: httpx.Response) -> None:
    route = route_of(response.request.url.path)
    if route not in ROUTES:  # control routes and file links have no documented schema
        return
    response.read()
    assert response.headers["content-type"].startswith("application/json"), response.headers
    check_conforms(route, response.status_code, json.loads(response.content))


class SpecClient(httpx.Client):
    """httpx.Client bound to the emulator with the key, validating every provider response."""

    def __init__(self, base_url: str, api_key: str | None = None, **kwargs: Any) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        super().__init__(
            base_url=base_url,
            headers=headers,
            trust_env=False,
            timeout=30.0,
            event_hooks={"response": [_validate_response]},
            **kwargs,
        )


@dataclass
class Receiver:
    """A loopback HTTP server recording the POSTs it gets; answers `statuses` in turn, then 200."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)


@contextmanager
def callback_receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    receiver = Receiver(url="", statuses=list(statuses or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(length))
            receiver.received.append(body)
            status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()
            if status < 300:
                receiver.event.set()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
