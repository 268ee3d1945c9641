"""The scaffolder, the real `dg` CLI (scaffold, check yaml, check defs, list components) in dg
projects on disk, offline, and the example defs folder shipped in examples/defs/."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import dagster as dg
import pytest
from dagster.components.testing import create_defs_folder_sandbox

from tests.component._support import (
    TYPE,
    load_error,
    loaded,
    make_dg_project,
    run_dg,
    yaml_attributes,
)
from zimage_dagster import ZImageComponent, ZImageResource, load_prompts
from zimage_dagster.component_scaffold import SAMPLE_PROMPTS_CSV

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "defs" / "zimage_component"


# -- the scaffolder through dagster.components.testing ---------------------------------------


def test_scaffolded_defs_yaml_loads_without_the_key_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZIMAGE_API_KEY", raising=False)
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(component_cls=ZImageComponent, defs_path="hero_shots")
        defs_yaml = (path / "defs.yaml").read_text(encoding="utf-8")
        assert defs_yaml.startswith("# A Z-Image-Turbo image asset")
        assert f"type: {TYPE}" in defs_yaml
        assert "requirements:\n  env:\n    - ZIMAGE_API_KEY" in defs_yaml
        assert (path / "prompts.csv").read_text(encoding="utf-8") == SAMPLE_PROMPTS_CSV
        attributes = yaml_attributes(path / "defs.yaml")
        assert attributes["asset_name"] == "hero_shots"
        assert attributes["resource"]["api_key"] == "{{ env.ZIMAGE_API_KEY }}"
        with loaded(sandbox, path) as (component, defs):
            assert component.resource is not None
            assert isinstance(component.resource.api_key, dg.EnvVar)
            assert component.resource.api_key == "ZIMAGE_API_KEY"
            asset = defs.resolve_assets_def("hero_shots")
            assert asset.partitions_def is not None
            keys = asset.partitions_def.get_partition_keys()
            assert keys == load_prompts(path / "prompts.csv").keys
            assert len(keys) == 3
            resource = (defs.resources or {})["zimage"]
            assert isinstance(resource, ZImageResource)
            assert isinstance(resource.api_key, dg.EnvVar)
            assert defs.resolve_job_def("hero_shots_job") is not None


def test_scaffold_params_name_the_asset_and_an_existing_dataset() -> None:
    with create_defs_folder_sandbox() as sandbox:
        data = sandbox.project_root / "data"
        data.mkdir()
        (data / "shots.csv").write_text("key,prompt\nonly,a red bicycle\n", encoding="utf-8")
        path = sandbox.scaffold_component(
            component_cls=ZImageComponent,
            defs_path="shots",
            scaffold_params={"asset_name": "bike_shots", "prompts": "data/shots.csv"},
        )
        assert not (path / "prompts.csv").exists()
        assert yaml_attributes(path / "defs.yaml")["prompts"] == "data/shots.csv"
        with loaded(sandbox, path) as (_, defs):
            partitions = defs.resolve_assets_def("bike_shots").partitions_def
            assert partitions is not None
            assert partitions.get_partition_keys() == ["only"]


def test_scaffold_python_format_loads() -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(
            component_cls=ZImageComponent, defs_path="py_posters", scaffold_format="python"
        )
        assert (path / "component.py").is_file()
        assert not (path / "defs.yaml").exists()
        with sandbox.load_component_and_build_defs(defs_path=path) as (_, defs):
            assert defs.resolve_assets_def("py_posters").partitions_def is not None
            assert isinstance((defs.resources or {})["zimage"].api_key, dg.EnvVar)


def test_scaffolded_file_with_a_bad_edit_is_refused() -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(component_cls=ZImageComponent, defs_path="posters")
        text = (path / "defs.yaml").read_text(encoding="utf-8")
        (path / "defs.yaml").write_text(
            text.replace("partitioning: static", "partitioning: weekly"), encoding="utf-8"
        )
        error = load_error(sandbox, path)
        assert "partitioning" in str(error.__cause__)


# -- the real dg CLI in a project on disk ----------------------------------------------------


@pytest.mark.slow  # several `dg` processes, 2-5 s each
def test_dg_scaffold_check_and_list_in_a_project(tmp_path: Path) -> None:
    defs_dir = make_dg_project(tmp_path)
    env = {"ZIMAGE_API_KEY": ""}  # loading must not need the key

    done = run_dg(tmp_path, "scaffold", "defs", TYPE, "posters", "--asset-name", "poster_images")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (defs_dir / "posters" / "defs.yaml").is_file()
    assert (defs_dir / "posters" / "prompts.csv").is_file()
    assert yaml_attributes(defs_dir / "posters" / "defs.yaml")["asset_name"] == "poster_images"

    done = run_dg(tmp_path, "check", "yaml", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All component YAML validated successfully." in done.stdout

    done = run_dg(tmp_path, "check", "defs", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully." in done.stdout

    done = run_dg(tmp_path, "list", "components", "--json")
    assert done.returncode == 0, done.stderr
    listed = {item["key"]: item["summary"] for item in json.loads(done.stdout)["items"]}
    assert TYPE in listed
    assert listed[TYPE].startswith("Z-Image-Turbo images from a prompt dataset")


@pytest.mark.slow  # several `dg` processes, 2-5 s each
def test_dg_check_names_the_bad_field(tmp_path: Path) -> None:
    defs_dir = make_dg_project(tmp_path)
    assert run_dg(tmp_path, "scaffold", "defs", TYPE, "posters").returncode == 0
    defs_yaml = defs_dir / "posters" / "defs.yaml"
    original = defs_yaml.read_text(encoding="utf-8")

    # A misspelt attribute: `dg check yaml` (schema) already refuses it, with file and line.
    defs_yaml.write_text(
        original.replace("  seed_strategy: derived", "  seed_stratgy: derived"), encoding="utf-8"
    )
    done = run_dg(tmp_path, "check", "yaml")
    assert done.returncode != 0
    assert "seed_stratgy" in done.stdout
    assert "defs.yaml:" in done.stdout

    # An env variable used but not declared under requirements.env (checked on request).
    defs_yaml.write_text(
        original.replace("  storage: zimage_output", '  storage: "{{ env.IMAGES_ROOT }}"'),
        encoding="utf-8",
    )
    assert run_dg(tmp_path, "check", "yaml").returncode == 0
    done = run_dg(tmp_path, "check", "yaml", "--validate-requirements")
    assert done.returncode != 0
    assert "IMAGES_ROOT" in done.stdout

    # A value outside a Literal: templating makes every field accept a string in the schema,
    # so `dg check yaml` lets it through and `dg check defs` (which loads) names it.
    defs_yaml.write_text(
        original.replace("partitioning: static", "partitioning: hourly"), encoding="utf-8"
    )
    done = run_dg(tmp_path, "check", "defs")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "partitioning" in output
    assert "'static', 'dynamic', 'daily' or 'shards'" in output

    # Bad retry settings.
    defs_yaml.write_text(
        original.replace("    max_retries: 3\n    delay: 10", "    max_retries: -2\n    delay: 10"),
        encoding="utf-8",
    )
    done = run_dg(tmp_path, "check", "defs")
    assert done.returncode != 0
    assert "max_retries must be 0 or more" in done.stdout + done.stderr


# -- the example defs folder (examples/defs/zimage_component) --------------------------------


@pytest.mark.slow  # several `dg` processes, 2-5 s each
def test_example_defs_folder_loads_with_the_project_settings(tmp_path: Path) -> None:
    """A copy of examples/defs in a project laid out like the repository root with the
    [tool.dg] settings proposed for pyproject.toml: `dg check yaml` and `dg check defs` pass."""
    shutil.copytree(REPO / "examples" / "defs", tmp_path / "examples" / "defs")
    (tmp_path / "examples" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [project]
            name = "zimage-example-copy"
            version = "0.1.0"

            [tool.dg]
            directory_type = "project"

            [tool.dg.project]
            root_module = "examples"
            code_location_target_module = "definitions"
            code_location_name = "zimage_example"
            """
        ),
        encoding="utf-8",
    )
    (tmp_path / "definitions.py").write_text(
        textwrap.dedent(
            """\
            from pathlib import Path

            import dagster as dg

            defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
            """
        ),
        encoding="utf-8",
    )
    env = {"ZIMAGE_API_KEY": "", "ZIMAGE_STORAGE_URL": ""}
    done = run_dg(tmp_path, "check", "yaml", "--validate-requirements", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_dg(tmp_path, "check", "defs", env=env)
    assert done.returncode == 0, done.stdout + done.stderr

    done = run_dg(tmp_path, "list", "defs", "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = json.loads(done.stdout)
    assets = {a["asset_key"]: a for a in listed["assets"]}
    assert assets["poster_images"]["group_name"] == "posters"
    assert {r["name"] for r in listed["resources"]} >= {"zimage_posters"}


def test_example_defs_yaml_resolves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ZIMAGE_STORAGE_URL", str(tmp_path / "images"))
    with create_defs_folder_sandbox() as sandbox:
        target = sandbox.defs_folder_path / "zimage_component"
        shutil.copytree(EXAMPLE, target)
        with loaded(sandbox, target) as (component, defs):
            assert component.asset_name == "poster_images"
            assert component.image_asset_spec(_context(sandbox, target)).storage == str(
                tmp_path / "images"
            )
            asset = defs.resolve_assets_def("poster_images")
            assert asset.partitions_def is not None
            keys = asset.partitions_def.get_partition_keys()
            assert keys == load_prompts(EXAMPLE / "prompts.csv").keys
            assert len(keys) == 4
            assert "zimage_posters" in asset.required_resource_keys
            resource = (defs.resources or {})["zimage_posters"]
            assert isinstance(resource, ZImageResource)
            assert isinstance(resource.api_key, dg.EnvVar)
            assert resource.api_key.env_var_name == "ZIMAGE_API_KEY"
            assert resource.base_url is None  # ZIMAGE_BASE_URL, read at run time
    monkeypatch.delenv("ZIMAGE_STORAGE_URL")
    with create_defs_folder_sandbox() as sandbox:
        target = sandbox.defs_folder_path / "zimage_component"
        shutil.copytree(EXAMPLE, target)
        with loaded(sandbox, target) as (component, _):
            spec = component.image_asset_spec(_context(sandbox, target))
            assert spec.storage == str(sandbox.project_root / "zimage_output")


def test_example_prompts_are_all_valid() -> None:
    dataset = load_prompts(EXAMPLE / "prompts.csv")
    assert not dataset.problems
    assert len(dataset) == 4


def _context(sandbox: object, path: Path) -> dg.ComponentLoadContext:
    with sandbox.build_component_tree() as tree:  # type: ignore[attr-defined]
        return tree.load_context.for_path(path)
