"""A wrong ``ZIMAGE_BASE_URL``, or an emulator that is not running, fails fast and says where.

Real Dagster runs on a real instance, with the asset's default whole-step ``RetryPolicy``
(3 retries from 10 s, exponential), against a loopback port nobody listens on and against a
``.invalid`` host name (it never resolves and sends nothing off the machine). Before the fix such
a run took 2 min 25 s: three step retries, four tracebacks, and a message naming the route only.
"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pytest

from tests.api.test_unreachable import BASE_URLS
from tests.dagster._support import image_asset, rows
from zimage_dagster.assets import build_image_assets
from zimage_dagster.resource import ZImageResource

#: What the brief promises: the partition fails within this many seconds of the run's start.
FAIL_WITHIN_S = 15.0


@pytest.mark.parametrize(
    ("case", "mode"), [("refused", "blocking"), ("dns", "blocking"), ("refused", "deferred")]
)
def test_unreachable_base_url_fails_the_run_fast_once_and_names_the_url(
    case: str, mode: str, tmp_path: Path
) -> None:
    make_url, reason = BASE_URLS[case]
    url = make_url()
    defs = build_image_assets("imgs", rows(3), storage=str(tmp_path / "images"), mode=mode)
    asset = image_asset(defs)
    resource = ZImageResource(api_key="sk-test-unreachable", base_url=url)
    with dg.instance_for_test() as instance:
        began = time.monotonic()
        result = dg.materialize(
            [asset],
            instance=instance,
            resources={"zimage": resource},
            tags={
                "dagster/asset_partition_range_start": "p0",
                "dagster/asset_partition_range_end": "p2",
            },
            raise_on_error=False,
        )
        elapsed = time.monotonic() - began
    assert not result.success
    events = [e.event_type for e in result.all_events]
    assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in events
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert len(failures) == 1
    error = failures[0].step_failure_data.error
    assert error is not None
    for partition in ("p0", "p1", "p2"):
        assert f"- {partition}: APIUnreachableError: cannot reach the API at {url}" in error.message
    for expected in (reason, "ZIMAGE_BASE_URL", "emulator"):
        assert expected in error.message
    assert elapsed < FAIL_WITHIN_S, f"the run took {elapsed:.1f} s"
