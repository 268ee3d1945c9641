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
