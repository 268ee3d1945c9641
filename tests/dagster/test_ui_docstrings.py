"""Descriptions the Dagster UI shows for the plugin's resources: Markdown, not Sphinx."""

from __future__ import annotations

import re

import dagster as dg
import pytest

from zimage_dagster import ImageStoreIOManager, ZImageResource


@pytest.mark.parametrize("resource", [ZImageResource(), ImageStoreIOManager()])
def test_resource_descriptions_render_cleanly(resource: dg.ConfigurableResource) -> None:
    description = resource.get_resource_definition().description
    assert description
    assert not re.search(r":(meth|func|class|data|attr|mod):`", description), description
    lines = description.splitlines()
    assert len(lines) > 3  # paragraphs, not one run-on line
    # Dedented: nothing but examples and list items is indented (Markdown would show code).
    for line in lines:
        if line.startswith("    "):
            assert line.lstrip().startswith((">>>", "...", "@", "def", "result", "async", "*")), (
                line
            )
