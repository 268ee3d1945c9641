"""Handles on a running emulator: in a background thread (`EmulatorServer`) or a subprocess
(`EmulatorProcess`, outside the caller's GIL, for benchmarks). Both speak to the control routes
over HTTP, so they offer the same calls.

>>> with EmulatorServer(EmulatorConfig(latency_s=0.1)) as emu:
...     emu.url.startswith("http://127.0.0.1:"), emu.stats()["tasks_created"]
(True, 0)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import httpx

from zimage_dagster.emulator.app import create_app
from zimage_dagster.emulator.config import EmulatorConfig
from zimage_dagster.serving import ServerError, Service, ThreadedServer


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
    _config: EmulatorConfig
    _api_key: str
    _control: httpx.Client | None = None

    @property
    def api_key(self) -> str:
        """A key the emulator accepts right now."""
        return self._api_key

    def _client(self) -> httpx.Client:
        if self._control is None:
            self._control = httpx.Client(base_url=self.url, timeout=30.0, trust_env=False)
        return self._control

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

    def __init__(self, config: EmulatorConfig | None = None, *, host: str = "127.0.0.1") -> None:
        self._config = config or EmulatorConfig()
        self._api_key = self._config.primary_api_key
        self._host = host
        self.app = create_app(self._config)
        self._serving = ThreadedServer(self.app, host=host, name="zimage-emulator")
        self.url = ""

    def start(self) -> EmulatorServer:
        if self._serving.running:
            raise EmulatorError("already started")
        try:
            self._serving.start()
        except ServerError as exc:
            raise EmulatorError("the emulator did not start") from exc
        self.url = self._serving.url
        return self

    def stop(self) -> None:
        self._close_control()
        try:
            self._serving.stop()
        except ServerError as exc:
            raise EmulatorError("the emulator thread did not stop") from exc


class EmulatorProcess(EmulatorHandle):
    """The `zimage-emulator` console script in a subprocess; reads its URL from its first line."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 30.0,
    ) -> None:
        self._config = config or EmulatorConfig()
        self._api_key = self._config.primary_api_key
        self._host = host
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> EmulatorProcess:
        command = [
            sys.executable, "-m", "zimage_dagster.emulator", "--host", self._host, "--port", "0",
            "--config", json.dumps(self._config.to_dict()),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env
        )
        line: list[str] = []
        reader = threading.Thread(
            target=lambda: line.append(
                self._process.stdout.readline() if self._process and self._process.stdout else ""
            ),
            daemon=True,
        )
        reader.start()
        reader.join(self._startup_timeout)
        url = line[0].strip() if line else ""
        if not url.startswith("http"):
            self.stop()
            raise EmulatorError(f"the emulator process did not print its URL (got {url!r})")
        self.url = url
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
