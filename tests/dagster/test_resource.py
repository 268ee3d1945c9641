"""ZImageResource in real runs: documented fields, client lifecycle, secrets kept out of everything."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from tests.dagster._support import (
    SMALL,
    failure_message,
    image_asset,
    make_fast,
    materializations,
    resource_for,
    rows,
    run_log_text,
    run_range,
    step_failure,
)
from zimage_dagster.api import GenerationRequest, ZImageClient
from zimage_dagster.assets import build_image_assets
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.resource import ZImageResource

CANARY = "sk-canary-5e1f0c2b9a7d4e36"


# -- fields and lifecycle ------------------------------------------------------------------------


def test_every_field_is_documented() -> None:
    fields = ZImageResource.model_fields
    assert {"api_key", "base_url", "concurrency", "max_resubmits", "wait_deadline"} <= set(fields)
    undocumented = [name for name, f in fields.items() if not (f.description or "").strip()]
    assert undocumented == []
    # Dagster shows the same descriptions in the launchpad / config schema.
    schema = ZImageResource.to_config_schema().as_field().config_type
    assert all(schema.fields[name].description for name in fields)  # type: ignore[attr-defined]


def test_the_client_is_opened_for_the_run_and_closed_after_it(emulator: EmulatorServer) -> None:
    make_fast(emulator)
    seen: dict[str, object] = {}

    @dg.asset
    def hero(zimage: ZImageResource) -> None:
        client = zimage.get_client()
        seen["same_client"] = client is zimage.get_client()
        seen["client"] = client
        seen["credits"] = client.get_credits().remaining
        result = client.generate(GenerationRequest(prompt="a lighthouse", size=SMALL, seed=3))
        seen["size"] = (result.image.width, result.image.height)
        seen["seed"] = result.seed

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [hero], instance=instance, resources={"zimage": resource_for(emulator)}
        )
        assert result.success
    assert seen["same_client"] is True
    assert isinstance(seen["credits"], float)
    assert seen["size"] == (376, 376)
    assert seen["seed"] == 3
    client = seen["client"]
    assert isinstance(client, ZImageClient)
    # Torn down with the run: the HTTP connection pool is closed.
    with pytest.raises(RuntimeError, match="closed"):
        client.get_credits()


def test_get_client_works_in_an_op(emulator: EmulatorServer) -> None:
    make_fast(emulator)

    @dg.op
    def credits(zimage: ZImageResource) -> float:
        return zimage.get_client().get_credits().remaining

    @dg.job
    def check_credits() -> None:
        credits()

    result = check_credits.execute_in_process(resources={"zimage": resource_for(emulator)})
    assert result.success
    assert result.output_for_node("credits") > 0


def test_ca_bundle_lets_a_run_reach_an_https_emulator() -> None:
    """The emulator in TLS mode: a run trusts its CA through ``ca_bundle``, and fails clearly
    without it (the system's CAs do not know it)."""
    from zimage_dagster.emulator import EmulatorConfig

    @dg.op
    def make_one(zimage: ZImageResource) -> str:
        result = zimage.get_client().generate(GenerationRequest(prompt="a fox", size=SMALL, seed=3))
        return result.image.format

    @dg.job
    def one_image() -> None:
        make_one()

    with EmulatorServer(EmulatorConfig.for_tests(), tls=True) as emu:
        assert emu.ca_path is not None
        trusted = resource_for(emu, ca_bundle=emu.ca_path)
        result = one_image.execute_in_process(resources={"zimage": trusted})
        assert result.output_for_node("make_one") == "WEBP"
        untrusted = resource_for(emu, max_retries=0)
        failed = one_image.execute_in_process(resources={"zimage": untrusted}, raise_on_error=False)
        assert not failed.success
        cause = step_failure(failed).step_failure_data.error
        assert cause is not None
        assert cause.cause is not None
        assert "CERTIFICATE_VERIFY_FAILED" in cause.cause.message
        assert emu.stats()["tasks_created"] == 1


def test_settings_come_from_the_environment_when_unset(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_fast(emulator)
    monkeypatch.setenv("ZIMAGE_API_KEY", emulator.api_key)
    monkeypatch.setenv("ZIMAGE_BASE_URL", emulator.url)
    resource = ZImageResource()
    assert resource.get_client().base_url.rstrip("/") == emulator.url.rstrip("/")
    assert resource.get_client().get_credits().remaining > 0


def test_a_short_poll_cap_is_accepted() -> None:
    """``max_poll_interval`` under the policy's default floor (0.5 s) pulls the floor down."""
    client = ZImageResource(api_key="sk-x", base_url="http://127.0.0.1:9", max_poll_interval=0.1)
    assert client.get_client() is not None


# -- secrets -------------------------------------------------------------------------------------


def test_the_key_is_not_in_the_resources_repr() -> None:
    resource = ZImageResource(api_key=CANARY, base_url="http://127.0.0.1:9")
    assert CANARY not in repr(resource)
    assert CANARY not in str(resource)
    assert CANARY not in repr(resource.get_client())


def test_the_key_stays_out_of_the_event_log_metadata_and_files(
    emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_fast(emulator, api_keys=[CANARY])
    monkeypatch.setenv("ZIMAGE_TEST_KEY", CANARY)
    dataset = [*rows(2), {"key": "p2", "prompt": "a forbidden harbour", "size": SMALL}]
    asset = image_asset(build_image_assets("imgs", dataset, storage=tmp_path, retry_policy=None))
    resource = ZImageResource(
        api_key=dg.EnvVar("ZIMAGE_TEST_KEY"), base_url=emulator.url, max_poll_interval=0.25
    )
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_range(asset, instance, resource, "p0", "p2")
        assert not result.success  # p2 rejected: its error path is in the log too
        assert sorted(materializations(instance, "imgs")) == ["p0", "p1"]
        assert "content_policy_violation" in failure_message(result)
        text = run_log_text(instance, result.run_id)
        assert "ASSET_MATERIALIZATION" in text  # the scan sees the events
        assert CANARY not in text
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        assert CANARY not in dg.serialize_value(run)
    assert emulator.stats()["requests"]["create"]["200"] == 3  # the key really was used
    assert emulator.stats()["file_requests_with_authorization"] == 0
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".json" for p in files)
    assert not [p for p in files if CANARY.encode() in p.read_bytes()]


def test_a_rejected_key_is_not_echoed_in_the_failure(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    make_fast(emulator, api_keys=["sk-the-only-good-key"])
    asset = image_asset(build_image_assets("imgs", rows(1), storage=tmp_path, retry_policy=None))
    resource = ZImageResource(api_key=CANARY, base_url=emulator.url)
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_range(asset, instance, resource, "p0", "p0")
        assert not result.success
        message = failure_message(result)
        assert "p0" in message
        assert "401" in message or "unauthorized" in message.lower()
        assert CANARY not in run_log_text(instance, result.run_id)
    assert emulator.stats()["tasks_created"] == 0
