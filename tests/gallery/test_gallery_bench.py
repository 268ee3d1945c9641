"""The gallery benchmark's small version (``make bench`` runs it with 10,000 images)."""

from __future__ import annotations

import pytest

from benchmarks import gallery as gallery_bench


@pytest.mark.timeout(240)
def test_the_gallery_benchmark_meets_its_targets_on_a_small_store() -> None:
    result = gallery_bench.run(n=300)
    verdicts = {row.metric: row.met for row in result.rows if row.met is not None}
    assert verdicts == {
        "first grid page": True,
        "search over every prompt": True,
        "peak RSS of the gallery process": True,
        "thumbnails generated on the second page load": True,
    }
    big = result.details["big"]
    assert big["cards"] == 48
    assert big["generated_first"] == big["thumbnails"] > 40  # a failed card has no thumbnail
    assert big["search_hits"] > 0


@pytest.mark.heavy
@pytest.mark.timeout(300)
def test_the_gallery_at_scale_benchmark_runs_on_a_small_index() -> None:
    from benchmarks import gallery_scale

    result = gallery_scale.run(n=5_000, partitions=60)
    cold, warm, review = (result.details[k] for k in ("cold", "warm", "review"))
    assert cold["home_says_indexing"]
    assert not cold["indexing_after"]
    assert int(warm["search_found"].rstrip("+")) > 0
    assert review["picks"] == 59
    assert review["export_bytes"] > 59 * 10_000
    # Timing targets are for make bench (a loaded test machine misses them); memory is not.
    verdicts = {row.metric: row.met for row in result.rows if row.met is not None}
    assert verdicts["peak RSS, warm gallery process"] is True
    assert verdicts["zip export of 59 picks: peak RSS after"] is True
