"""``dg scaffold defs zimage_dagster.ZImageComponent <path>``: a commented ``defs.yaml`` (and a
sample ``prompts.csv`` beside it unless ``--prompts`` names a dataset).

Kept apart from :mod:`zimage_dagster.component` so that scaffolding needs no asset machinery.
"""

import json
import re
import textwrap
from pathlib import Path

from dagster import Scaffolder, ScaffoldRequest
from dagster.components.component_scaffolding import scaffold_component
from pydantic import BaseModel, Field

__all__ = ["SAMPLE_PROMPTS_CSV", "ZImageComponentScaffolder", "ZImageScaffoldParams"]


class ZImageScaffoldParams(BaseModel):
    """``dg scaffold defs zimage_dagster.ZImageComponent <path> [--asset-name X] [--prompts P]``."""

    asset_name: str | None = Field(
        default=None,
        description="Name of the image asset (default: the last part of the defs path).",
    )
    prompts: str | None = Field(
        default=None,
        description=(
            "An existing prompt dataset (path or URL). Default: a sample prompts.csv is written "
            "beside defs.yaml."
        ),
    )


SAMPLE_PROMPTS_CSV = """\
key,prompt,size,seed,category
lighthouse-dusk,"A lighthouse on a rocky headland at dusk, warm light in the lantern room, long exposure sea, cinematic photograph",16:9,,landscape
espresso-hero,"Studio product shot of a matte black espresso machine on white marble, a ribbon of steam, soft rim light",1:1,12345,product
fox-kit,"A curious red fox cub peeking out of a snowy burrow, children's picture book illustration, soft gouache",3:4,,illustration
"""

_DEFS_YAML = """\
# A Z-Image-Turbo image asset: one partition per row of the prompt dataset.
# Reference: `dg utils inspect-component zimage_dagster.ZImageComponent`; check: `dg check yaml`.
type: zimage_dagster.ZImageComponent

# Environment variables read by this file ({{{{ env.X }}}}); `dg check yaml` checks the list.
requirements:
  env:
    - ZIMAGE_API_KEY

attributes:
  # The asset's name, also its folder under `storage`.
  asset_name: {asset_name}

  # CSV / JSON Lines / JSON / Parquet: a path relative to this folder (looked up first) or to
  # the project root, an absolute path, or a URL (s3://..., gs://..., https://...).
  # Columns: prompt (required), key, size, seed, nsfw_check; others are kept as metadata.
  prompts: {prompts}

  # group_name: images
  # key_prefix: [marketing]
  # description: Images for the autumn campaign.

  # static (a partition per row) | dynamic (keys added at run time) | daily (date x prompt)
  partitioning: static
  # dataset_sensor: true                # partitioning: dynamic only: a sensor that adds new
  #                                      # dataset keys as partitions and requests them
  # daily_start_date: "2026-12-01"      # partitioning: daily only, and required there
  # schedule:                            # partitioning: daily only
  #   cron: "0 6 * * *"
  #   timezone: UTC                      # also the time zone of the daily partitions
  # default_status: stopped              # the dataset sensor / schedule start stopped (each
  #                                      # tick can start paid generation) | running

  # Size for rows without one: 1:1 2:3 3:2 3:4 4:3 9:16 16:9 1:2 2:1, or WxH (376..1536 a side).
  default_size: "1:1"
  # derived (same partition -> same seed -> same image) | random (recorded in metadata)
  seed_strategy: derived

  # A folder (relative to the project root) or an fsspec URL: s3://bucket/prefix, gs://...
  storage: zimage_output
  # storage_options: {{anon: false}}

  # blocking: the step waits for its images | deferred: it submits and ends, a sensor collects
  mode: blocking

  # Dagster concurrency pool of the step (limit it in the instance: concurrency: pools:).
  pool: zimage
  # max_partitions_per_run: 50           # default: a backfill is one run, tasks submitted concurrently

  # Whole-step retries (a dagster.RetryPolicy); `retry: null` turns them off.
  retry:
    max_retries: 3
    delay: 10                            # seconds
    backoff: exponential                 # linear | exponential | null
    jitter: plus_minus                   # full | plus_minus | null

  reuse_stored: true                     # an image stored for the identical request is reused
  retry_rejected: false                  # resubmit requests refused with a fixable error?

  # The ZImageResource bound under `resource_key` (leave `resource` out if the project binds one).
  resource_key: zimage
  resource:
    # Only an environment reference is accepted: the resource gets dagster.EnvVar("ZIMAGE_API_KEY"),
    # read in the run process, so the key appears in no file, run config or UI.
    api_key: "{{{{ env.ZIMAGE_API_KEY }}}}"
    # base_url: http://127.0.0.1:8765     # the local emulator (`zimage-emulator`); default: ZIMAGE_BASE_URL, then https://api.evolink.ai
    concurrency: 8                       # tasks in flight in one run
    # request_timeout: 30
    # call_deadline: 120
    # wait_deadline: 600
    # max_retries: 2
    # max_resubmits: 2
"""


def _asset_name_from(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", path.name).strip("_") or "images"
    return name if not name[0].isdigit() else f"images_{name}"


class ZImageComponentScaffolder(Scaffolder[ZImageScaffoldParams]):
    """Writes a working, commented ``defs.yaml`` and a sample ``prompts.csv``."""

    @classmethod
    def get_scaffold_params(cls) -> type[ZImageScaffoldParams]:
        return ZImageScaffoldParams

    def scaffold(self, request: ScaffoldRequest[ZImageScaffoldParams]) -> None:
        params = request.params or ZImageScaffoldParams()
        asset_name = params.asset_name or _asset_name_from(request.target_path)
        prompts = params.prompts or "prompts.csv"
        if request.scaffold_format == "python":
            self._scaffold_python(request, asset_name, prompts)
        elif request.append:
            scaffold_component(
                request,
                {
                    "asset_name": asset_name,
                    "prompts": prompts,
                    "resource": {"api_key": "{{ env.ZIMAGE_API_KEY }}"},
                },
            )
        else:
            (request.target_path / "defs.yaml").write_text(
                _DEFS_YAML.format(asset_name=asset_name, prompts=json.dumps(prompts)),
                encoding="utf-8",
            )
        if params.prompts is None:
            sample = request.target_path / "prompts.csv"
            if not sample.exists():
                sample.write_text(SAMPLE_PROMPTS_CSV, encoding="utf-8")

    @staticmethod
    def _scaffold_python(
        request: ScaffoldRequest[ZImageScaffoldParams], asset_name: str, prompts: str
    ) -> None:
        module, _, cls_name = request.type_name.rpartition(".")
        (request.target_path / "component.py").write_text(
            textwrap.dedent(
                f"""\
                import dagster as dg

                from {module} import {cls_name}
                from zimage_dagster import ZImageResource


                @dg.component_instance
                def load(context: dg.ComponentLoadContext) -> {cls_name}:
                    return {cls_name}(
                        asset_name={json.dumps(asset_name)},
                        prompts={json.dumps(prompts)},
                        resource=ZImageResource(api_key=dg.EnvVar("ZIMAGE_API_KEY")),
                    )
                """
            ),
            encoding="utf-8",
        )
