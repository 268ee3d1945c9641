"""The dg component: a prompt dataset in, a partitioned image asset out, configured in ``defs.yaml``.

>>> from zimage_dagster import ZImageComponent
>>> component = ZImageComponent(asset_name="posters", prompts=[{"key": "fox", "prompt": "a fox"}])
>>> component.partitioning, component.retry.max_retries
('static', 3)

In a dg project (``dg scaffold defs zimage_dagster.ZImageComponent posters`` writes one)::

    type: zimage_dagster.ZImageComponent
    requirements:
      env: [ZIMAGE_API_KEY]
    attributes:
      asset_name: poster_images
      prompts: prompts.csv            # beside this defs.yaml, or in the project, or any URL
      resource:
        api_key: "{{ env.ZIMAGE_API_KEY }}"

:meth:`ZImageComponent.build_defs` resolves the attributes to an
:class:`~zimage_dagster.assets.ImageAssetSpec` and calls
:func:`~zimage_dagster.assets.build_image_definitions`, the one code path of the asset factory
(``build_image_assets`` goes through it too), then binds the ``resource`` section, if any, as a
:class:`~zimage_dagster.resource.ZImageResource` under ``resource_key``.

Secrets: ``resource.api_key`` accepts only a reference to an environment variable
(``"{{ env.ZIMAGE_API_KEY }}"`` or ``"{{ env('ZIMAGE_API_KEY') }}"``). It is *not* rendered at
load time, as Dagster's templating would do (it would hand the resource a plain string, which
Dagster then shows as the resource's configured value in the UI and keeps in the code location's
snapshot); the component reads the variable's name out of the reference and gives the resource
``dagster.EnvVar(name)``, which Dagster resolves in the run process and shows in the UI as the
variable's name only. A literal key is refused (without echoing it).
"""

import datetime
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import dagster as dg
from dagster.components.resolved.errors import ResolutionException
from pydantic import Field, field_validator, model_validator

from zimage_dagster.api import RequestValidationError, validate_size
from zimage_dagster.assets import (
    DEFAULT_RETRY_POLICY,
    ImageAssetSpec,
    PromptSource,
    build_image_definitions,
)
from zimage_dagster.component_scaffold import ZImageComponentScaffolder
from zimage_dagster.resource import ZImageResource
from zimage_dagster.sensors import build_prompt_dataset_sensor, deferred_definitions

__all__ = [
    "ResourceSettings",
    "RetrySettings",
    "ScheduleSettings",
    "ZImageComponent",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
# "{{ env.NAME }}" or "{{ env('NAME') }}" / '{{ env("NAME") }}', and nothing else around it.
_ENV_REFERENCE = re.compile(
    r"""^\s*\{\{\s*env(?:\.([A-Za-z_][A-Za-z0-9_]*)|\(\s*(['"])([A-Za-z_][A-Za-z0-9_]*)\2\s*\))\s*\}\}\s*$"""
)


def _is_url(value: str) -> bool:
    return "://" in value


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"{what} {value!r} must contain only letters, digits and '_'")
    return value


# -- nested sections ------------------------------------------------------------------------


class RetrySettings(dg.Model, dg.Resolvable):
    """Whole-step retries of the image step (a ``dagster.RetryPolicy``).

    Task-level failures are resubmitted inside the step first (``resource.max_resubmits``);
    fixable provider errors (content policy...) are never retried.
    """

    max_retries: int = Field(
        default=DEFAULT_RETRY_POLICY.max_retries,
        description="Times Dagster re-runs the failed step (0: never).",
    )
    delay: float | None = Field(
        default=DEFAULT_RETRY_POLICY.delay,
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
    def _positive_delay(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError("delay must be 0 or more seconds")
        return value

    @model_validator(mode="after")
    def _delay_for_backoff(self) -> "RetrySettings":
        if self.delay is None and (self.backoff is not None or self.jitter is not None):
            raise ValueError(
                "backoff and jitter need a delay: set delay (seconds), or set backoff and jitter to null"
            )
        return self

    def to_policy(self) -> dg.RetryPolicy:
        return dg.RetryPolicy(
            max_retries=self.max_retries,
            delay=self.delay,
            backoff=None if self.backoff is None else dg.Backoff[self.backoff.upper()],
            jitter=None if self.jitter is None else dg.Jitter[self.jitter.upper()],
        )


class ScheduleSettings(dg.Model, dg.Resolvable):
    """A schedule for ``partitioning: daily``: each tick requests that day's image of every prompt."""

    cron: str = Field(
        description="Cron expression of the ticks, e.g. '0 6 * * *' (06:00 every day).",
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
    def _valid_cron(cls, value: str) -> str:
        from dagster._utils.schedules import is_valid_cron_string

        if not is_valid_cron_string(value):
            raise ValueError(f"{value!r} is not a valid cron expression (e.g. '0 6 * * *')")
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


def _resolve_api_key_env(context: dg.ResolutionContext, value: Any) -> str | None:
    """``"{{ env.NAME }}"`` -> ``"NAME"``, without rendering the template (so without reading
    the key). Anything else is refused, and the value is never echoed: it may be a key."""
    if value is None:
        return None
    where = ".".join(str(part) for part in context.path) or "api_key"
    match = _ENV_REFERENCE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ResolutionException(
            f"{where}: write a reference to an environment variable, e.g. "
            "'{{ env.ZIMAGE_API_KEY }}' (the value given is not shown). A literal key would sit in "
            "the defs file and in the resource's configuration shown by the Dagster UI; the "
            "reference becomes dagster.EnvVar, read only in the run process."
        )
    return match.group(1) or match.group(3)


def _resource_doc(name: str) -> str:
    description = ZImageResource.model_fields[name].description or ""
    return f"{description} Unset: the resource's default."


class ResourceSettings(dg.Model, dg.Resolvable):
    """The :class:`~zimage_dagster.ZImageResource` the component binds under ``resource_key``.

    Unset fields keep the resource's defaults. ``api_key`` must be an environment reference,
    ``"{{ env.ZIMAGE_API_KEY }}"``: the resource gets ``dagster.EnvVar("ZIMAGE_API_KEY")``.
    """

    api_key_env: Annotated[
        str | None,
        dg.Resolver(
            _resolve_api_key_env,
            model_field_name="api_key",
            model_field_type=str | None,
            inject_before_resolve=False,
            description=(
                "The EvoLink API key, as a reference to an environment variable: "
                "'{{ env.ZIMAGE_API_KEY }}'. The resource gets dagster.EnvVar(name), read in the "
                "run process, so the key is in no file, run config or UI. Unset: the "
                "ZIMAGE_API_KEY variable is read at run time."
            ),
            examples=["{{ env.ZIMAGE_API_KEY }}"],
        ),
    ] = Field(
        default=None,
        description=(
            "Name of the environment variable holding the API key (in YAML: api_key, written "
            "'{{ env.NAME }}')."
        ),
    )
    base_url: str | None = Field(default=None, description=_resource_doc("base_url"))
    request_timeout: float | None = Field(
        default=None, description=_resource_doc("request_timeout")
    )
    call_deadline: float | None = Field(default=None, description=_resource_doc("call_deadline"))
    max_retries: int | None = Field(default=None, description=_resource_doc("max_retries"))
    wait_deadline: float | None = Field(default=None, description=_resource_doc("wait_deadline"))
    max_poll_interval: float | None = Field(
        default=None, description=_resource_doc("max_poll_interval")
    )
    concurrency: int | None = Field(default=None, description=_resource_doc("concurrency"))
    max_resubmits: int | None = Field(default=None, description=_resource_doc("max_resubmits"))
    max_download_bytes: int | None = Field(
        default=None, description=_resource_doc("max_download_bytes")
    )

    @field_validator("request_timeout", "call_deadline", "wait_deadline", "max_poll_interval")
    @classmethod
    def _positive_seconds(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be more than 0 seconds")
        return value

    @field_validator("concurrency", "max_download_bytes")
    @classmethod
    def _positive_count(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be 1 or more")
        return value

    @field_validator("max_retries", "max_resubmits")
    @classmethod
    def _non_negative_count(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("must be 0 or more")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be the name of an environment variable, e.g. ZIMAGE_API_KEY")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, e.g. https://api.evolink.ai")
        return value

    def resource_config(self) -> dict[str, Any]:
        """The keyword arguments given to ``ZImageResource`` (set fields only)."""
        config: dict[str, Any] = {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name != "api_key_env" and getattr(self, name) is not None
        }
        if self.api_key_env is not None:
            config["api_key"] = dg.EnvVar(self.api_key_env)
        return config

    def build_resource(self) -> ZImageResource:
        """The resource; the same object for the same settings, so that two components with the
        same ``resource`` section and ``resource_key`` merge into one set of definitions."""
        config = self.resource_config()
        cache_key = tuple(
            sorted(
                (name, ("env", value) if isinstance(value, dg.EnvVar) else value)
                for name, value in config.items()
            )
        )
        resource = _RESOURCES.get(cache_key)
        if resource is None:
            resource = _RESOURCES.setdefault(cache_key, ZImageResource(**config))
        return resource


_RESOURCES: dict[tuple[tuple[str, Any], ...], ZImageResource] = {}


# -- the component --------------------------------------------------------------------------


@dg.scaffold_with(ZImageComponentScaffolder)
class ZImageComponent(dg.Component, dg.Model, dg.Resolvable):
    """Z-Image-Turbo images from a prompt dataset, as one partitioned Dagster asset.

    One partition per dataset row (or dynamic partitions, or date x prompt), a job over it,
    asset checks on every stored image, an optional daily schedule and the ZImageResource.
    """

    asset_name: str = Field(
        description="Name of the image asset (also its folder under storage), e.g. poster_images.",
        examples=["poster_images"],
    )
    prompts: str | list[str | dict[str, Any]] = Field(
        description=(
            "The prompt dataset: a CSV / TSV / JSON Lines / JSON / Parquet file, by a path relative "
            "to this defs.yaml's folder (looked up first) or to the project root, an absolute path, "
            "or any fsspec URL (s3://..., gs://..., https://...); or an inline list of prompts "
            "(strings, or mappings with prompt and optionally key, size, seed, nsfw_check). "
            "Columns: prompt (required), key, size, seed, nsfw_check; others go to metadata."
        ),
        examples=["prompts.csv", "s3://bucket/prompts.jsonl"],
    )
    key_prefix: list[str] = Field(
        default_factory=list,
        description="Asset key prefix, e.g. [marketing] for marketing/poster_images.",
    )
    group_name: str | None = Field(
        default=None, description="Asset group in the Dagster UI (default: 'default')."
    )
    description: str | None = Field(
        default=None, description="Asset description (default: one naming the dataset)."
    )
    partitioning: Literal["static", "dynamic", "daily"] = Field(
        default="static",
        description=(
            "static: one partition per dataset row; dynamic: partitions added at run time "
            "(the dataset is re-read each run); daily: date x prompt, a new image per prompt "
            "each day (seeds differ per day)."
        ),
    )
    dynamic_partitions_name: str | None = Field(
        default=None,
        description="With partitioning: dynamic, the partitions' name (default: <asset_name>_prompts).",
    )
    daily_start_date: str = Field(
        default="2026-01-01",
        description="With partitioning: daily, the first date (YYYY-MM-DD).",
    )
    default_size: str | None = Field(
        default=None,
        description=(
            "Size for rows without one: a ratio (1:1 2:3 3:2 3:4 4:3 9:16 16:9 1:2 2:1) or WxH with "
            "each side 376..1536, e.g. 1024x768. Unset: the API's default, 1:1."
        ),
        examples=["1:1", "1024x768"],
    )
    seed_strategy: Literal["derived", "random"] = Field(
        default="derived",
        description=(
            "derived: seed from asset, partition key and prompt (a re-run repeats the request); "
            "random: a fresh seed per request (recorded). A row's own seed always wins."
        ),
    )
    storage: str = Field(
        default="zimage_output",
        description=(
            "Where images, provenance records and the task ledger go: a folder (relative paths "
            "are from the project root) or an fsspec URL (s3://bucket/prefix, gs://..., memory://...)."
        ),
        examples=["zimage_output", "s3://my-bucket/images"],
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options of the storage URL (e.g. {anon: false}); kept out of metadata.",
    )
    mode: Literal["blocking", "deferred"] = Field(
        default="blocking",
        description=(
            "blocking: the step submits, waits and stores; deferred: the step submits and ends, the "
            "task-status sensor collects the images."
        ),
    )
    dataset_sensor: bool | None = Field(
        default=None,
        description=(
            "With partitioning: dynamic, add the prompt-dataset sensor (created stopped: turning "
            "it on starts paid generation): it adds the dataset's new keys as partitions and "
            "requests their runs, and regenerates changed prompts. Default: on when partitioning "
            "is dynamic and prompts is a file or URL."
        ),
    )
    schedule: ScheduleSettings | None = Field(
        default=None,
        description="With partitioning: daily, a schedule (stopped by default): {cron, timezone}.",
    )
    pool: str | None = Field(
        default="zimage",
        description=(
            "Dagster concurrency pool of the step; cap it across runs in the instance settings "
            "(concurrency: pools:). null: no pool."
        ),
    )
    max_partitions_per_run: int | None = Field(
        default=None,
        description=(
            "Most partitions one backfill run covers (null: any number, one run; their tasks are "
            "submitted concurrently, up to resource.concurrency at a time)."
        ),
    )
    retry: RetrySettings | None = Field(
        default_factory=RetrySettings,
        description=(
            "Whole-step retries {max_retries, delay, backoff, jitter}; default 3 retries, 10 s, "
            "exponential, plus_minus jitter. null: no step retries."
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
    resource_key: str = Field(
        default="zimage", description="Resource key of the ZImageResource the asset uses."
    )
    resource: ResourceSettings | None = Field(
        default=None,
        description=(
            "Bind a ZImageResource under resource_key, configured here ({api_key, base_url, "
            "timeouts, concurrency...}). Leave out when the project binds one itself."
        ),
    )

    # -- validation: each message names its field (pydantic prefixes it) ----------------------

    @field_validator("asset_name", "resource_key")
    @classmethod
    def _dagster_name(cls, value: str) -> str:
        return _check_name(value, "name")

    @field_validator("key_prefix")
    @classmethod
    def _prefix_parts(cls, value: list[str]) -> list[str]:
        for part in value:
            _check_name(part, "key_prefix part")
        return value

    @field_validator("default_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                validate_size(value)
            except RequestValidationError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("daily_start_date")
    @classmethod
    def _date(cls, value: str) -> str:
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a date written YYYY-MM-DD") from None
        return value

    @field_validator("max_partitions_per_run")
    @classmethod
    def _per_run(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be 1 or more (or null for no limit)")
        return value

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must name a dataset file or URL, or list prompts")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> "ZImageComponent":
        if self.schedule is not None and self.partitioning != "daily":
            raise ValueError(
                f"schedule needs partitioning: daily (got partitioning: {self.partitioning})"
            )
        if self.dynamic_partitions_name is not None and self.partitioning != "dynamic":
            raise ValueError(
                "dynamic_partitions_name needs partitioning: dynamic "
                f"(got partitioning: {self.partitioning})"
            )
        if self.dynamic_partitions_name is not None:
            _check_name(self.dynamic_partitions_name, "dynamic_partitions_name")
        if self.dataset_sensor and self.partitioning != "dynamic":
            raise ValueError(
                f"dataset_sensor needs partitioning: dynamic (got partitioning: {self.partitioning})"
            )
        if self.dataset_sensor and not isinstance(self.prompts, str):
            raise ValueError("dataset_sensor watches a dataset file or URL, not inline prompts")
        return self

    # -- building --------------------------------------------------------------------------

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        spec = self.image_asset_spec(context)
        parts = [build_image_definitions(spec)]
        job_name = f"{spec.name}_job"
        factory_sensors = list(parts[0].sensors or [])
        if self.mode == "deferred" and not factory_sensors:
            # The task-status sensor collects what the submit step created (and, for a dynamic
            # dataset, the prompt-dataset sensor), unless the factory already added them.
            parts.append(
                deferred_definitions(spec, job_name, dataset_sensor=self._wants_dataset_sensor())
            )
        elif self._wants_dataset_sensor() and not factory_sensors:
            parts.append(dg.Definitions(sensors=[build_prompt_dataset_sensor(spec, job_name)]))
        if self.resource is not None:
            resource = self.resource.build_resource()
            parts.append(dg.Definitions(resources={self.resource_key: resource}))
        return dg.Definitions.merge(*parts)

    def _wants_dataset_sensor(self) -> bool:
        if self.dataset_sensor is not None:
            return self.dataset_sensor
        return self.partitioning == "dynamic" and isinstance(self.prompts, str)

    def image_asset_spec(self, context: dg.ComponentLoadContext) -> ImageAssetSpec:
        """The asset factory's input, with paths resolved against the defs folder and project."""
        options: dict[str, Any] = {
            "name": self.asset_name,
            "prompts": self._prompt_source(context),
            "storage": self._storage(context),
            "storage_options": dict(self.storage_options),
            "partitioning": self.partitioning,
            "key_prefix": tuple(self.key_prefix),
            "group_name": self.group_name,
            "description": self.description,
            "seed_strategy": self.seed_strategy,
            "default_size": self.default_size,
            "daily_start_date": self.daily_start_date,
            "dynamic_partitions_name": self.dynamic_partitions_name,
            "pool": self.pool,
            "retry_policy": None if self.retry is None else self.retry.to_policy(),
            "max_partitions_per_run": self.max_partitions_per_run,
            "reuse_stored": self.reuse_stored,
            "retry_rejected": self.retry_rejected,
            "resource_key": self.resource_key,
            "schedule_cron": None if self.schedule is None else self.schedule.cron,
            "schedule_timezone": "UTC" if self.schedule is None else self.schedule.timezone,
        }
        options["deferred"] = self.mode == "deferred"
        return ImageAssetSpec(**options)

    def _prompt_source(self, context: dg.ComponentLoadContext) -> PromptSource:
        if not isinstance(self.prompts, str):
            rows: list[Any] = list(self.prompts)  # strings and mappings, as load_prompts takes
            return rows
        value = self.prompts
        if _is_url(value):
            return value
        path = Path(value).expanduser()
        if path.is_absolute():
            return str(path)
        candidates = _unique([_defs_dir(context) / path, Path(context.project_root) / path])
        for candidate in candidates:
            if candidate.exists():
                return str(candidate.resolve())
        looked = ", ".join(str(c) for c in candidates)
        raise dg.DagsterInvalidDefinitionError(
            f"{self.asset_name}: prompts: no file {value!r} (looked in: {looked})"
        )

    def _storage(self, context: dg.ComponentLoadContext) -> str:
        value = self.storage
        if _is_url(value):
            return value
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = Path(context.project_root) / path
        return str(path)


def _defs_dir(context: dg.ComponentLoadContext) -> Path:
    path = Path(context.path)
    return path.parent if path.suffix in {".yaml", ".yml", ".py"} else path


def _unique(paths: list[Path]) -> list[Path]:
    seen: dict[str, Path] = {}
    for path in paths:
        seen.setdefault(str(path.absolute()), path)
    return list(seen.values())
