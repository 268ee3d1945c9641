"""The image store: layout, atomic writes, path safety, and the IO manager in real Dagster runs."""

import doctest
import io
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from upath import UPath

import zimage_dagster.io_manager as storage_module
from zimage_dagster.engine.store import (
    ImageStore,
    UnsafePathError,
    check_path_component,
    extension_for_format,
)
from zimage_dagster.io_manager import ImageStoreIOManager


def png(color: str = "red", size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def mem_root() -> str:
    return f"memory://store-tests-{uuid.uuid4().hex[:8]}/images"


def test_doctests() -> None:
    assert doctest.testmod(storage_module).failed == 0


def test_layout_local(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "out")
    data = png()
    path = store.write_image("hero", "fox", data, "png")
    assert path.path == str(tmp_path / "out" / "hero" / "fox.png")
    store.write_provenance("hero", "fox", {"seed": 1, "format": "PNG", "sha256": "abc"})
    nested = store.save(dg.AssetKey(["catalog", "hero"]), "fox", data, "jpg", {"format": "JPEG"})
    assert nested.path.path == str(tmp_path / "out" / "catalog" / "hero" / "fox.jpg")
    assert all_files(tmp_path / "out") == {
        "hero/fox.png",
        "hero/fox.json",
        "catalog/hero/fox.jpg",
        "catalog/hero/fox.json",
    }
    assert store.read_bytes("hero", "fox") == data
    assert store.read_provenance("hero", "fox") == {"seed": 1, "format": "PNG", "sha256": "abc"}
    found = store.find("hero", "fox")
    assert found is not None
    assert (found.format, found.sha256) == ("PNG", "abc")
    assert store.open_image("hero", "fox").size == (8, 6)
    assert store.exists(["catalog", "hero"], "fox")
    assert not store.exists("hero", "wolf")
    assert store.read_provenance("hero", "wolf") is None
    with pytest.raises(FileNotFoundError, match="wolf"):
        store.read_bytes("hero", "wolf")


def test_pathlike_and_relative_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = ImageStore("rel")
    store.write_image("a", "k", b"x")
    assert (tmp_path / "rel" / "a" / "k.png").read_bytes() == b"x"
    assert store.is_local
    assert ImageStore(UPath(tmp_path / "rel")).read_bytes("a", "k", "png") == b"x"
    assert ImageStore(f"file://{tmp_path}/rel").read_bytes("a", "k", "png") == b"x"


def test_memory_store(mem_root: str) -> None:
    store = ImageStore(mem_root)
    assert not store.is_local
    data = png("blue")
    saved = store.save(dg.AssetKey(["a", "b"]), "p1", data, "png", {"format": "PNG", "sha256": "s"})
    assert str(saved.path) == f"{mem_root}/a/b/p1.png"
    assert UPath(f"{mem_root}/a/b/p1.json").exists()
    assert store.read_bytes(["a", "b"], "p1") == data
    assert store.open_image(["a", "b"], "p1").getpixel((0, 0)) == (0, 0, 255)
    assert store.partitions(["a", "b"]) == ["p1"]
    assert [k for k, _ in store.iter_images(["a", "b"])] == ["p1"]
    store.delete(["a", "b"], "p1")
    assert store.find(["a", "b"], "p1") is None


def test_save_replaces_other_extension_and_provenance_points_at_image(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    store.save("hero", "fox", png(), "png", {"format": "PNG"})
    store.save("hero", "fox", b"jpegbytes", "jpg", {"format": "JPEG"})
    assert all_files(tmp_path) == {"hero/fox.jpg", "hero/fox.json"}
    found = store.find("hero", "fox")
    assert found is not None
    assert found.path.name == "fox.jpg"
    assert found.format == "JPEG"


def test_find_without_provenance_probes_extensions(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    store.write_image("hero", "fox", b"w", "webp")
    found = store.find("hero", "fox")
    assert found is not None
    assert (found.format, found.sha256, found.provenance) == ("WEBP", None, {})


def test_atomic_overwrite_leaves_no_temp_files(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    store.write_image("hero", "fox", b"old")
    with pytest.raises(TypeError):
        store.write_image("hero", "fox", "not bytes")  # type: ignore[arg-type]
    assert store.read_bytes("hero", "fox", "png") == b"old"
    store.write_image("hero", "fox", b"new")
    assert all_files(tmp_path) == {"hero/fox.png"}
    assert store.read_bytes("hero", "fox", "png") == b"new"


def test_readers_never_see_partial_files(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    versions = [bytes([i]) * 200_000 for i in range(4)]
    store.write_image("hero", "fox", versions[0])
    stop = threading.Event()
    seen: list[bytes] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            store.write_image("hero", "fox", versions[i % 4])
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(200):
            seen.append(store.read_bytes("hero", "fox", "png"))
    finally:
        stop.set()
        thread.join()
    assert all(s in versions for s in seen)


# -- path safety --------------------------------------------------------------------------------

BAD_COMPONENTS = [
    "",
    ".",
    "..",
    "../x",
    "a/b",
    "/etc",
    "a\\b",
    "..\\x",
    "C:",
    "C:x",
    "\\\\server\\share",
    "a\x00b",
    "a\nb",
    " lead",
    "trail ",
    "x" * 201,
]


@pytest.mark.parametrize("bad", BAD_COMPONENTS)
def test_refuses_unsafe_partition_keys(tmp_path: Path, bad: str) -> None:
    store = ImageStore(tmp_path / "root")
    with pytest.raises(UnsafePathError):
        store.write_image("hero", bad, b"x")
    with pytest.raises(UnsafePathError):
        store.write_provenance("hero", bad, {})
    with pytest.raises(UnsafePathError):
        store.find("hero", bad)
    assert not (tmp_path / "root").exists() or all_files(tmp_path / "root") == set()
    assert all_files(tmp_path) == set()


@pytest.mark.parametrize("bad", [*BAD_COMPONENTS, ["a", ".."], [], ["ok", "a/b"]])
def test_refuses_unsafe_asset_names(tmp_path: Path, bad: Any) -> None:
    store = ImageStore(tmp_path / "root")
    with pytest.raises(UnsafePathError):
        store.write_image(bad, "k", b"x")
    assert all_files(tmp_path) == set()


def test_ledger_folder_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError, match="reserved"):
        ImageStore(tmp_path).write_image("_ledger", "k", b"x")


def test_refuses_unsafe_extension(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError):
        ImageStore(tmp_path).write_image("a", "k", b"x", "png/../../x")


def test_allows_dagster_style_keys(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    for key in ["2024-01-01", "2024-01-01-00:00", "a|b", "東京", "a..b"]:
        store.write_image("hero", key, b"x")
        assert store.read_bytes("hero", key, "png") == b"x"
    assert all(p.startswith("hero/") for p in all_files(tmp_path))
    # A leading '.' would be a dot-file the store's own scans skip: refused, nothing written.
    with pytest.raises(UnsafePathError, match=r"'\.\.hidden-ish' refused: starts with '\.'"):
        store.write_image("hero", "..hidden-ish", b"x")
    assert len(all_files(tmp_path)) == 5


def test_write_atomic_refuses_foreign_paths(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "root")
    with pytest.raises(UnsafePathError):
        store.write_atomic(UPath(tmp_path / "elsewhere.bin"), b"x")
    with pytest.raises(UnsafePathError):
        store.delete_file(UPath(tmp_path / "elsewhere.bin"))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.one_of(
        st.text(max_size=30),
        st.sampled_from(["..", "../..", "/", "\\", "C:\\", "~", "$HOME", "%2e%2e", "..%2f"]),
        st.lists(st.sampled_from(["..", ".", "a", "/", "\\", ":", "\x00", "~"]), max_size=6).map(
            "".join
        ),
    ),
    asset=st.lists(st.text(max_size=8), min_size=1, max_size=3),
)
def test_nothing_is_ever_written_outside_the_root(
    tmp_path: Path, key: str, asset: list[str]
) -> None:
    root = tmp_path / "root"
    store = ImageStore(root)
    try:
        path = store.write_image(asset, key, b"x")
    except UnsafePathError:
        return
    resolved = Path(path.path).resolve()
    assert resolved.is_relative_to(root.resolve())
    assert {p.name for p in tmp_path.iterdir()} == {"root"}
    assert check_path_component(key) == key


def test_extension_for_format() -> None:
    assert [extension_for_format(f) for f in ("PNG", "jpeg", "WEBP")] == ["png", "jpg", "webp"]
    with pytest.raises(ValueError, match="unsupported"):
        extension_for_format("TIFF")


def test_read_many_and_list_files(mem_root: str, tmp_path: Path) -> None:
    for root in (mem_root, str(tmp_path)):
        store = ImageStore(root)
        for i in range(3):
            store.write_provenance("hero", f"k{i}", {"i": i})
        files = store.list_files(store.asset_dir("hero"), ".json")
        assert [p.name for p in files] == ["k0.json", "k1.json", "k2.json"]
        got = store.read_many(files)
        assert len(got) == 3
        assert store.list_files(store.join("nothing-here"), ".json") == []


# -- IO manager in real Dagster runs ------------------------------------------------------------

PARTS = dg.StaticPartitionsDefinition(["red", "green", "blue"])


def _defs(root: str) -> list[Any]:
    @dg.asset(partitions_def=PARTS)
    def hero(context: dg.AssetExecutionContext) -> None:
        store = ImageStore(root)
        for key in context.partition_keys:
            store.save("hero", key, png(key, (10, 7)), "png", {"format": "PNG"})

    @dg.asset(partitions_def=PARTS)
    def hero_pil(hero: Image.Image) -> None:
        assert isinstance(hero, Image.Image)
        assert hero.size == (10, 7)

    @dg.asset(partitions_def=PARTS)
    def hero_bytes(hero: bytes) -> None:
        assert Image.open(io.BytesIO(hero)).size == (10, 7)

    @dg.asset(ins={"hero": dg.AssetIn(metadata={"as": "pil"})})
    def gallery(hero: Any) -> None:
        assert set(hero) == {"red", "green", "blue"}
        assert all(isinstance(v, Image.Image) for v in hero.values())
        assert hero["green"].getpixel((0, 0)) == (0, 128, 0)

    @dg.asset(ins={"hero": dg.AssetIn(metadata={"as": "path"})}, partitions_def=PARTS)
    def hero_path(hero: Any) -> None:
        assert isinstance(hero, UPath)
        assert hero.name.endswith(".png")

    @dg.asset(partitions_def=PARTS)
    def hero_dict(hero: dict[str, bytes]) -> None:
        assert len(hero) == 1
        assert all(isinstance(v, bytes) for v in hero.values())

    return [hero, hero_pil, hero_bytes, gallery, hero_path, hero_dict]


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_io_manager_loads_images(tmp_path: Path, mem_root: str, kind: str) -> None:
    root = str(tmp_path / "images") if kind == "local" else mem_root
    assets = _defs(root)
    resources = {"io_manager": ImageStoreIOManager(root=root)}
    for key in PARTS.get_partition_keys():
        result = dg.materialize(assets[:1], partition_key=key, resources=resources)
        assert result.success
    for key in ("red", "blue"):
        result = dg.materialize(
            assets,
            selection=["hero_pil", "hero_bytes", "hero_path", "hero_dict"],
            partition_key=key,
            resources=resources,
        )
        assert result.success
    result = dg.materialize(assets, selection=["gallery"], resources=resources)
    assert result.success


def test_io_manager_single_run_backfill_writes_through_store(tmp_path: Path) -> None:
    root = str(tmp_path / "images")
    assets = _defs(root)
    result = dg.materialize(
        assets[:1],
        resources={"io_manager": ImageStoreIOManager(root=root)},
        tags={
            "dagster/asset_partition_range_start": "red",
            "dagster/asset_partition_range_end": "blue",
        },
    )
    assert result.success
    assert ImageStore(root).partitions("hero") == ["blue", "green", "red"]


def test_io_manager_missing_partition(tmp_path: Path) -> None:
    root = str(tmp_path / "images")
    assets = _defs(root)
    resources = {"io_manager": ImageStoreIOManager(root=root)}
    dg.materialize(assets[:1], partition_key="red", resources=resources)
    with pytest.raises(FileNotFoundError, match="green"):
        dg.materialize(assets, selection=["gallery"], resources=resources)

    @dg.asset(ins={"hero": dg.AssetIn(metadata={"allow_missing_partitions": True})})
    def partial(hero: dict[str, bytes]) -> None:
        assert list(hero) == ["red"]

    result = dg.materialize([assets[0], partial], selection=["partial"], resources=resources)
    assert result.success


def test_io_manager_refuses_outputs(tmp_path: Path) -> None:
    @dg.asset
    def returns_bytes() -> bytes:
        return b"x"

    with pytest.raises(dg.DagsterInvariantViolationError, match="must return None"):
        dg.materialize(
            [returns_bytes], resources={"io_manager": ImageStoreIOManager(root=str(tmp_path))}
        )
    assert os.listdir(tmp_path) == []


def test_io_manager_bad_as_value(tmp_path: Path) -> None:
    root = str(tmp_path)
    assets = _defs(root)
    resources = {"io_manager": ImageStoreIOManager(root=root)}
    dg.materialize(assets[:1], partition_key="red", resources=resources)

    @dg.asset(ins={"hero": dg.AssetIn(metadata={"as": "numpy"})}, partitions_def=PARTS)
    def wrong(hero: Any) -> None: ...

    with pytest.raises(dg.DagsterInvariantViolationError, match="'as'"):
        dg.materialize(
            [assets[0], wrong], selection=["wrong"], partition_key="red", resources=resources
        )


def test_io_manager_config_fields(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    manager = ImageStoreIOManager(root="memory://x", storage_options={"skip_instance_cache": True})
    assert manager.root == "memory://x"
    # Unset: the image assets' default, $ZIMAGE_STORAGE_URL else zimage_output.
    assert ImageStoreIOManager().root is None
    monkeypatch.setenv("ZIMAGE_STORAGE_URL", str(tmp_path))
    assert ImageStoreIOManager()._store().root.path == str(tmp_path)
    monkeypatch.delenv("ZIMAGE_STORAGE_URL")
    assert ImageStoreIOManager()._store().root.name == "zimage_output"
