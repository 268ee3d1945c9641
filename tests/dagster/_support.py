"""Helpers for the Dagster-layer tests: a fast emulator, real runs, reading their events back."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.resource import ZImageResource

#: The smallest size the API accepts: tiny PNGs, fast renders.
SMALL = "376x376"


def make_fast(emulator: EmulatorServer, **config: Any) -> EmulatorServer:
    """Short tasks (0.1 s) and no ``estimated_time`` hint, so each image takes a few tenths of a
    second with the short polls of :func:`resource_for`.

    The client's first poll waits about 0.6 x ``estimated_time``; the emulator's default (10 s,
    the documented value) would make every test take 6 s.
    """
    emulator.configure(**{"latency_s": 0.1, "estimated_time": 1, **config})
    return emulator


def resource_for(emulator: EmulatorServer, **fields: Any) -> ZImageResource:
    """A resource pointed at the emulator, with short polls and backoff."""
    options: dict[str, Any] = {"max_poll_interval": 0.25, "max_retries": 3, **fields}
    return ZImageResource(api_key=emulator.api_key, base_url=emulator.url, **options)


def rows(n: int, *, size: str = SMALL, prefix: str = "p") -> list[dict[str, Any]]:
    """``n`` dataset rows with keys ``p0``.. and distinct prompts."""
    return [
        {"key": f"{prefix}{i}", "prompt": f"a small red fox, study number {i}", "size": size}
        for i in range(n)
    ]


def image_asset(defs: dg.Definitions) -> dg.AssetsDefinition:
    """The one image asset of a ``build_image_assets`` result."""
    (asset,) = [a for a in defs.assets or () if isinstance(a, dg.AssetsDefinition)]
    return asset


def run_range(
    asset: dg.AssetsDefinition,
    instance: dg.DagsterInstance,
    resource: ZImageResource,
    start: str,
    end: str,
    **kwargs: Any,
) -> dg.ExecuteInProcessResult:
    """One run over the partition range ``start..end`` (a single-run backfill)."""
    return dg.materialize(
        [asset],
        instance=instance,
        resources={"zimage": resource},
        tags={
            "dagster/asset_partition_range_start": start,
            "dagster/asset_partition_range_end": end,
        },
        raise_on_error=False,
        **kwargs,
    )


def run_one(
    asset: dg.AssetsDefinition,
    instance: dg.DagsterInstance,
    resource: ZImageResource,
    partition_key: str,
) -> dg.ExecuteInProcessResult:
    """One run of one partition."""
    return dg.materialize(
        [asset],
        instance=instance,
        resources={"zimage": resource},
        partition_key=partition_key,
        raise_on_error=False,
    )


def materializations(
    instance: dg.DagsterInstance, key: dg.AssetKey | str, run_id: str | None = None
) -> dict[str, list[Mapping[str, Any]]]:
    """``partition -> [metadata, ...]`` (oldest first) of the asset's materializations,
    optionally of one run only."""
    asset_key = dg.AssetKey.from_coercible(key)
    records = instance.fetch_materializations(asset_key, limit=1000, ascending=True).records
    out: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        if run_id is not None and record.run_id != run_id:
            continue
        mat = record.asset_materialization
        assert mat is not None
        out.setdefault(str(mat.partition), []).append(mat.metadata)
    return out


def values(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Plain values of a metadata mapping (``MetadataValue.value``)."""
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def step_failure(result: dg.ExecuteInProcessResult) -> dg.DagsterEvent:
    """The run's (last) STEP_FAILURE event."""
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failures, "the run has no step failure"
    return failures[-1]


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The message of the run's (last) step failure."""
    error = step_failure(result).step_failure_data.error
    assert error is not None
    return error.message


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, list[bool]]:
    """``check name -> [passed, ...]`` of the run's asset check evaluations."""
    out: dict[str, list[bool]] = {}
    for evaluation in result.get_asset_check_evaluations():
        out.setdefault(evaluation.check_name, []).append(evaluation.passed)
    return out


def run_log_text(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every event of a run, serialized (messages, metadata, errors, config): for secret scans."""
    return "\n".join(dg.serialize_value(entry) for entry in instance.all_logs(run_id))


def log_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The user-visible message of every event of the run."""
    return [entry.user_message for entry in instance.all_logs(run_id)]


def seed_failing_then_passing(rate: float, draws: Sequence[bool]) -> int:
    """An emulator ``random_seed`` whose first draws fail (True) or pass (False) at ``rate``.

    The emulator draws ``random.Random(random_seed).random()`` once per created task and fails it
    when the draw is below the failure rate (it draws nothing else when tasks carry a seed and
    the latency is fixed).
    """
    for candidate in range(10_000):
        rng = random.Random(candidate)
        if all((rng.random() < rate) == fail for fail in draws):
            return candidate
    raise AssertionError("no seed found")  # pragma: no cover


def schedule_requests(defs: dg.Definitions, name: str, when: Any) -> list[dg.RunRequest]:
    """The run requests of one tick of the schedule ``name`` at ``when`` (a datetime)."""
    schedule = defs.resolve_schedule_def(name)
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=when,
            repository_def=defs.get_repository_def(),
        )
        return list(schedule.evaluate_tick(context).run_requests or [])
