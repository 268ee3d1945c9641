"""What every benchmark shares: result rows, the machine's description, emulator and CPU helpers.

Every figure is reported next to a baseline measured in the same invocation, and as a ratio to
it: the machine these run on is small and shared, so absolute seconds drift from run to run while
ratios hold.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from zimage_dagster.emulator import EmulatorConfig, EmulatorProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Row:
    """One measured figure, its same-run baseline and the ratio ``value / baseline``.

    ``target`` is a human-readable bound on ``ratio`` (or on ``value`` when ``target_on`` is
    ``"value"``); ``met`` is None when the row has no target.
    """

    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""
    met: bool | None = None
    target_on: str = "ratio"

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


@dataclass
class BenchResult:
    """What one benchmark reports: rows for the summary table, notes, optional markdown sections
    (profiles...) and raw details for the JSON file."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def add(self, *args: Any, **kwargs: Any) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "rows": [r.to_dict() for r in self.rows],
            "notes": self.notes,
            "details": self.details,
            "elapsed_s": round(self.elapsed_s, 2),
        }


# -- the machine ---------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_description() -> dict[str, Any]:
    import dagster

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "dagster": dagster.__version__,
        "commit": _git_commit(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
    }


# -- emulator ------------------------------------------------------------------------------------


def emulator_config(**overrides: Any) -> EmulatorConfig:
    """A benchmark emulator: fixed latency, credits that never run out, and the rest as given."""
    base: dict[str, Any] = {"unlimited_credits": True, "random_seed": 7}
    return EmulatorConfig.from_dict({**base, **overrides})


@contextmanager
def emulator(**overrides: Any) -> Iterator[EmulatorProcess]:
    """The emulator in its own process (it must not share the measured process's GIL)."""
    with EmulatorProcess(emulator_config(**overrides)) as emu:
        yield emu


# -- CPU and memory ------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float | None:
    """User+system CPU seconds of a process (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def max_rss_mib() -> float:
    """Peak resident set size of this process, MiB: ``VmHWM`` of ``/proc/self/status`` on Linux
    (the peak of this process's own memory), else ``ru_maxrss``. On Linux a child's ``ru_maxrss``
    starts at its parent's RSS when it was forked, so a big parent would hide a small child."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024


class Stopwatch:
    """Wall and process-CPU time over a ``with`` block."""

    wall_s: float = 0.0
    cpu_s: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu


def prompt_rows(n: int, *, prefix: str = "p", size: str | None = None) -> list[dict[str, Any]]:
    """``n`` dataset rows with distinct prompts (so the emulator renders each image anew)."""
    rows = []
    for i in range(n):
        row: dict[str, Any] = {
            "key": f"{prefix}{i:04d}",
            "prompt": f"benchmark {prefix}{i}: a lighthouse on a cliff at dawn, oil painting",
        }
        if size:
            row["size"] = size
        rows.append(row)
    return rows


def image_asset(name: str, rows: list[dict[str, Any]], root: str) -> Any:
    """The image asset ``build_image_assets`` makes of ``rows``, storing under ``root/images``."""
    import dagster as dg

    from zimage_dagster.assets import build_image_assets

    defs = build_image_assets(name, rows, storage=os.path.join(root, "images"))
    (asset,) = [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)]
    return asset


def temp_instance(root: str) -> Any:
    """A temporary sqlite Dagster instance under ``root/dagster_home``."""
    import dagster as dg

    home = os.path.join(root, "dagster_home")
    os.makedirs(home, exist_ok=True)
    return dg.DagsterInstance.local_temp(tempdir=home)


#: Dagster's console logger at WARNING: the benchmarks print their own tables.
QUIET: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def materialize_rows(
    asset: Any, instance: Any, rows: list[dict[str, Any]], url: str, key: str, concurrency: int = 32
) -> Any:
    """One run of ``asset`` over the partitions of ``rows`` (first key to last: a single-run
    backfill) against the emulator at ``url``; Dagster's ``ExecuteInProcessResult``."""
    import dagster as dg

    from zimage_dagster.resource import ZImageResource

    return dg.materialize(
        [asset],
        instance=instance,
        resources={"zimage": ZImageResource(api_key=key, base_url=url, concurrency=concurrency)},
        tags={
            "dagster/asset_partition_range_start": rows[0]["key"],
            "dagster/asset_partition_range_end": rows[-1]["key"],
        },
        raise_on_error=False,
        run_config=QUIET,
    )


def run_child(module: str, *args: str, timeout: float = 900) -> dict[str, Any]:
    """``python -m module *args`` from the repository's root, in a fresh process; returns the JSON
    object on the last line of its stdout (a benchmark measured without this process's state)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def stop_process_group(process: subprocess.Popen[Any]) -> None:
    """End a process started with ``start_new_session=True`` and everything it started (its
    process group: a daemon's code server and run workers...): SIGTERM, then SIGKILL."""
    for sig, timeout in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
