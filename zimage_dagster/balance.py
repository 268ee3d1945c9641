"""The account's balance as data: an observable source asset and a check that warns when low.

:func:`balance_definitions` (opted into with ``balance_asset=True`` on the factory or the
component) adds ``<asset_name>_credits``: each observation reads ``GET /v1/credits`` and records
the remaining and used credits as numeric metadata (plotted over time in the UI), with the
balance as its data version; the check ``balance_above_threshold`` warns (severity ``WARN``)
when fewer than ``balance_warn_below`` credits remain. A sensor launches an observation every
``balance_interval_s`` seconds; "Observe" in the UI does one at once.

Example:
    >>> import dagster as dg
    >>> from zimage_dagster.spec import ImageAssetSpec
    >>> defs = balance_definitions(ImageAssetSpec(asset_name="posters", prompts=["a fox"],
    ...                                           balance_asset=True, balance_warn_below=5))
    >>> [s.name for s in defs.sensors]
    ['posters_credits_sensor']
"""

import warnings
from typing import Any

import dagster as dg

from zimage_dagster.api import Credits
from zimage_dagster.metadata import USAGE_PREFIX
from zimage_dagster.resource import ZImageResource
from zimage_dagster.spec import ImageAssetSpec

__all__ = ["BALANCE_CHECK", "balance_definitions", "balance_metadata"]

#: The check's name.
BALANCE_CHECK = "balance_above_threshold"


def balance_metadata(credits: Credits) -> dict[str, dg.MetadataValue]:
    """The balance as plottable metadata (the key's and the whole account's)."""
    return {
        f"{USAGE_PREFIX}credits_remaining": dg.MetadataValue.float(credits.remaining),
        f"{USAGE_PREFIX}credits_used": dg.MetadataValue.float(credits.data.token.used_credits),
        f"{USAGE_PREFIX}user_credits_remaining": dg.MetadataValue.float(
            credits.data.user.remaining_credits
        ),
        f"{USAGE_PREFIX}unlimited_credits": dg.MetadataValue.bool(credits.unlimited),
    }


def balance_definitions(spec: ImageAssetSpec) -> dg.Definitions:
    """The balance asset, its check, its observation job and the sensor that runs it."""
    key = dg.AssetKey([*spec.key_prefix, f"{spec.asset_name}_credits"])
    threshold = spec.balance_warn_below
    check = dg.AssetCheckSpec(
        BALANCE_CHECK,
        asset=key,
        description=(
            f"Warns when fewer than {threshold:g} credits remain."
            if threshold is not None
            else "Passes while the account has credits left (no threshold configured)."
        ),
    )

    with warnings.catch_warnings():
        # Chosen knowingly (the one decorator that gives a source asset a check): silenced
        # here rather than on every load of a user's code location.
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        observe = _observable(spec, key, check, threshold)
    job = dg.define_asset_job(
        f"{spec.asset_name}_credits_job", selection=dg.AssetSelection.assets(key)
    )

    @dg.sensor(
        name=f"{spec.asset_name}_credits_sensor",
        job=job,
        minimum_interval_seconds=spec.balance_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Observes the account's balance every balance_interval_s seconds.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest:
        return dg.RunRequest()

    return dg.Definitions(assets=[observe], jobs=[job], sensors=[_sensor])


def _observable(
    spec: ImageAssetSpec, key: dg.AssetKey, check: dg.AssetCheckSpec, threshold: float | None
) -> dg.AssetsDefinition:
    @dg.multi_observable_source_asset(
        name=f"{spec.asset_name}_credits_observe",
        specs=[
            dg.AssetSpec(
                key,
                group_name=spec.group_name,
                kinds={"zimage"},
                description=(
                    "Credits left on the Z-Image-Turbo account of "
                    f"{spec.asset_key.to_user_string()} (GET /v1/credits), observed over time."
                ),
            )
        ],
        required_resource_keys={spec.resource_key},
        check_specs=[check],
    )
    def _observe(context: dg.AssetExecutionContext) -> Any:
        resource: ZImageResource = getattr(context.resources, spec.resource_key)
        credits = resource.get_client().get_credits()
        remaining = credits.remaining
        passed = credits.unlimited or (
            remaining >= threshold if threshold is not None else remaining > 0
        )
        yield dg.ObserveResult(
            asset_key=key,
            data_version=dg.DataVersion(f"{remaining:.6f}"),
            metadata=balance_metadata(credits),
        )
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name=BALANCE_CHECK,
            passed=passed,
            severity=dg.AssetCheckSeverity.WARN,
            description=(
                f"{remaining:g} credits remain"
                + ("" if threshold is None else f" (warning below {threshold:g})")
            ),
            metadata={f"{USAGE_PREFIX}credits_remaining": dg.MetadataValue.float(remaining)},
        )

    return _observe
