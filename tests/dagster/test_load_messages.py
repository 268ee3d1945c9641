"""What loading a code location prints: one line per asset about left-out rows, and no warning
from the plugin's own (deliberate) use of Dagster APIs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import dagster as dg
import pytest

from zimage_dagster import ZImageResource, build_image_assets


def test_one_warning_line_per_asset_about_left_out_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,seed\na fox,1\n,2\na cat,x\na dog,3\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        build_image_assets("pets", path, storage=tmp_path / "out")
        build_image_assets("clean", [{"prompt": "a fox"}], storage=tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines == [
        f"pets: 2 of 4 rows of {path} left out; see the asset's dataset_problem_report metadata"
    ]
    # (the report itself, in the definition metadata: tests/dagster/test_assets.py)


def test_loading_the_plugin_warns_about_nothing(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defs = dg.Definitions.merge(
            build_image_assets("hero", [{"prompt": "a fox"}], storage=tmp_path / "a"),
            build_image_assets(
                "daily",
                [{"prompt": "a cat"}],
                partitioning="daily",
                daily_start_date="2026-01-01",
                storage=tmp_path / "b",
            ),
            build_image_assets(
                "later", [{"prompt": "a dog"}], mode="deferred", storage=tmp_path / "c"
            ),
            dg.Definitions(resources={"zimage": ZImageResource()}),
        )
        defs.resolve_asset_graph()
    assert [f"{type(w.message).__name__}: {w.message}" for w in caught] == []
