"""The one declaration of an image asset: :class:`ImageAssetSpec`.

Every option of an image asset is declared here once, with its type, default, description and
validation. :func:`~zimage_dagster.assets.build_image_assets` takes these fields as keyword
arguments, and the dg component (:class:`~zimage_dagster.component.ZImageComponent`) *is* this
model plus a ``resource`` section, so its YAML schema is derived from it, not re-declared.

>>> spec = ImageAssetSpec(asset_name="posters", prompts=[{"key": "fox", "prompt": "a fox"}])
>>> spec.asset_key.to_user_string(), spec.retry_policy.max_retries, spec.deferred
('posters', 3, False)
>>> ImageAssetSpec(asset_name="p", prompts="p.csv", schedule={"cron": "0 6 * * *"})
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for ImageAssetSpec
  Value error, schedule needs partitioning: daily (got partitioning: static) ...
"""

from __future__ import annotations

import datetime
import os
import re
import zoneinfo
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import dagster as dg
from pydantic import ConfigDict, Field, field_validator, model_validator

from zimage_dagster.api import RequestValidationError, validate_size
from zimage_dagster.dataset.request import SeedStrategy
from zimage_dagster.engine.credits import CreditBudget
from zimage_dagster.engine.reviews import MAX_CANDIDATES
from zimage_dagster.engine.store import resolve_storage
from zimage_dagster.prompts import PromptDataset

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "GenerationOptions",
    "ImageAssetSpec",
    "Partitioning",
    "PromptSource",
    "RetrySettings",
    "ScheduleSettings",
]

Partitioning = Literal["static", "dynamic", "daily", "shards"]
#: A dataset path or URL, a loaded dataset, or inline rows (strings or mappings).
PromptSource = str | PromptDataset | list[Any]

_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
_DAILY_CRON = re.compile(r"^\s*(\d{1,2})\s+(\d{1,2})\s+\*\s+\*\s+\*\s*$")


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"{what} {value!r} must contain only letters, digits and '_'")
    return value


class RetrySettings(dg.Model, dg.Resolvable):
    """Whole-step retries of the image step (a ``dagster.RetryPolicy``).

    Task-level failures are resubmitted inside the step first (``resource.max_resubmits``);
    fixable provider errors (content policy...) are never retried.

    >>> RetrySettings(max_retries=1, delay=None, backoff=None, jitter=None).to_policy().max_retries
    1
    """

    max_retries: int = Field(default=3, description="Times Dagster re-runs the failed step.")
    delay: float | None = Field(
        default=10,
        description="Seconds before the first retry (null: at once; then no backoff or jitter).",
    )
    backoff: Literal["linear", "exponential"] | None = Field(
        default="exponential",
        description="How the delay grows between retries: linear, exponential, or null (fixed).",
    )
    jitter: Literal["full", "plus_minus"] | None = Field(
        default="plus_minus",
        description="Random spread of each delay: full (0..delay), plus_minus, or null (none).",
    )

    @field_validator("max_retries")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("max_retries must be 0 or more")
        return value

    @field_validator("delay")
    @classmethod
    def _non_negative_delay(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError("delay must be 0 or more seconds")
        return value

    @model_validator(mode="after")
    def _delay_for_backoff(self) -> RetrySettings:
        if self.delay is None and (self.backoff is not None or self.jitter is not None):
            raise ValueError(
                "backoff and jitter need a delay: set delay (seconds), or set backoff and jitter "
                "to null"
            )
        return self

    def to_policy(self) -> dg.RetryPolicy:
        """The ``dagster.RetryPolicy``."""
        return dg.RetryPolicy(
            max_retries=self.max_retries,
            delay=self.delay,
            backoff=None if self.backoff is None else dg.Backoff[self.backoff.upper()],
            jitter=None if self.jitter is None else dg.Jitter[self.jitter.upper()],
        )


#: Whole-step retries: exponential backoff from 10 s with +/- jitter.
DEFAULT_RETRY_POLICY = RetrySettings().to_policy()


class ScheduleSettings(dg.Model, dg.Resolvable):
    """A daily schedule for ``partitioning: daily``: each tick requests that day's image of every
    prompt known when the code location loaded (Dagster's ``build_schedule_from_partitioned_job``).

    >>> ScheduleSettings(cron="30 6 * * *").hour_and_minute
    (6, 30)
    """

    cron: str = Field(
        default="0 6 * * *",
        description="When each day, as a daily cron expression 'M H * * *' (e.g. '0 6 * * *').",
        examples=["0 6 * * *"],
    )
    timezone: str = Field(
        default="UTC",
        description=(
            "IANA time zone of the schedule, e.g. 'Europe/Paris'. Also the time zone of the daily "
            "partitions (a day starts at midnight there)."
        ),
    )

    @field_validator("cron")
    @classmethod
    def _daily_cron(cls, value: str) -> str:
        match = _DAILY_CRON.match(value)
        if match is None or int(match.group(1)) > 59 or int(match.group(2)) > 23:
            raise ValueError(
                f"{value!r} is not a daily cron expression 'M H * * *' (e.g. '0 6 * * *'): the "
                "schedule follows the daily partitions"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not a known IANA time zone (e.g. 'UTC', 'Europe/Paris')"
            ) from None
        return value

    @property
    def hour_and_minute(self) -> tuple[int, int]:
        """``(hour_of_day, minute_of_hour)`` of the ticks."""
        match = _DAILY_CRON.match(self.cron)
        assert match is not None
        return int(match.group(2)), int(match.group(1))


class GenerationOptions(dg.Model, dg.Resolvable):
    """The options of image generation shared by an image asset (:class:`ImageAssetSpec`) and
    the op (:func:`~zimage_dagster.ops.build_generate_images_op`): each is declared here once,
    with its type, default, description and validation.

    >>> GenerationOptions(max_credits_per_run=1.0).credit_budget.limited
    True
    >>> GenerationOptions(default_size="7:5")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for GenerationOptions
    default_size
      Value error, ...
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    default_size: str | None = Field(
        default=None,
        description=(
            "Size for rows without one: a ratio (1:1 2:3 3:2 3:4 4:3 9:16 16:9 1:2 2:1) or WxH with "
            "each side 376..1536. Unset: the API's default, 1:1."
        ),
        examples=["1:1", "1024x768"],
    )
    seed_strategy: SeedStrategy = Field(
        default="derived",
        description=(
            "derived: seed from asset, partition key and prompt (a re-run repeats the request); "
            "random: drawn once per request and recorded. A row's own seed always wins."
        ),
    )
    storage: str | None = Field(
        default=None,
        description=(
            "Where images, provenance records and the task ledger go: a folder or an fsspec URL "
            "(s3://bucket/prefix, gs://..., memory://...). Unset: $ZIMAGE_STORAGE_URL, else the "
            "folder zimage_output (in YAML, relative folders are from the project root)."
        ),
        examples=["zimage_output", "s3://my-bucket/images"],
    )
    storage_options: dict[str, Any] = Field(
        default={},
        description="fsspec options of the storage URL (e.g. {anon: false}); kept out of metadata.",
    )
    gallery_url: str | None = Field(
        default=None,
        description=(
            "Base URL of zimage-gallery serving this storage (default: $ZIMAGE_GALLERY_URL): "
            "each materialization links to its image's page, the description to the asset's grid."
        ),
        examples=["http://127.0.0.1:3001"],
    )
    pool: str | None = Field(
        default="zimage",
        description=(
            "Dagster concurrency pool of the step; cap it across runs in the instance settings "
            "(concurrency: pools:). null: no pool."
        ),
    )
    retry_policy: Annotated[
        dg.RetryPolicy | None,
        dg.Resolver(
            lambda context, value: None if value is None else value.to_policy(),
            model_field_type=RetrySettings | None,
            model_field_name="retry",
            description=(
                "Whole-step retries (in YAML: retry: {max_retries, delay, backoff, jitter}); "
                "default 3 retries, 10 s, exponential, plus_minus jitter. null: no step retries."
            ),
        ),
    ] = DEFAULT_RETRY_POLICY
    variants: int = Field(
        default=1,
        ge=1,
        le=MAX_CANDIDATES,
        description=(
            "Candidates per partition (1..8): N images, each with its own seed from the one seed "
            "rule (a row's seed s gives s, s+1, ...). Candidate 0 is the image of variants: 1; "
            "the others are stored beside it. A reviewer picks among them in the gallery."
        ),
    )
    regenerate_rejected: bool = Field(
        default=False,
        description=(
            "A partition whose winning review verdict is reject gets N new candidates with new "
            "seeds (derived from the reject record: one reject never pays twice) in the next "
            "run, under its budgets; the rejected seeds and task IDs stay in the history. "
            "Turning it off again goes back to the first seeds, and pays for them once more."
        ),
    )
    reuse_stored: bool = Field(
        default=True,
        description="Reuse an image already stored for the identical request instead of paying again.",
    )
    retry_rejected: bool = Field(
        default=False,
        description=(
            "Submit again a request the provider rejected with a fixable error (content policy...); "
            "normally such a partition fails without retries."
        ),
    )
    max_credits_per_run: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Credits this asset's tasks may reserve in one run (its step retries included); "
            "when reached, no further task is created and the partitions left fail with "
            "budget_reached. null: no cap."
        ),
    )
    daily_credits: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Credits this asset's tasks may reserve in any 24 hours, across runs and pods (kept "
            "in the ledger's storage). null: no cap."
        ),
    )
    credits_per_task: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Price used to estimate a run before it starts; null: what the provider reserved for "
            "the last task, else 0.026 (the provider's documented price)."
        ),
    )
    over_budget: Literal["refuse", "fit"] = Field(
        default="refuse",
        description=(
            "When a run's estimate exceeds a budget or the balance: refuse (create no task, fail "
            "every partition saying why) or fit (create what fits, the rest fail budget_reached)."
        ),
    )
    credits_preflight: bool = Field(
        default=True,
        description=(
            "Read the account's balance (GET /v1/credits) before a run creates tasks and treat "
            "it as one more budget."
        ),
    )
    resource_key: str = Field(
        default="zimage", description="Resource key of the ZImageResource the asset uses."
    )

    @field_validator("storage_options", mode="before")
    @classmethod
    def _no_options(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("storage", mode="before")
    @classmethod
    def _storage_path(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("asset_name", "resource_key", check_fields=False)  # asset_name: the spec's
    @classmethod
    def _dagster_name(cls, value: str) -> str:
        return _check_name(value, "name")

    @field_validator("default_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                validate_size(value)
            except RequestValidationError as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def credit_budget(self) -> CreditBudget:
        """The run's budgets and preflight, for the engine's create gate."""
        return CreditBudget(
            max_credits_per_run=self.max_credits_per_run,
            daily_credits=self.daily_credits,
            credits_per_task=self.credits_per_task,
            over_budget=self.over_budget,
            preflight=self.credits_preflight,
        )

    @property
    def storage_root(self) -> str:
        """Where images go: ``storage``, else ``$ZIMAGE_STORAGE_URL``, else ``zimage_output``."""
        return resolve_storage(self.storage)


# No `default_factory` in the fields below: Dagster 1.10.x merges each field with one carrying a
# plain default, which newer pydantic (2.14 here) refuses when a default_factory is set: `dg`
# could not load the component on the Dagster floor (`make compat` checks it). pydantic copies
# these mutable defaults per instance.
class ImageAssetSpec(GenerationOptions):
    """Everything that defines an image asset (the factory's arguments, the component's YAML).

    Python callers may pass ``prompts`` as a path, URL, ``PromptDataset`` or list of rows,
    and ``storage`` as a path or URL.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    asset_name: str = Field(
        description="Name of the image asset (also its folder under storage), e.g. poster_images.",
        examples=["poster_images"],
    )
    prompts: Annotated[
        PromptSource,
        dg.Resolver.default(
            model_field_type=str | list[str | dict[str, Any]],
            description=(
                "The prompt dataset: a CSV / TSV / JSON Lines / JSON / Parquet file (in YAML: by a "
                "path relative to the defs.yaml's folder, looked up first, or to the project "
                "root), an absolute path, or any fsspec URL; or inline prompts (strings, or "
                "mappings with prompt and optionally key, size, seed, nsfw_check). Other columns "
                "go to metadata."
            ),
            examples=["prompts.csv", "s3://bucket/prompts.jsonl"],
        ),
    ]
    key_prefix: list[str] = Field(
        default=[],
        description="Asset key prefix, e.g. [marketing] for marketing/poster_images.",
    )
    group_name: str | None = Field(
        default=None, description="Asset group in the Dagster UI (default: 'default')."
    )
    description: str | None = Field(
        default=None, description="Asset description (default: one naming the dataset)."
    )
    partitioning: Partitioning = Field(
        default="static",
        description=(
            "static: one partition per dataset row; dynamic: partitions added at run time (by the "
            "prompt-dataset sensor; the dataset is re-read each run); daily: date x prompt, a new "
            "image per prompt each day (seeds differ per day); shards: one partition per shard of "
            "about shard_size rows (a row's shard is a hash of its key), a Parquet manifest per "
            "shard and no event per image: for 10,000 prompts and more."
        ),
    )
    shard_size: int = Field(
        default=1000,
        ge=1,
        description=(
            "With partitioning: shards, rows per shard on average: the shard count is "
            "ceil(rows / shard_size) of the dataset as loaded, unless shard_count pins it."
        ),
    )
    shard_count: int | None = Field(
        default=None,
        ge=1,
        description=(
            "With partitioning: shards, a fixed number of shards (a growing dataset then never "
            "moves a row to another shard). null: ceil(rows / shard_size), which grows with the "
            "dataset (a row then only ever moves to a new shard, and its image is reused)."
        ),
    )
    dynamic_partitions_name: str | None = Field(
        default=None,
        description="With partitioning: dynamic, the partitions' name (default: <asset_name>_prompts).",
    )
    daily_start_date: str | None = Field(
        default=None,
        description=(
            "With partitioning: daily (and required there), the first date of the partitions "
            "(YYYY-MM-DD): every day from it to today is a partition of every prompt, to fill."
        ),
        examples=["2026-12-01"],
    )
    mode: Literal["blocking", "deferred"] = Field(
        default="blocking",
        description=(
            "blocking: the step submits, waits and stores; deferred: the step submits and ends, "
            "the task-status sensor collects the images."
        ),
    )
    dataset_sensor: bool | None = Field(
        default=None,
        description=(
            "With partitioning: dynamic, the prompt-dataset sensor (stopped unless "
            "default_status: running: it starts paid generation) adds the dataset's new keys as partitions, requests "
            "their runs and regenerates changed prompts. Default: on when partitioning is "
            "dynamic and prompts is a file or URL."
        ),
    )
    schedule: ScheduleSettings | None = Field(
        default=None,
        description=(
            "With partitioning: daily, a schedule (stopped unless default_status: running): "
            "{cron, timezone}."
        ),
    )
    default_status: Literal["stopped", "running"] = Field(
        default="stopped",
        description=(
            "Whether the asset's prompt-dataset sensor (partitioning: dynamic) and its daily "
            "schedule start running when the code location loads. stopped (the default): turn "
            "them on in the UI, since each tick can start paid generation; running: they start "
            "at once."
        ),
    )
    max_partitions_per_run: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most partitions one backfill run covers (null: any number, one run; their tasks are "
            "submitted concurrently, up to resource.concurrency at a time)."
        ),
    )
    picks: bool = Field(
        default=False,
        description=(
            "Add <asset_name>_picks: a partitioned asset holding only the image a reviewer "
            "picked in the gallery for each partition, for a publishing step to load "
            "(through ImageStoreIOManager)."
        ),
    )
    balance_asset: bool = Field(
        default=False,
        description=(
            "Add an observable source asset <asset_name>_credits recording the account's "
            "balance over time (observed by a sensor), with a check warning below "
            "balance_warn_below."
        ),
    )
    balance_warn_below: float | None = Field(
        default=None,
        ge=0,
        description="The balance check warns when the account has fewer credits than this.",
    )
    balance_interval_s: int = Field(
        default=3600,
        ge=30,
        description="Seconds between two observations of the balance (the balance sensor's interval).",
    )
    deps: Annotated[
        list[Any],
        dg.Resolver.default(
            model_field_type=list[str],
            description="Upstream assets (lineage), e.g. the prompt dataset's asset: [raw/prompts].",
        ),
    ] = Field(default=[])
    tags: dict[str, str] = Field(default={}, description="Tags of the asset.")
    owners: list[str] = Field(default=[], description="Owners of the asset (emails or team:name).")
    kinds: list[str] = Field(
        default=["zimage", "image"],
        description="Kinds shown in the Dagster UI (at most 3).",
    )
    automation_condition: Annotated[
        dg.AutomationCondition | None,
        dg.Resolver.default(
            model_field_type=str | None,
            description=(
                "When Dagster materializes the asset by itself, e.g. "
                "'{{ dg.AutomationCondition.on_missing() }}'."
            ),
        ),
    ] = None
    code_version: str | None = Field(
        default=None, description="Code version of the asset (bump it to show the code changed)."
    )
    op_tags: dict[str, Any] = Field(
        default={}, description="Tags of the step (e.g. executor or k8s settings)."
    )

    # -- Python conveniences ---------------------------------------------------------------

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompt_source(cls, value: Any) -> Any:
        if isinstance(value, PromptDataset | str):
            if isinstance(value, str) and not value.strip():
                raise ValueError("must name a dataset file or URL, or list prompts")
            return value
        if isinstance(value, os.PathLike) or type(value).__name__.endswith("Path"):
            return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        if isinstance(value, Sequence):
            return list(value)
        raise ValueError(f"must be a dataset path or URL, or a list of prompts, not {value!r}")

    @field_validator("code_version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # YAML (and template rendering) turns `code_version: 7` or "7" into a number.
        return (
            str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        )

    # -- validation: each message names its field (pydantic prefixes it) --------------------

    @field_validator("key_prefix")
    @classmethod
    def _prefix_parts(cls, value: list[str]) -> list[str]:
        for part in value:
            _check_name(part, "key_prefix part")
        return value

    @field_validator("daily_start_date")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a date written YYYY-MM-DD") from None
        return value

    @model_validator(mode="after")
    def _coherent(self) -> ImageAssetSpec:
        if self.partitioning == "daily" and self.daily_start_date is None:
            # No default: a fixed date would silently open every day since then as a missing
            # partition to pay for, and "today" would change the partitions on every load.
            raise ValueError(
                "daily_start_date is required with partitioning: daily: the first date of the "
                "partitions, e.g. daily_start_date: '2026-12-01' (every day from it is a "
                "partition of every prompt)"
            )
        if self.schedule is not None and self.partitioning != "daily":
            raise ValueError(
                f"schedule needs partitioning: daily (got partitioning: {self.partitioning})"
            )
        if self.dynamic_partitions_name is not None:
            if self.partitioning != "dynamic":
                raise ValueError(
                    "dynamic_partitions_name needs partitioning: dynamic "
                    f"(got partitioning: {self.partitioning})"
                )
            _check_name(self.dynamic_partitions_name, "dynamic_partitions_name")
        if self.dataset_sensor and self.partitioning != "dynamic":
            raise ValueError(
                f"dataset_sensor needs partitioning: dynamic (got partitioning: {self.partitioning})"
            )
        if self.partitioning == "shards":
            if self.deferred:
                raise ValueError(
                    "partitioning: shards works in mode: blocking only (deferred collection is "
                    "per partition): use mode: blocking with partitioning: shards, or mode: "
                    "deferred with partitioning: static or dynamic"
                )
            if self.picks:
                raise ValueError(
                    "picks needs one partition per prompt: not with partitioning: shards"
                )
            if self.variants > 1 or self.regenerate_rejected:
                raise ValueError(
                    "variants and regenerate_rejected need one partition per prompt (a manifest "
                    "row is one image): not with partitioning: shards"
                )
        elif self.shard_count is not None or self.shard_size != 1000:
            raise ValueError(
                "shard_size and shard_count need partitioning: shards "
                f"(got partitioning: {self.partitioning})"
            )
        if self.balance_warn_below is not None and not self.balance_asset:
            raise ValueError("balance_warn_below needs balance_asset: true")
        if self.dataset_sensor and not isinstance(self.prompts, str):
            raise ValueError("dataset_sensor watches a dataset file or URL, not inline prompts")
        return self

    # -- derived values ----------------------------------------------------------------------

    @property
    def asset_key(self) -> dg.AssetKey:
        """The asset's key (``key_prefix`` + ``asset_name``)."""
        return dg.AssetKey([*self.key_prefix, self.asset_name])

    @property
    def deferred(self) -> bool:
        """True in deferred mode."""
        return self.mode == "deferred"

    @property
    def first_day(self) -> str:
        """``daily_start_date`` of a daily asset (the validation makes it present)."""
        if self.daily_start_date is None:
            raise ValueError(f"{self.asset_name}: daily_start_date is not set")
        return self.daily_start_date

    @property
    def sensor_status(self) -> dg.DefaultSensorStatus:
        """``default_status`` of the prompt-dataset sensor."""
        return dg.DefaultSensorStatus(self.default_status.upper())

    @property
    def schedule_status(self) -> dg.DefaultScheduleStatus:
        """``default_status`` of the daily schedule."""
        return dg.DefaultScheduleStatus(self.default_status.upper())

    @property
    def timezone(self) -> str:
        """The time zone of the daily partitions (the schedule's)."""
        return "UTC" if self.schedule is None else self.schedule.timezone

    @property
    def partitions_name(self) -> str:
        """The dynamic partitions' name."""
        return self.dynamic_partitions_name or f"{self.asset_name}_prompts"

    @property
    def job_name(self) -> str:
        """The name of the job over the asset."""
        return f"{self.asset_name}_job"

    @property
    def wants_dataset_sensor(self) -> bool:
        """Whether the prompt-dataset sensor exists (see ``dataset_sensor``)."""
        if self.dataset_sensor is not None:
            return self.dataset_sensor
        return self.partitioning == "dynamic" and isinstance(self.prompts, str)
