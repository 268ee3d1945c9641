"""ZImageComponent from defs.yaml: attributes resolve (templates too), bad YAML is refused with the
field named, the API key stays an EnvVar, and the built definitions materialize against the
emulator in a real run on a real instance."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import fsspec
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value
from dagster.components.testing import create_defs_folder_sandbox

import zimage_dagster
import zimage_dagster.component as component_module
from tests.component._support import (
    PROMPTS_CSV,
    SMALL,
    build_all_error,
    error_text,
    load_error,
    loaded,
    root_cause,
    write_component,
)
from zimage_dagster import ImageAssetSpec, ZImageComponent, ZImageResource
from zimage_dagster.component import _resolve_resource, _ResourceSection
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.spec import DEFAULT_RETRY_POLICY, RetrySettings, ScheduleSettings

SECRET = "sk-evo-component-test-secret-0042"
# A resource section so that the definitions validate (without one, the project binds it).
BASE: dict[str, Any] = {
    "asset_name": "posters",
    "prompts": "prompts.csv",
    "resource": {"concurrency": 2},
}


def test_doctests() -> None:
    assert doctest.testmod(component_module).failed == 0


# -- resolution -----------------------------------------------------------------------------


def test_every_attribute_resolves_including_env_templates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("POSTERS_GROUP", "marketing_posters")
    monkeypatch.setenv("POSTERS_CONCURRENCY", "3")
    monkeypatch.setenv("POSTERS_TIMEOUT", "12.5")
    monkeypatch.setenv("POSTERS_STORAGE", str(tmp_path / "images"))
    attributes = {
        **BASE,
        "key_prefix": ["marketing", "print"],
        "group_name": "{{ env.POSTERS_GROUP }}",
        "description": "Posters for the autumn campaign.",
        "partitioning": "daily",
        "daily_start_date": "2026-03-01",
        "default_size": "3:4",
        "seed_strategy": "random",
        "storage": "{{ env.POSTERS_STORAGE }}",
        "storage_options": {"auto_mkdir": True},
        "schedule": {"cron": "30 5 * * *", "timezone": "Europe/Paris"},
        "pool": "zimage_posters",
        "max_partitions_per_run": 20,
        "retry": {"max_retries": 5, "delay": 2.5, "backoff": "linear", "jitter": "full"},
        "reuse_stored": False,
        "retry_rejected": True,
        "resource_key": "zimage_print",
        "resource": {
            "api_key": "{{ env.ZIMAGE_API_KEY }}",
            "base_url": "http://127.0.0.1:9",
            "request_timeout": "{{ env.POSTERS_TIMEOUT }}",
            "call_deadline": 60,
            "max_retries": 1,
            "wait_deadline": 90,
            "max_poll_interval": 2,
            "concurrency": "{{ env.POSTERS_CONCURRENCY }}",
            "max_resubmits": 0,
            "max_download_bytes": 1_000_000,
        },
    }
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, attributes)
        with loaded(sandbox, path) as (component, defs):
            assert component.group_name == "marketing_posters"
            assert component.storage == str(tmp_path / "images")
            assert component.retry_policy == dg.RetryPolicy(
                max_retries=5, delay=2.5, backoff=dg.Backoff.LINEAR, jitter=dg.Jitter.FULL
            )
            assert component.schedule == ScheduleSettings(
                cron="30 5 * * *", timezone="Europe/Paris"
            )
            assert component.resource is not None
            assert component.resource.concurrency == 3
            assert component.resource.request_timeout == 12.5
            assert isinstance(component.resource.api_key, dg.EnvVar)
            assert component.resource.api_key == "ZIMAGE_API_KEY"

            key = dg.AssetKey(["marketing", "print", "posters"])
            asset = defs.resolve_assets_def(key)
            assert asset.group_names_by_key[key] == "marketing_posters"
            assert asset.descriptions_by_key[key] == "Posters for the autumn campaign."
            node = asset.node_def
            assert isinstance(node, dg.OpDefinition)
            assert node.retry_policy == dg.RetryPolicy(
                max_retries=5, delay=2.5, backoff=dg.Backoff.LINEAR, jitter=dg.Jitter.FULL
            )
            assert node.pool == "zimage_posters"
            assert "zimage_print" in asset.required_resource_keys
            assert asset.backfill_policy == dg.BackfillPolicy.multi_run(20)
            partitions = asset.partitions_def
            assert isinstance(partitions, dg.MultiPartitionsDefinition)
            date_dim = partitions.get_partitions_def_for_dimension("date")
            assert isinstance(date_dim, dg.DailyPartitionsDefinition)
            assert date_dim.timezone == "Europe/Paris"
            assert date_dim.start.strftime("%Y-%m-%d") == "2026-03-01"
            prompt_dim = partitions.get_partitions_def_for_dimension("prompt")
            assert prompt_dim.get_partition_keys() == ["fox", "lighthouse", "poster"]

            schedule = defs.resolve_schedule_def("posters_schedule")
            assert schedule.cron_schedule == "30 5 * * *"
            assert schedule.execution_timezone == "Europe/Paris"
            assert defs.resolve_job_def("posters_job") is not None

            resource = (defs.resources or {})["zimage_print"]
            assert isinstance(resource, ZImageResource)
            assert resource.concurrency == 3
            assert resource.request_timeout == 12.5
            assert resource.base_url == "http://127.0.0.1:9"
            assert resource.max_resubmits == 0
            assert resource.max_download_bytes == 1_000_000

            spec = component.image_asset_spec(sandbox_context(sandbox, path))
            assert spec.prompts == str((path / "prompts.csv").resolve())
            assert spec.storage_options == {"auto_mkdir": True}
            assert (spec.seed_strategy, spec.default_size) == ("random", "3:4")
            assert (spec.reuse_stored, spec.retry_rejected) == (False, True)


def sandbox_context(sandbox: Any, path: Path) -> dg.ComponentLoadContext:
    """The load context of the component at `path` (to look at the spec it resolves)."""
    with sandbox.build_component_tree() as tree:
        return tree.load_context.for_path(path)


def test_the_component_is_the_spec_and_its_yaml_schema_is_derived() -> None:
    """One declaration: the component's attributes are ImageAssetSpec's fields (same defaults),
    plus resource; the YAML schema lists each of them (retry_policy is written retry)."""
    component = ZImageComponent(asset_name="posters", prompts=["a fox"])
    assert component.retry_policy == DEFAULT_RETRY_POLICY
    assert issubclass(ZImageComponent, ImageAssetSpec)
    assert set(ZImageComponent.model_fields) == {*ImageAssetSpec.model_fields, "resource"}
    yaml_fields = set(ZImageComponent.model().model_fields)
    assert yaml_fields == {*ImageAssetSpec.model_fields, "resource"} - {"retry_policy"} | {"retry"}
    spec = ImageAssetSpec(asset_name="posters", prompts=["a fox"])
    assert {n: getattr(component, n) for n in ImageAssetSpec.model_fields} == dict(spec)


def test_resource_section_is_the_resource_s_own_fields() -> None:
    """A field added to ZImageResource is configurable from defs.yaml at once, described."""
    assert set(_ResourceSection.model_fields) == set(ZImageResource.model_fields)
    for name, field in _ResourceSection.model_fields.items():
        assert field.description, name
    for model in (ZImageComponent, RetrySettings, ScheduleSettings):
        for name, field in model.model_fields.items():
            resolver = next((m for m in field.metadata if isinstance(m, dg.Resolver)), None)
            described = field.description or (resolver is not None and resolver.description)
            assert described, f"{model.__name__}.{name}"


def test_unset_resource_fields_keep_the_resource_defaults() -> None:
    resource = _resolve_resource(
        dg.ResolutionContext.default(), _ResourceSection.model_validate({"concurrency": 2})
    )
    assert resource is not None
    assert resource.concurrency == 2
    assert resource.api_key is None
    assert resource.base_url is None
    assert resource.request_timeout == ZImageResource().request_timeout


@pytest.mark.parametrize(
    ("partitioning", "extra", "expected"),
    [
        ("static", {}, dg.StaticPartitionsDefinition),
        ("dynamic", {"dynamic_partitions_name": "poster_prompts"}, dg.DynamicPartitionsDefinition),
        ("daily", {"daily_start_date": "2026-01-01"}, dg.MultiPartitionsDefinition),
        ("shards", {"shard_count": 2}, dg.StaticPartitionsDefinition),
    ],
)
def test_partitioning(partitioning: str, extra: dict[str, Any], expected: type) -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, {**BASE, "partitioning": partitioning, **extra})
        with loaded(sandbox, path) as (_, defs):
            partitions = defs.resolve_assets_def("posters").partitions_def
            assert isinstance(partitions, expected)
            if isinstance(partitions, dg.DynamicPartitionsDefinition):
                assert partitions.name == "poster_prompts"
            if partitioning == "shards":
                assert isinstance(partitions, dg.StaticPartitionsDefinition)
                assert partitions.get_partition_keys() == ["shard-00000", "shard-00001"]
            elif isinstance(partitions, dg.StaticPartitionsDefinition):
                assert partitions.get_partition_keys() == ["fox", "lighthouse", "poster"]
            assert not list(defs.schedules or [])


def test_retry_null_turns_step_retries_off() -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, {**BASE, "retry": None})
        with loaded(sandbox, path) as (component, defs):
            assert component.retry_policy is None
            node = defs.resolve_assets_def("posters").node_def
            assert isinstance(node, dg.OpDefinition)
            assert node.retry_policy is None


# -- where the dataset and the storage are ---------------------------------------------------


def test_prompts_beside_defs_yaml_win_over_the_project_root() -> None:
    with create_defs_folder_sandbox() as sandbox:
        (sandbox.project_root / "prompts.csv").write_text("prompt\nproject level\n")
        path = write_component(sandbox, BASE)
        with loaded(sandbox, path) as (_, defs):
            keys = defs.resolve_assets_def("posters").partitions_def.get_partition_keys()  # type: ignore[union-attr]
            assert keys == ["fox", "lighthouse", "poster"]


def test_prompts_relative_to_the_project_root(tmp_path: Path) -> None:
    with create_defs_folder_sandbox() as sandbox:
        (sandbox.project_root / "data").mkdir()
        (sandbox.project_root / "data" / "posters.csv").write_text("key,prompt\nonly,a poster\n")
        path = write_component(sandbox, {**BASE, "prompts": "data/posters.csv"}, prompts_csv=None)
        with loaded(sandbox, path) as (_, defs):
            partitions = defs.resolve_assets_def("posters").partitions_def
            assert partitions is not None
            assert partitions.get_partition_keys() == ["only"]


def test_prompts_from_a_url_and_inline() -> None:
    url = "memory://component-tests/prompts.csv"
    with fsspec.open(url, "w") as handle:
        handle.write("key,prompt\nfrom-url,a poster from a URL\n")
    with create_defs_folder_sandbox() as sandbox:
        from_url = write_component(sandbox, {**BASE, "prompts": url}, prompts_csv=None)
        with loaded(sandbox, from_url) as (_, defs):
            partitions = defs.resolve_assets_def("posters").partitions_def
            assert partitions is not None
            assert partitions.get_partition_keys() == ["from-url"]
    with create_defs_folder_sandbox() as sandbox:
        inline = write_component(
            sandbox,
            {**BASE, "prompts": [{"key": "one", "prompt": "a fox"}, "a lighthouse at dusk"]},
            prompts_csv=None,
        )
        with loaded(sandbox, inline) as (_, defs):
            partitions = defs.resolve_assets_def("posters").partitions_def
            assert partitions is not None
            assert partitions.get_partition_keys()[0] == "one"
            assert len(partitions.get_partition_keys()) == 2


def test_missing_dataset_names_the_field_and_where_it_looked() -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, {**BASE, "prompts": "missing.csv"})
        error = load_error(sandbox, path)
        text = error_text(error)
        assert "prompts: no file 'missing.csv'" in text
        assert str(path / "missing.csv") in text
        assert str(sandbox.project_root) in text


def test_relative_storage_is_under_the_project_root() -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, {**BASE, "storage": "out/images"})
        spec = ZImageComponent(asset_name="posters", prompts=str(path / "prompts.csv"))
        context = sandbox_context(sandbox, path)
        assert spec.image_asset_spec(context).storage == str(sandbox.project_root / "zimage_output")
        with loaded(sandbox, path) as (component, _):
            assert component.image_asset_spec(context).storage == str(
                sandbox.project_root / "out" / "images"
            )
        url = ZImageComponent(asset_name="p", prompts=["x"], storage="s3://bucket/imgs")
        assert url.image_asset_spec(context).storage == "s3://bucket/imgs"


# -- bad YAML: each error names its field -----------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ({"colour": "blue"}, ["attributes.colour", "Extra inputs are not permitted"]),
        ({"partitioning": "hourly"}, ["partitioning", "'static', 'dynamic', 'daily' or 'shards'"]),
        ({"seed_strategy": "lucky"}, ["seed_strategy", "'derived' or 'random'"]),
        ({"retry": {"max_retries": -1}}, ["retry", "max_retries must be 0 or more"]),
        ({"retry": {"delay": -3}}, ["retry", "delay must be 0 or more"]),
        ({"retry": {"backoff": "quadratic"}}, ["retry", "backoff", "'linear' or 'exponential'"]),
        ({"retry": {"jitter": "some"}}, ["retry", "jitter", "'full' or 'plus_minus'"]),
        ({"retry": {"delay": None}}, ["retry", "backoff and jitter need a delay"]),
        ({"retry": {"tries": 3}}, ["attributes.retry", "tries", "Extra inputs are not permitted"]),
        ({"schedule": {"cron": "0 6 * * *"}}, ["schedule needs partitioning: daily"]),
        (
            {"partitioning": "daily", "schedule": {"cron": "every morning"}},
            ["schedule", "cron", "not a daily cron expression"],
        ),
        (
            {
                "partitioning": "daily",
                "schedule": {"cron": "0 6 * * *", "timezone": "Mars/Olympus"},
            },
            ["schedule", "timezone", "not a known IANA time zone"],
        ),
        ({"default_size": "9999x1"}, ["default_size", "9999"]),
        ({"daily_start_date": "yesterday"}, ["daily_start_date", "YYYY-MM-DD"]),
        ({"max_partitions_per_run": 0}, ["max_partitions_per_run", "greater than or equal to 1"]),
        ({"asset_name": "my posters"}, ["asset_name", "letters, digits and '_'"]),
        ({"key_prefix": ["ok", "not/ok"]}, ["key_prefix", "not/ok"]),
        ({"dynamic_partitions_name": "x"}, ["dynamic_partitions_name needs partitioning: dynamic"]),
        ({"resource": {"concurrency": 0}}, ["resource.concurrency", "greater than or equal to 1"]),
        ({"resource": {"request_timeout": 0}}, ["resource.request_timeout", "greater than 0"]),
        ({"resource": {"apikey": "x"}}, ["attributes.resource", "apikey", "Extra inputs"]),
        ({"mode": "later"}, ["mode", "'blocking' or 'deferred'"]),
    ],
)
def test_bad_attributes_are_refused_with_the_field_named(
    extra: dict[str, Any], fragments: list[str]
) -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, {**BASE, **extra})
        error = load_error(sandbox, path)
        text = error_text(error)
        for fragment in fragments:
            assert fragment in text, f"{fragment!r} not in:\n{text}"


def test_an_undefined_template_variable_is_named() -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, {**BASE, "group_name": "{{ envv.GROUP }}"})
        error = load_error(sandbox, path)
        assert "envv" in error_text(error)
        assert "group_name" in error_text(error)


# -- secrets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        "{{ env.ZIMAGE_API_KEY }}",
        "{{env.ZIMAGE_API_KEY}}",
        "{{ env('ZIMAGE_API_KEY') }}",
        '{{ env("ZIMAGE_API_KEY") }}',
    ],
)
def test_api_key_reference_becomes_an_envvar_and_the_key_reaches_no_snapshot(
    monkeypatch: pytest.MonkeyPatch, reference: str
) -> None:
    monkeypatch.setenv("ZIMAGE_API_KEY", SECRET)
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, {**BASE, "resource": {"api_key": reference}})
        with loaded(sandbox, path) as (component, defs):
            assert component.resource is not None
            assert isinstance(component.resource.api_key, dg.EnvVar)
            assert component.resource.api_key == "ZIMAGE_API_KEY"
            resource = (defs.resources or {})["zimage"]
            assert isinstance(resource, ZImageResource)
            assert isinstance(resource.api_key, dg.EnvVar)
            assert resource.api_key.env_var_name == "ZIMAGE_API_KEY"
            assert SECRET not in repr(component)
            assert SECRET not in repr(resource)
            snapshot = serialize_value(RepositorySnap.from_def(defs.get_repository_def()))
            assert SECRET not in snapshot
            assert "ZIMAGE_API_KEY" in snapshot  # shown in the UI as the variable's name


def test_the_snapshot_check_would_catch_a_plain_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: a key given as a plain string (what `{{ env.X }}` rendering at load time would
    produce) does reach the code location's snapshot, i.e. the UI."""
    plain = dg.Definitions(resources={"zimage": ZImageResource(api_key=SECRET)})
    assert SECRET in serialize_value(RepositorySnap.from_def(plain.get_repository_def()))


@pytest.mark.parametrize(
    "value",
    [
        SECRET,
        "Bearer {{ env.ZIMAGE_API_KEY }}",
        "{{ env('ZIMAGE_API_KEY', 'sk-evo-fallback') }}",
        "{{ env.ZIMAGE_API_KEY ~ '' }}",
    ],
)
def test_api_key_other_than_a_reference_is_refused_without_echoing_it(value: str) -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, {**BASE, "resource": {"api_key": value}})
        error = load_error(sandbox, path)
        cause = root_cause(error)
        assert "attributes.resource.api_key" in str(cause)
        assert "'{{ env.ZIMAGE_API_KEY }}'" in str(cause)
        assert SECRET not in error_text(error)
        assert "sk-evo-fallback" not in str(cause)


def test_api_key_reference_loads_without_the_variable_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key is read in the run process: loading definitions needs no key."""
    monkeypatch.delenv("ZIMAGE_API_KEY", raising=False)
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(
            sandbox, {**BASE, "resource": {"api_key": "{{ env.ZIMAGE_API_KEY }}"}}
        )
        with loaded(sandbox, path) as (_, defs):
            assert isinstance((defs.resources or {})["zimage"].api_key, dg.EnvVar)


# -- the resource and other components -------------------------------------------------------


def test_no_resource_section_binds_nothing() -> None:
    with create_defs_folder_sandbox() as sandbox:
        attributes = {k: v for k, v in BASE.items() if k != "resource"}
        path = write_component(sandbox, attributes)
        with loaded(sandbox, path) as (component, defs):
            assert component.resource is None
            assert not defs.resources
            (asset,) = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
            assert "zimage" in asset.required_resource_keys
            bound = dg.Definitions.merge(
                defs, dg.Definitions(resources={"zimage": ZImageResource()})
            )
            assert bound.resolve_assets_def("posters").key == dg.AssetKey("posters")


def test_two_components_with_the_same_resource_section_merge() -> None:
    resource = {"api_key": "{{ env.ZIMAGE_API_KEY }}", "concurrency": 4}
    with create_defs_folder_sandbox() as sandbox:
        write_component(sandbox, {**BASE, "resource": resource}, name="posters")
        write_component(
            sandbox, {**BASE, "asset_name": "flyers", "resource": resource}, name="flyers"
        )
        with sandbox.build_all_defs() as defs:
            assert {key.to_user_string() for key in defs.resolve_all_asset_keys()} == {
                "posters",
                "flyers",
            }
            assert set(defs.resources or {}) == {"zimage"}


def test_two_components_with_different_resources_under_one_key_conflict() -> None:
    with create_defs_folder_sandbox() as sandbox:
        write_component(sandbox, {**BASE, "resource": {"concurrency": 4}}, name="posters")
        write_component(
            sandbox,
            {**BASE, "asset_name": "flyers", "resource": {"concurrency": 2}},
            name="flyers",
        )
        error = build_all_error(sandbox)
        assert "different resources with same key 'zimage'" in error_text(error)


def test_deferred_mode_follows_the_factory() -> None:
    component = ZImageComponent(asset_name="posters", prompts=["a fox"], mode="deferred")
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, BASE)
        context = sandbox_context(sandbox, path)
        assert component.image_asset_spec(context).deferred is True
        sensors = component.build_defs(context).sensors or []
        assert {s.name for s in sensors} == {"posters_task_status", "posters_review_sensor"}
        blocking = ZImageComponent(asset_name="posters", prompts=["a fox"])
        assert blocking.image_asset_spec(context).deferred is False
        assert [s.name for s in blocking.build_defs(context).sensors or []] == [
            "posters_review_sensor"
        ]


# -- a real run -------------------------------------------------------------------------------


def test_built_definitions_materialize_against_the_emulator(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emulator.configure(latency_s=0.2, estimated_time=1)
    monkeypatch.setenv("POSTERS_API_KEY", emulator.api_key)
    monkeypatch.setenv("POSTERS_BASE_URL", emulator.url)
    attributes = {
        **BASE,
        "default_size": SMALL,
        "storage": str(tmp_path / "images"),
        "retry": None,
        "resource": {
            "api_key": "{{ env.POSTERS_API_KEY }}",
            "base_url": "{{ env.POSTERS_BASE_URL }}",
            "concurrency": 3,
            "max_poll_interval": 0.5,
        },
    }
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, attributes, requirements=["POSTERS_API_KEY"])
        with loaded(sandbox, path) as (_, defs), dg.instance_for_test() as instance:
            job = defs.resolve_job_def("posters_job")
            result = job.execute_in_process(
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": "fox",
                    "dagster/asset_partition_range_end": "poster",
                },
            )
            assert result.success
            records = instance.fetch_materializations(dg.AssetKey("posters"), limit=10).records
            by_partition = {
                r.partition_key: r.asset_materialization
                for r in records
                if r.asset_materialization is not None
            }
            assert set(by_partition) == {"fox", "lighthouse", "poster"}
            for key, materialization in by_partition.items():
                assert materialization is not None
                md = materialization.metadata
                size = "376x512" if key == "poster" else SMALL
                assert md["size_requested"].value == size
                width, height = (int(side) for side in size.split("x"))
                assert (md["width"].value, md["height"].value) == (width, height)
                assert Path(str(md["path"].value)).is_file()
                assert Path(str(md["path"].value)).parent == tmp_path / "images" / "posters"
            assert by_partition["fox"].metadata["seed"].value == 7
            assert emulator.stats()["tasks_created"] == 3

            # The key was read in the run process; it is in no stored event or run config.
            run = instance.get_run_by_id(result.run_id)
            assert run is not None
            assert emulator.api_key not in repr(run.run_config)
            events = instance.all_logs(result.run_id)
            assert emulator.api_key not in serialize_value(events)
            checks = {
                e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
                for e in (ev.dagster_event for ev in events)
                if e is not None and e.event_type_value == "ASSET_CHECK_EVALUATION"
            }
            assert checks
            assert all(checks.values()), checks


# -- the package root -------------------------------------------------------------------------


def test_component_is_exported_lazily_from_the_package_root() -> None:
    assert "ZImageComponent" in zimage_dagster.__all__
    assert "ZImageComponent" in dir(zimage_dagster)
    assert zimage_dagster.ZImageComponent is ZImageComponent
    code = (
        "import sys, zimage_dagster\n"
        "assert 'dagster' not in sys.modules, 'dagster imported eagerly'\n"
        "from dagster.components.core.package_entry import discover_entry_point_package_objects\n"
        "from dagster_shared.serdes.objects import EnvRegistryKey\n"
        "objects = discover_entry_point_package_objects()\n"
        "key = EnvRegistryKey(name='ZImageComponent', namespace='zimage_dagster')\n"
        "assert key in objects, sorted(k.to_typename() for k in objects)\n"
        "assert objects[key] is zimage_dagster.ZImageComponent\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr


def test_prompts_csv_fixture_is_valid() -> None:
    from zimage_dagster import load_prompts

    dataset = load_prompts(_write(PROMPTS_CSV))
    assert dataset.keys == ["fox", "lighthouse", "poster"]
    assert not dataset.problems


def _write(text: str) -> str:
    url = "memory://component-tests/fixture.csv"
    with fsspec.open(url, "w") as handle:
        handle.write(text)
    return url


# -- dynamic partitions: the prompt-dataset sensor --------------------------------------------


def test_dynamic_dataset_gets_the_prompt_dataset_sensor_which_adds_its_keys() -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(sandbox, {**BASE, "partitioning": "dynamic"})
        with loaded(sandbox, path) as (_, defs), dg.instance_for_test() as instance:
            sensor = defs.resolve_sensor_def("posters_prompt_dataset")
            assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
            assert sensor.job_name == "posters_job"
            context = dg.build_sensor_context(instance=instance, definitions=defs, cursor=None)
            result = sensor(context)
            assert isinstance(result, dg.SensorResult)
            added = [
                key
                for request in result.dynamic_partitions_requests or []
                if isinstance(request, dg.AddDynamicPartitionsRequest)
                for key in request.partition_keys
            ]
            assert added == ["fox", "lighthouse", "poster"]
            assert sorted(str(r.partition_key) for r in result.run_requests or []) == added


def test_dataset_sensor_can_be_turned_off_and_needs_dynamic_partitions() -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = write_component(
            sandbox, {**BASE, "partitioning": "dynamic", "dataset_sensor": False}
        )
        with loaded(sandbox, path) as (_, defs):
            assert [s.name for s in defs.sensors or []] == ["posters_review_sensor"]
        static = write_component(sandbox, {**BASE, "dataset_sensor": True}, name="static")
        error = load_error(sandbox, static)
        assert "dataset_sensor needs partitioning: dynamic" in error_text(error)
