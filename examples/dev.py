"""`make dev`: the Dagster UI on http://127.0.0.1:3000 over the example project, and the image
gallery beside it on http://127.0.0.1:3001.

With no ``ZIMAGE_API_KEY`` the local emulator runs in this process for as long as the UI does,
and ``ZIMAGE_API_KEY`` / ``ZIMAGE_BASE_URL`` are exported to ``dagster dev`` (and so to its code
server and runs); with the key set, the real API is used. ``DAGSTER_HOME`` defaults to
``<repo>/.dagster_home``, the instance ``make demo`` records its runs in; when it has no
``dagster.yaml``, ``examples/dagster.yaml`` is copied there (run monitoring, so that a killed run
is marked failed and frees its pool slot, and the pool limit). The gallery
(``zimage_dagster.gallery``) serves the example's image store, and ``ZIMAGE_GALLERY_URL`` tells
the code location where it is, so every materialization links to its image there. Ctrl-C stops
the UI, then the gallery and the emulator.

Options: ``--port`` (default 3000, or ``DAGSTER_PORT``) and ``--gallery-port`` (default 3001, or
the port of ``ZIMAGE_GALLERY_URL``); both only listen on 127.0.0.1.
"""

import argparse
import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from urllib.parse import urlsplit

from examples.demo import DEFAULT_LATENCY_S, dagster_home, emulator_config
from examples.project import REPO_ROOT, gallery_url, storage_root
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.gallery import Gallery
from zimage_dagster.gallery.links import GALLERY_URL_ENV


def dagster_command() -> list[str]:
    """The ``dagster`` CLI of this interpreter's environment, without the notice that ``dagster
    dev`` is superseded by ``dg dev`` (the demo installs no ``dg``: ``dagster dev`` is its UI)."""
    return [sys.executable, "-W", "ignore:Function `dev_command` is superseded", "-m", "dagster"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.dev", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("DAGSTER_PORT", "3000")))
    parser.add_argument("--gallery-port", type=int, default=urlsplit(gallery_url()).port)
    args = parser.parse_args(argv)

    home = dagster_home()  # with examples/dagster.yaml when it has none (telemetry off)
    env = dict(os.environ)
    command = [
        *dagster_command(),
        "dev",
        "-w",
        str(REPO_ROOT / "workspace.yaml"),
        "-h",
        "127.0.0.1",
        "-p",
        str(args.port),
    ]
    with ExitStack() as stack:
        if not env.get("ZIMAGE_API_KEY"):
            latency = float(env.get("ZIMAGE_DEMO_LATENCY") or DEFAULT_LATENCY_S)
            emulator = stack.enter_context(EmulatorServer(emulator_config(latency)))
            env["ZIMAGE_API_KEY"] = emulator.api_key
            env["ZIMAGE_BASE_URL"] = emulator.url
            print(
                f"No ZIMAGE_API_KEY set: the local emulator answers at {emulator.url}", flush=True
            )
        else:
            print("ZIMAGE_API_KEY set: runs use the real API (new images cost credits)", flush=True)
        gallery = stack.enter_context(Gallery(storage_root(), port=args.gallery_port))
        env[GALLERY_URL_ENV] = gallery.url
        print(f"Dagster instance: {home}", flush=True)
        print(f"Image gallery: {gallery.url}  (every materialization links to it)", flush=True)
        print(f"Dagster UI: http://127.0.0.1:{args.port}  (Ctrl-C to stop)", flush=True)
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env)
        try:
            return process.wait()
        except KeyboardInterrupt:
            # The terminal sent SIGINT to dagster dev as well; give it time to shut down cleanly.
            try:
                return process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGTERM)
                try:
                    return process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    return process.wait()
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
