"""What a Dagster user expects of an asset factory: deps, tags, owners, kinds, automation
condition, code version, op tags (from Python and from YAML), and a data version per
materialization derived from the request's fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
from dagster.components.core.component_tree import ComponentTree

from tests.dagster._support import image_asset, make_fast, resource_for, rows, run_one
from zimage_dagster import ZImageComponent, build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.engine.store import ImageStore

EXTRAS = {
    "deps": ["raw/prompts"],
    "tags": {"team": "design"},
    "owners": ["team:design"],
    "kinds": ["zimage", "webp"],
    "code_version": "7",
    "op_tags": {"dagster/priority": "3"},
}


def _check(asset: dg.AssetsDefinition) -> None:
    key = asset.key
    spec = next(iter(asset.specs))
    assert dg.AssetKey(["raw", "prompts"]) in {d.asset_key for d in spec.deps}
    assert spec.tags["team"] == "design"
    assert list(spec.owners) == ["team:design"]
    assert set(spec.kinds) == {"zimage", "webp"}
    assert asset.code_versions_by_key[key] == "7"
    assert asset.op.tags["dagster/priority"] == "3"
    assert asset.automation_conditions_by_key[key] is not None


def test_factory_extras_from_python_and_yaml(tmp_path: Path) -> None:
    python = build_image_assets(
        "imgs",
        rows(1),
        storage=tmp_path,
        automation_condition=dg.AutomationCondition.on_missing(),
        **EXTRAS,
    )
    _check(image_asset(python))
    yaml = json.dumps(
        {
            "asset_name": "imgs",
            "prompts": rows(1),
            "storage": str(tmp_path),
            "automation_condition": "{{ dg.AutomationCondition.on_missing() }}",
            **EXTRAS,
        }
    )
    component = ZImageComponent.resolve_from_yaml(yaml)
    _check(image_asset(component.build_defs(ComponentTree.for_test().load_context)))


def test_each_materialization_carries_the_request_fingerprint_as_data_version(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator)
    with dg.DagsterInstance.ephemeral() as instance:
        versions = []
        for size in ("376x376", "400x400"):  # the same partition, its request changed
            data = [{**rows(1)[0], "size": size}]
            asset = image_asset(build_image_assets("imgs", data, storage=tmp_path))
            assert run_one(asset, instance, resource_for(emulator), "p0").success
            record = instance.fetch_materializations(asset.key, limit=1).records[0]
            materialization = record.asset_materialization
            assert materialization is not None
            found = ImageStore(tmp_path).find("imgs", "p0")
            assert found is not None
            assert materialization.tags is not None
            assert materialization.tags["dagster/data_version"] == found.provenance["fingerprint"]
            versions.append(materialization.tags["dagster/data_version"])
    assert versions[0] != versions[1]
