"""Handles on a running emulator: in a background thread (`EmulatorServer`) or a subprocess
(`EmulatorProcess`, outside the caller's GIL, for benchmarks). Both speak to the control routes
over HTTP, so they offer the same calls.

Like the provider, an emulator has two origins: the API (`url`, JSON only) and a file host
(`files_url`, the result links; its own port, named `localhost` when the API is `127.0.0.1`).
With `tls=True` both are https, under a throwaway CA whose certificate is at `ca_path`.

>>> with EmulatorServer(EmulatorConfig(latency_s=0.1)) as emu:
...     emu.url.startswith("http://127.0.0.1:"), emu.files_url.startswith("http://localhost:"), emu.stats()["tasks_created"]
(True, True, 0)
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

import httpx

from zimage_dagster.emulator.app import OriginRouter, create_app, create_files_app
from zimage_dagster.emulator.config import EmulatorConfig
from zimage_dagster.emulator.tls import ThrowawayCA
from zimage_dagster.serving import (
    ServerError,
    Service,
    ThreadedServer,
    bind_socket,
    socket_port,
    socket_url,
)


def files_host_name(host: str) -> str:
    """The name result links give the file origin: `localhost` for an API on 127.0.0.1 (another
    host name, as the provider's file host is; `files.localhost` would be closer but glibc does
    not resolve `*.localhost` here), else the API's own host.

    >>> files_host_name("127.0.0.1"), files_host_name("0.0.0.0")
    ('localhost', '0.0.0.0')
    """
    return "localhost" if host == "127.0.0.1" else host


@dataclass
class Origins:
    """The file origin's socket and URL, and the app routing both origins, before serving."""

    app: OriginRouter
    files_socket: socket.socket
    files_url: str
    config: EmulatorConfig


def plan_origins(config: EmulatorConfig, host: str, *, tls: bool, files_port: int = 0) -> Origins:
    """Bind the file origin's socket and build the apps: result links name that origin
    (unless the config already names a public one)."""
    sock = bind_socket(host, files_port)
    url = socket_url(sock, scheme="https" if tls else "http", host=files_host_name(host))
    if config.public_files_url is None:
        config = dataclasses.replace(config, public_files_url=url)
    api = create_app(config, serve_files=False)
    files = create_files_app(api.state.emulator)
    return Origins(OriginRouter(api, {socket_port(sock): files}), sock, url, config)


class EmulatorError(RuntimeError):
    """The emulator did not start, stop or answer a control call as expected."""


def _jsonable(value: Any) -> Any:
    """Config values as JSON: FaultRule/FailureRule objects become dicts, tuples lists."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


class EmulatorHandle(Service):
    """The control calls, over HTTP against `/_emulator/*` (no auth on those routes)."""

    url: str
    files_url: str = ""
    ca_path: str | None = None
    _config: EmulatorConfig
    _api_key: str
    _control: httpx.Client | None = None

    @property
    def api_key(self) -> str:
        """A key the emulator accepts right now."""
        return self._api_key

    def _client(self) -> httpx.Client:
        if self._control is None:
            self._control = httpx.Client(
                base_url=self.url, timeout=30.0, trust_env=False, verify=self.verify
            )
        return self._control

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What a client needs to trust this emulator: a context with its CA in TLS mode."""
        return ssl.create_default_context(cafile=self.ca_path) if self.ca_path else True

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        response = self._client().request(method, path, json=json)
        if response.status_code != 200:
            raise EmulatorError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response.json()

    def configure(self, **fields: Any) -> dict[str, Any]:
        """Partial config update (`POST /_emulator/config`); returns the whole new config."""
        config: dict[str, Any] = self._call("POST", "/_emulator/config", _jsonable(fields))
        keys = config.get("api_keys")
        self._api_key = keys[0] if keys else EmulatorConfig().primary_api_key
        return config

    def config(self) -> dict[str, Any]:
        """The current config (`GET /_emulator/config`)."""
        config: dict[str, Any] = self._call("GET", "/_emulator/config")
        return config

    def reset(self) -> None:
        """Tasks, stats, config, faults and clock back to the start (`POST /_emulator/reset`)."""
        self._call("POST", "/_emulator/reset")
        self._api_key = self._config.primary_api_key

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._call("GET", "/_emulator/stats")
        return stats

    def tasks(self) -> list[dict[str, Any]]:
        """Every task with the request it came from (`GET /_emulator/tasks`)."""
        tasks: list[dict[str, Any]] = self._call("GET", "/_emulator/tasks")["tasks"]
        return tasks

    def advance_clock(self, seconds: float) -> float:
        """Move the emulator clock forward; returns the new emulator time (unix s)."""
        now: float = self._call("POST", "/_emulator/clock", {"advance_s": seconds})["now"]
        return now

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None


class EmulatorServer(EmulatorHandle):
    """uvicorn on a free loopback port, in a background thread, for the life of a `with` block."""

    def __init__(
        self, config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", tls: bool = False
    ) -> None:
        self._config = config or EmulatorConfig()
        self._api_key = self._config.primary_api_key
        self._host = host
        self._tls = tls
        self._ca: ThrowawayCA | None = None
        self._serving: ThreadedServer | None = None
        self.url = ""

    def start(self) -> EmulatorServer:
        if self._serving is not None:
            raise EmulatorError("already started")
        self._ca = ThrowawayCA().start() if self._tls else None
        self.ca_path = self._ca.ca_path if self._ca else None
        origins = plan_origins(self._config, self._host, tls=self._tls)
        self.files_url = origins.files_url
        self._serving = ThreadedServer(
            origins.app,
            host=self._host,
            name="zimage-emulator",
            sockets=[origins.files_socket],
            ssl=self._ca.server_files if self._ca else None,
        )
        try:
            self._serving.start()
        except ServerError as exc:
            self.stop()
            raise EmulatorError("the emulator did not start") from exc
        self.url = self._serving.url
        return self

    def stop(self) -> None:
        self._close_control()
        serving, self._serving = self._serving, None
        try:
            if serving is not None:
                serving.stop()
        except ServerError as exc:
            raise EmulatorError("the emulator thread did not stop") from exc
        finally:
            if self._ca is not None:
                self._ca.stop()
                self._ca = None


class EmulatorProcess(EmulatorHandle):
    """The `zimage-emulator` console script in a subprocess; reads its URLs (and, with `tls`,
    its CA path) from the first lines it prints."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        tls: bool = False,
        startup_timeout: float = 30.0,
    ) -> None:
        self._config = config or EmulatorConfig()
        self._api_key = self._config.primary_api_key
        self._host = host
        self._tls = tls
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> EmulatorProcess:
        command = [
            sys.executable, "-m", "zimage_dagster.emulator", "--host", self._host, "--port", "0",
            "--config", json.dumps(self._config.to_dict()), *(["--tls"] if self._tls else []),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env
        )
        lines: list[str] = []
        wanted = 3 if self._tls else 2
        stdout = self._process.stdout

        def read() -> None:
            while stdout is not None and len(lines) < wanted:
                lines.append(stdout.readline().strip())
                if not lines[-1]:
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(self._startup_timeout)
        if len(lines) < wanted or not all(line.startswith(("http", "/")) for line in lines):
            self.stop()
            raise EmulatorError(f"the emulator process did not print its URLs (got {lines!r})")
        self.url, self.files_url = lines[0], lines[1]
        self.ca_path = lines[2] if self._tls else None
        return self

    def stop(self) -> None:
        self._close_control()
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None
