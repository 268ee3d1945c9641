"""`make demo`: generate the example catalogue, draw its contact sheet, print what was made.

With no ``ZIMAGE_API_KEY`` in the environment the local emulator is started in this process (no
account, no network) and ``ZIMAGE_API_KEY`` / ``ZIMAGE_BASE_URL`` point at it; with the key set
the real API is used (``ZIMAGE_BASE_URL`` still overrides the address).

1. every partition of ``catalogue_images`` in ONE run (a single-run backfill over the whole
   range: all tasks are submitted concurrently);
2. ``contact_sheet`` in a second run (the image asset yields no output, so Dagster would skip it
   in the same run);
3. a table of what was made, 120 columns wide (partition, seed, task ID, size, status, the start of
   the prompt; ``reused`` for an image already stored for the identical request: a second
   ``make demo`` costs nothing, and says so), and the gallery's address for these images
   (``make dev`` starts the gallery there).

Runs are recorded in a persistent Dagster instance (``DAGSTER_HOME``, default ``<repo>/.dagster_home``)
so that ``make dev`` shows them. Environment knobs: ``ZIMAGE_STORAGE_URL`` (default
``<repo>/zimage_output``), ``DAGSTER_HOME``, ``ZIMAGE_DEMO_LATENCY`` (emulator seconds per image,
default 1.5). Exit status 0 when every image and the contact sheet were made, 1 otherwise.

Run it with ``python -m examples.demo`` from the repository root.
"""

import os
import shutil
import sys
import textwrap
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from examples.project import (
    CATALOGUE,
    CONTACT_SHEET,
    REPO_ROOT,
    base_url,
    build_defs,
    gallery_url,
    storage_root,
)
from zimage_dagster.emulator import EmulatorConfig, EmulatorServer
from zimage_dagster.gallery.links import grid_url

try:
    from dagster._core.instance.ref import InstanceRef
except ImportError:  # pragma: no cover - a Dagster without it: DagsterInstance.get() below
    InstanceRef = None  # type: ignore[assignment,misc]

DEFAULT_LATENCY_S = 1.5


TABLE_WIDTH = 120
PARTITION_WIDTH = 28


@dataclass(frozen=True)
class Row:
    partition: str
    seed: str
    task_id: str
    size: str
    status: str
    prompt: str


def emulator_config(latency_s: float) -> EmulatorConfig:
    """Demo-friendly emulator: each image takes about ``latency_s`` (+/- 30 %), and the task's
    ``estimated_time`` hint matches, so the client's first poll comes at the right moment."""
    low, high = latency_s * 0.7, latency_s * 1.3
    return EmulatorConfig(
        latency_s=latency_s,
        latency_range_s=(low, high) if latency_s > 0 else None,
        estimated_time=max(1, round(latency_s)),
        unlimited_credits=True,
    )


def _value(metadata: Mapping[str, Any], name: str) -> Any:
    entry = metadata.get(name)
    return getattr(entry, "value", entry)


def _shown_path(path: str) -> str:
    """Relative to the working directory when under it (``zimage_output/...``), else as is."""
    if "://" in path:
        return path
    absolute = os.path.abspath(path)
    cwd = os.getcwd()
    return os.path.relpath(absolute, cwd) if absolute.startswith(cwd + os.sep) else absolute


def dagster_home() -> Path:
    """``DAGSTER_HOME`` (default ``<repo>/.dagster_home``), exported for Dagster and its
    subprocesses; when it has no ``dagster.yaml``, ``examples/dagster.yaml`` is copied there (run
    monitoring, pool limits, telemetry off: nothing leaves this machine, and the UI loads no
    telemetry script)."""
    home = Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(REPO_ROOT / "examples" / "dagster.yaml", home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def open_instance(home: Path) -> dg.DagsterInstance:
    """The persistent instance in ``home`` (see :func:`dagster_home`)."""
    if InstanceRef is None:
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def _materializations(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    """partition key -> metadata of the materializations of ``asset`` logged by the run."""
    found: dict[str, Any] = {}
    for event in result.all_events:
        if event.event_type != dg.DagsterEventType.ASSET_MATERIALIZATION:
            continue
        mat = event.step_materialization_data.materialization
        if mat.asset_key == dg.AssetKey(asset) and mat.partition is not None:
            found[str(mat.partition)] = mat.metadata
    return found


def _failures(result: dg.ExecuteInProcessResult) -> tuple[dict[str, str], list[str]]:
    """(partition -> reason, other failure messages) from the run's step failures."""
    by_partition: dict[str, str] = {}
    other: list[str] = []
    for event in result.all_events:
        if event.event_type != dg.DagsterEventType.STEP_FAILURE:
            continue
        data = event.step_failure_data
        user = data.user_failure_data
        failed = user.metadata.get("failed_partitions") if user is not None else None
        value = getattr(failed, "value", None)
        if isinstance(value, dict):
            by_partition.update({str(k): str(v) for k, v in value.items()})
        if data.error is not None:
            other.append(data.error.message.strip())
    return by_partition, other


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: list[Row], width: int = TABLE_WIDTH) -> str:
    """The rows as a table of at most ``width`` columns; the prompt column takes what is left
    and each prompt is shown whole, wrapped onto as many lines as it needs.

    >>> row = Row("fox-kit", "8", "task-unified-1796068288-cj00uwp8", "1024x1024", "new", "a fox " * 40)
    >>> lines = _table([row]).splitlines()
    >>> max(len(line) for line in lines), " ".join(lines[2:]).split().count("fox")
    (120, 40)
    """
    headers = Row("partition", "seed", "task ID", "size", "status", "prompt")
    fixed = [
        [_clip(r.partition, PARTITION_WIDTH), r.seed, r.task_id, r.size, r.status]
        for r in [headers, *rows]
    ]
    widths = [max(len(row[i]) for row in fixed) for i in range(5)]
    prompt_width = max(10, width - sum(widths) - 2 * len(widths))
    lines = []
    indent = " " * (sum(widths) + 2 * len(widths))
    for i, (cells, row) in enumerate(zip(fixed, [headers, *rows], strict=True)):
        prompt = textwrap.wrap(" ".join(row.prompt.split()), prompt_width) or [""]
        texts = [*cells, prompt[0]]
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(texts, [*widths, 0], strict=True)).rstrip()
        )
        lines += [indent + more for more in prompt[1:]]
        if i == 0:
            lines.append("  ".join("-" * w for w in [*widths, prompt_width]))
    return "\n".join(lines)


def run_demo() -> int:
    """The demo; returns the process exit status."""
    home = dagster_home()
    storage = storage_root()
    started = time.monotonic()

    with ExitStack() as stack:
        emulator: EmulatorServer | None = None
        if not os.environ.get("ZIMAGE_API_KEY"):
            latency = float(os.environ.get("ZIMAGE_DEMO_LATENCY") or DEFAULT_LATENCY_S)
            emulator = stack.enter_context(EmulatorServer(emulator_config(latency)))
            os.environ["ZIMAGE_API_KEY"] = emulator.api_key
            os.environ["ZIMAGE_BASE_URL"] = emulator.url
            print(f"No ZIMAGE_API_KEY set: using the local emulator at {emulator.url}")
            print(f"  (about {latency:g} s per image; set ZIMAGE_API_KEY to use the real API)")
        else:
            print(f"ZIMAGE_API_KEY set: using the API at {base_url()} (new images cost credits)")
        defs = build_defs(storage)
        instance = stack.enter_context(open_instance(home))
        quiet = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

        images_job = defs.resolve_job_def(f"{CATALOGUE}_job")
        partitions_def = defs.resolve_asset_graph().get(dg.AssetKey(CATALOGUE)).partitions_def
        assert partitions_def is not None
        keys = partitions_def.get_partition_keys()
        print(f"\n[1/2] {CATALOGUE}: {len(keys)} partitions in one run (single-run backfill)\n")
        images = images_job.execute_in_process(
            instance=instance,
            run_config=quiet,
            tags={
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
                "zimage/example": "demo",
            },
            raise_on_error=False,
        )
        made = _materializations(images, CATALOGUE)
        failed, errors = _failures(images)

        sheet_path: str | None = None
        sheet_error: str | None = None
        if made:
            print(f"\n[2/2] {CONTACT_SHEET}: its own run, over every stored image\n")
            sheet = defs.resolve_job_def(f"{CONTACT_SHEET}_job").execute_in_process(
                instance=instance,
                run_config=quiet,
                tags={"zimage/example": "demo"},
                raise_on_error=False,
            )
            for event in sheet.all_events:
                if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                    sheet_path = str(
                        _value(event.step_materialization_data.materialization.metadata, "path")
                    )
            if not sheet.success:
                sheet_error = "; ".join(_failures(sheet)[1]) or "the contact sheet run failed"
        tasks_created = emulator.stats()["tasks_created"] if emulator is not None else None

    rows: list[Row] = []
    reasons: dict[str, str] = {}
    for key in keys:
        md = made.get(key)
        if md is None:
            reasons[key] = " ".join(failed.get(key, "not generated (see the run's log)").split())
            rows.append(Row(key, "-", "-", "-", "FAILED", "(reason below)"))
            continue
        width, height = _value(md, "width"), _value(md, "height")
        rows.append(
            Row(
                partition=key,
                seed=str(_value(md, "seed")),
                task_id=str(_value(md, "task_id")),
                size=f"{width}x{height}" if width and height else str(_value(md, "size_requested")),
                status="reused" if _value(md, "reused") else "new",
                prompt=str(_value(md, "prompt") or ""),
            )
        )

    elapsed = time.monotonic() - started
    new = sum(1 for r in rows if r.status == "new")
    reused = sum(1 for r in rows if r.status == "reused")
    bad = len(rows) - new - reused
    print()
    print(_table(rows))
    for key, reason in reasons.items():
        print(f"FAILED {key}: {reason}")
    print()
    summary = f"{len(rows)} images: {new} new, {reused} reused, {bad} failed in {elapsed:.1f} s"
    if tasks_created is not None:
        summary += f"; emulator tasks created this run: {tasks_created}"
    print(summary)
    print(f"Images:        {_shown_path(storage.rstrip('/') + '/' + CATALOGUE)}/")
    print(f"Contact sheet: {_shown_path(sheet_path) if sheet_path else 'not written'}")
    print(f"Dagster runs:  {home} (images run {images.run_id[:8]})")
    print("Dagster UI:    make dev, then open http://127.0.0.1:3000")
    print(
        f"Gallery:       {grid_url(gallery_url(), CATALOGUE)}  (make dev starts it beside the UI)"
    )
    if reused and not new and not bad:
        print(
            "Nothing new: every image was already stored for the identical request (no task paid for)."
        )
    elif reused and new:
        print(f"New this time: {', '.join(r.partition for r in rows if r.status == 'new')}.")

    problems = []
    if bad:
        problems.append(f"{bad} image(s) failed")
    if not images.success and not bad:
        problems.append("the images run failed: " + "; ".join(errors))
    if sheet_error or not sheet_path:
        problems.append(f"no contact sheet: {sheet_error or 'no image was stored'}")
    if problems:
        print("\nDEMO FAILED: " + "; ".join(problems), file=sys.stderr)
        print(
            "See the table above, and the runs' logs in the Dagster UI (make dev). Stored images "
            "are kept: the next `make demo` only redoes what failed.",
            file=sys.stderr,
        )
        return 1
    if new:
        print("\nDemo OK. Run `make demo` again: stored images are reused at no cost.")
    else:
        print("\nDemo OK.")
    return 0


def main() -> None:
    sys.exit(run_demo())


if __name__ == "__main__":
    main()
