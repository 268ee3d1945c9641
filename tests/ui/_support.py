"""Helpers for the browser test: a real Dagster webserver process, and Debian's Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import httpx
import pytest
from playwright.sync_api import Browser, ViewportSize, sync_playwright

from benchmarks._common import stop_process_group
from zimage_dagster.emulator import EmulatorServer

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEBIAN_CHROMIUM = "/usr/bin/chromium"
#: The example project's image asset the browser tests look at, and its code location.
CATALOGUE = "catalogue_images"
LOCATION = "zimage_example"
#: Generous for a slow 2-core machine: each wait returns as soon as its condition holds.
UI_TIMEOUT_MS = 30_000
VIEWPORT: ViewportSize = {"width": 1440, "height": 1000}
#: ``ZIMAGE_UPDATE_SCREENSHOTS=1``: screenshots are also copied into ``docs/``.
UPDATE_SCREENSHOTS = os.environ.get("ZIMAGE_UPDATE_SCREENSHOTS") == "1"
#: Run config of the in-process runs: the console logger says only warnings and errors.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

# What Debian's Chromium needs to run headless as root in a container, and nothing that phones home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]

_LOCATIONS_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
        }
      }
    }
  }
}
"""


def chromium_executable() -> str:
    """Debian's Chromium (``ZIMAGE_CHROMIUM`` overrides the path); fails, never skips, without it."""
    wanted = os.environ.get("ZIMAGE_CHROMIUM") or shutil.which("chromium") or DEBIAN_CHROMIUM
    if not Path(wanted).is_file():
        pytest.fail(
            f"Chromium not found ({wanted}): the browser test needs Debian's Chromium. Install it "
            "with `apt-get update && apt-get install -y chromium` (.ci/run does this on CI), or "
            "point ZIMAGE_CHROMIUM at a Chromium binary. Never `playwright install`."
        )
    return wanted


@contextlib.contextmanager
def launched_chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright, until the block ends.

    Launch it after any run that calls ``asyncio.run()`` in this thread: Playwright's sync API
    keeps an asyncio loop running in the thread until it stops.
    """
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_executable(), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def child_env(home: Path, storage: Path, emulator: EmulatorServer, **extra: str) -> dict[str, str]:
    """The environment of a webserver (and its code server) over the example project: no
    ``ZIMAGE_*`` setting of the caller, the instance at ``home``, images in ``storage``, the API
    at ``emulator``, telemetry off, and ``extra`` on top."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ZIMAGE_") and k not in ("DAGSTER_HOME", "DAGSTER_PORT")
    }
    env.update(
        DAGSTER_HOME=str(home),
        ZIMAGE_STORAGE_URL=str(storage),
        ZIMAGE_API_KEY=emulator.api_key,
        ZIMAGE_BASE_URL=emulator.url,
        DAGSTER_DISABLE_TELEMETRY="1",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def example_home(root: Path, emulator: EmulatorServer) -> tuple[Path, Path, dict[str, str]]:
    """Under ``root``: a ``DAGSTER_HOME`` with telemetry off and an image folder, and the child
    environment over them (:func:`child_env`)."""
    home, storage = root / "dagster_home", root / "zimage_output"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home, storage, child_env(home, storage, emulator)


@contextlib.contextmanager
def in_child_env(env: Mapping[str, str]) -> Iterator[None]:
    """This process's ``ZIMAGE_*`` and ``DAGSTER_HOME`` settings as the child's while the block
    runs: for in-process runs of the example project on the child's instance."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if name.startswith("ZIMAGE_") or name == "DAGSTER_HOME":
                patch.setenv(name, value)
        yield


def catalogue_job(storage: Path) -> tuple[list[str], dg.JobDefinition]:
    """The example project's catalogue asset over ``storage``: its partition keys and its job."""
    from examples.project import build_defs

    defs = build_defs(str(storage))
    partitions_def = defs.resolve_asset_graph().get(dg.AssetKey(CATALOGUE)).partitions_def
    assert partitions_def is not None
    return list(partitions_def.get_partition_keys()), defs.resolve_job_def(f"{CATALOGUE}_job")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Webserver:
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _wait_until_loaded(server: Webserver, location: str, timeout_s: float) -> None:
    """Polls GraphQL until the code location is loaded; fails with the server's log otherwise."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(
                    f"dagster-webserver exited with {server.process.returncode}:\n"
                    + server.log_tail()
                )
            try:
                answer = client.post(f"{server.url}/graphql", json={"query": _LOCATIONS_QUERY})
                entries = answer.json()["data"]["workspaceOrError"].get("locationEntries", [])
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
                last = f"{type(error).__name__}: {error}"
                time.sleep(0.5)
                continue
            entry = next((e for e in entries if e["name"] == location), None)
            if entry is not None and entry["loadStatus"] == "LOADED":
                loaded = entry["locationOrLoadError"] or {}
                if loaded.get("__typename") == "PythonError":
                    pytest.fail(f"code location {location} failed to load: {loaded.get('message')}")
                return
            last = f"location entries: {entries}"
            time.sleep(0.5)
    pytest.fail(
        f"dagster-webserver did not load {location} within {timeout_s:.0f} s ({last}):\n"
        + server.log_tail()
    )


@contextlib.contextmanager
def running_webserver(
    env: Mapping[str, str], log: Path, location: str, timeout_s: float = 60.0
) -> Iterator[Webserver]:
    """``dagster-webserver -w workspace.yaml`` on a free loopback port, until the block ends."""
    port = free_port()
    executable = Path(sys.executable).parent / "dagster-webserver"
    command = [str(executable), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown ends the code server too
        )
    server = Webserver(url=f"http://127.0.0.1:{port}", log=log, process=process)
    try:
        _wait_until_loaded(server, location, timeout_s)
        yield server
    finally:
        stop_process_group(process)  # the webserver and its code server
