"""Fixtures of the reliability tests: an emulator in its own process, an S3-compatible server and a
throwaway PostgreSQL cluster, all on loopback.

* ``emulator_proc``: the emulator in a subprocess (its own GIL), so that a run doing 32 things at
  once in this process cannot slow the emulator's answers past the client's timeout and make a
  fault the test did not inject. Reset before each test that asks for it.
* ``s3``: moto's server mode on ``127.0.0.1:<free port>``; each test gets its own bucket.
* ``postgres``: a PostgreSQL cluster made with Debian's ``initdb``/``pg_ctl`` (run as the
  ``postgres`` user when we are root) in a temp folder, listening on ``127.0.0.1:<free port>``.

Soak tests (``@pytest.mark.soak``) run only when asked for (``pytest -m soak``).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from zimage_dagster.emulator import EmulatorConfig
from zimage_dagster.emulator.server import EmulatorProcess

POSTGRES_PACKAGES = "postgresql (Debian/Ubuntu: apt-get install -y postgresql)"


# -- soak ----------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "soak: long reliability runs (200 prompts on every backend); run with -m soak"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect soak tests unless the marker expression names them (``-m soak``)."""
    if "soak" in (config.getoption("markexpr", "") or ""):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (drop if item.get_closest_marker("soak") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# -- the emulator in a subprocess ---------------------------------------------------------------


@pytest.fixture(scope="session")
def emulator_proc_session() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(EmulatorConfig.for_tests()) as proc:
        yield proc


@pytest.fixture
def emulator_proc(emulator_proc_session: EmulatorProcess) -> EmulatorProcess:
    """The subprocess emulator, reset (tasks, stats, config, faults, clock) for this test."""
    emulator_proc_session.reset()
    return emulator_proc_session


# -- S3 (moto server mode) -----------------------------------------------------------------------


@dataclass(frozen=True)
class S3:
    endpoint_url: str
    key: str = "testing-key"
    secret: str = "testing-secret"

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint_url,
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"region_name": "us-east-1"},
            # Workaround of a bug (see test_production_storage): without it, a long-lived
            # process keeps s3fs's listing cache and never sees ledger entries that another
            # process (the run being killed) wrote.
            "use_listings_cache": False,
        }

    def make_bucket(self) -> str:
        import boto3  # type: ignore[import-untyped]

        name = f"zimage-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3]:
    moto_server = pytest.importorskip("moto.server", reason="pip install 'moto[server]'")
    pytest.importorskip("s3fs", reason="pip install s3fs")
    from werkzeug.serving import make_server  # moto[server]'s

    # Never let botocore look for real credentials or the instance metadata service.
    saved = {k: os.environ.get(k) for k in ("AWS_EC2_METADATA_DISABLED", "AWS_CONFIG_FILE")}
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per S3 request
    # moto checks a conditional PutObject's If-None-Match / If-Match, then writes, with no lock
    # between the two (moto 5.2 s3/responses.py put_object), and its ThreadedMotoServer serves
    # each request on its own thread: two racing writes can both pass the check, which S3 never
    # lets happen (it answers 409/412 to all but one). One request at a time makes moto as
    # atomic as S3 is; connections stay on their own threads (keep-alive never blocks another
    # client). Seen before: two runs claiming one partition, one of 60 CAS updates lost.
    app = moto_server.DomainDispatcherApplication(moto_server.create_backend_app)
    one_at_a_time = threading.Lock()

    def serial(environ: dict[str, Any], start_response: Any) -> Any:
        with one_at_a_time:
            return list(app(environ, start_response))

    server = make_server(
        "127.0.0.1", 0, serial, threaded=True, request_handler=moto_server.MotoRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield S3(endpoint_url=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        thread.join()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3(s3_server: S3) -> S3:
    return s3_server


# -- PostgreSQL ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    admin_db: str = "postgres"

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{db}"  # a libpq URL (psycopg2)

    def create_database(self) -> str:
        import psycopg2  # type: ignore[import-untyped]

        name = f"dagster_{uuid.uuid4().hex[:10]}"
        conn = psycopg2.connect(self.url(self.admin_db))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return name

    def dagster_yaml(self, db: str) -> str:
        """A ``dagster.yaml`` putting run, event log and schedule storage in ``db``."""
        return (
            "storage:\n"
            "  postgres:\n"
            "    postgres_db:\n"
            # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; dagster-postgres ships psycopg2.
            "      scheme: postgresql+psycopg2\n"
            f"      username: {self.user}\n"
            "      password: ''\n"
            f"      hostname: {self.host}\n"
            f"      db_name: {db}\n"
            f"      port: {self.port}\n"
            "telemetry:\n"
            "  enabled: false\n"
        )


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        for version in sorted(root.iterdir(), reverse=True):
            candidate = version / "bin" / name
            if candidate.is_file():
                return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    pytest.importorskip("dagster_postgres", reason="pip install dagster-postgres")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.fail(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found: install {POSTGRES_PACKAGES}"
        )
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else pwd.getpwuid(os.geteuid()).pw_name
    if as_root:
        try:
            account = pwd.getpwnam(user)
        except KeyError:
            pytest.fail(f"running as root needs the 'postgres' user: install {POSTGRES_PACKAGES}")
    base = Path(tempfile.mkdtemp(prefix="zimage-pg-"))
    data, sockets, log = base / "data", base / "sock", base / "server.log"
    sockets.mkdir()
    if as_root:
        for path in (base, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
        os.chmod(base, 0o700)

    def run(*cmd: str) -> None:
        full = ["runuser", "-u", user, "--", *cmd] if as_root else list(cmd)
        subprocess.run(full, check=True, capture_output=True, timeout=120)

    port = _free_port()
    run(initdb, "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {sockets} -h 127.0.0.1 -F -c fsync=off -c max_connections=200"
    run(pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield Postgres(host="127.0.0.1", port=port, user=user)
    finally:
        try:
            run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres(postgres_server: Postgres) -> Postgres:
    return postgres_server
