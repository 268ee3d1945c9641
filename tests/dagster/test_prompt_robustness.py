"""One bad cell never takes a prompt dataset (and so the code location) down; nor does one bad
file (its asset has no partitions, and says why); every line end loads.

Each case below once raised for the whole file, or passed silently; each is now a row-level
problem (row, field, reason) with the other rows kept. Memory: loading a file holding one huge
line stays within a small multiple of the file's size (measured in a fresh process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from zimage_dagster import ZImageResource, build_image_assets
from zimage_dagster.prompts import MAX_LINE_BYTES, MAX_NESTING, PromptDataset, load_prompts


def _load(tmp_path: Path, name: str, data: bytes) -> PromptDataset:
    path = tmp_path / name
    path.write_bytes(data)
    return load_prompts(path)


def _problems(ds: PromptDataset) -> list[tuple[int, str]]:
    return [(p.row_number, p.field) for p in ds.problems]


def test_a_5000_digit_seed_is_a_bad_row(tmp_path: Path) -> None:
    ds = _load(tmp_path, "p.csv", f"prompt,seed\na fox,{'9' * 5000}\na cat,7\n".encode())
    assert [r.prompt for r in ds] == ["a cat"]
    assert _problems(ds) == [(2, "seed")]
    assert "between 1 and 2147483647" in ds.problems[0].reason
    assert len(str(ds.problems[0])) < 250


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_a_record_nested_too_deep_for_the_parser_is_a_bad_row(tmp_path: Path, fmt: str) -> None:
    deep = '{"prompt": "a fox", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    good = json.dumps({"prompt": "a cat"})
    data = f"{good}\n{deep}\n{good.replace('cat', 'dog')}\n"
    if fmt == "json":
        data = "[" + data.replace("\n", ",").rstrip(",") + "]"
    ds = _load(tmp_path, f"p.{fmt}", data.encode())
    assert [r.prompt for r in ds] == ["a cat", "a dog"]
    assert _problems(ds) == [(2, "line" if fmt == "jsonl" else "row")]
    assert "nested too deeply" in ds.problems[0].reason


def test_an_extra_column_nested_past_the_limit_is_a_bad_row(tmp_path: Path) -> None:
    nested: object = "leaf"
    for _ in range(900):
        nested = [nested]
    ok: object = "leaf"
    for _ in range(MAX_NESTING):
        ok = [ok]
    rows = [{"prompt": "a fox", "note": nested}, {"prompt": "a cat", "note": ok}]
    ds = _load(tmp_path, "p.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    assert [r.prompt for r in ds] == ["a cat"]
    assert _problems(ds) == [(1, "note")]
    assert f"more than {MAX_NESTING} levels" in ds.problems[0].reason


def test_a_200_kb_csv_cell_is_a_bad_row_not_a_bad_file(tmp_path: Path) -> None:
    data = f"prompt,key\n{'x' * 200_000},big\na cat,cat\n".encode()
    ds = _load(tmp_path, "p.csv", data)
    assert ds.keys == ["cat"]
    assert _problems(ds) == [(2, "prompt")]  # longer than the API's 2000 characters


def test_a_line_over_the_limit_is_skipped_unread(tmp_path: Path) -> None:
    huge = "y" * (MAX_LINE_BYTES + 1)
    for fmt, data in [
        ("csv", f"prompt,key\n{huge},big\na cat,cat\n"),
        ("jsonl", json.dumps({"prompt": huge}) + "\n" + json.dumps({"prompt": "a cat"}) + "\n"),
    ]:
        ds = _load(tmp_path, f"p.{fmt}", data.encode())
        assert [r.prompt for r in ds] == ["a cat"], fmt
        assert [p.row_number for p in ds.problems] == [2 if fmt == "csv" else 1], fmt
        assert "skipped unread" in ds.problems[0].reason


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("jsonl", '{"prompt": "a fox", "seed": NaN}\n{"prompt": "a cat"}\n'),
        ("json", '[{"prompt": "a fox", "seed": NaN}, {"prompt": "a cat"}]'),
        ("csv", "prompt,seed\na fox,NaN\na cat,\n"),
    ],
)
def test_a_nan_seed_is_a_bad_row_not_no_seed(tmp_path: Path, fmt: str, data: str) -> None:
    ds = _load(tmp_path, f"p.{fmt}", data.encode())
    assert [r.prompt for r in ds] == ["a cat"]
    assert [(p.field, p.row_number) for p in ds.problems] == [("seed", 1 if fmt != "csv" else 2)]


_MEASURE = textwrap.dedent(
    """
    import sys, tracemalloc
    from zimage_dagster.prompts import load_prompts
    tracemalloc.start()
    ds = load_prompts(sys.argv[1])
    print(len(ds), len(ds.problems), tracemalloc.get_traced_memory()[1])
    """
)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_memory_stays_a_small_multiple_of_the_file_size(tmp_path: Path, fmt: str) -> None:
    """A 40 MB line (the measured case was 200 MB: 1.43 GiB for CSV, 833 MiB for JSONL, i.e.
    7x and 4x): the load's peak Python allocations stay under 1.5x the file's size."""
    size = 40 * 1024 * 1024
    path = tmp_path / f"p.{fmt}"
    with path.open("w") as fh:
        if fmt == "csv":
            fh.write("prompt,key\na cat,cat\n" + "z" * size + ",big\n")
        else:
            fh.write('{"prompt": "a cat"}\n{"prompt": "' + "z" * size + '"}\n')
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    rows, problems, peak = int(out[0]), int(out[1]), int(out[2])
    assert (rows, problems) == (1, 1)
    multiple = peak / path.stat().st_size
    print(
        f"{fmt}: peak allocations while loading {peak / 2**20:.0f} MiB = {multiple:.2f} x the file"
    )
    assert multiple < 1.5


LINE_ENDS = {"unix": "\n", "windows": "\r\n", "classic-mac": "\r"}


@pytest.mark.parametrize("name", sorted(LINE_ENDS))
def test_csv_and_jsonl_load_with_every_line_end(tmp_path: Path, name: str) -> None:
    """``\\n``, ``\\r\\n`` and a lone ``\\r`` all end a line, also inside a quoted CSV field
    (kept as written), with the same line numbers. A classic-Mac CSV once failed the whole
    file, and so the code location, asking for "universal-newline mode"."""
    nl = LINE_ENDS[name]
    csv_text = nl.join(
        ["key,prompt,seed", "fox,a red fox,1", f'owl,"an owl,{nl}at night",2', "elk,an elk,3", ""]
    )
    ds = _load(tmp_path, "p.csv", csv_text.encode())
    assert ds.problems == ()
    assert [(r.key, r.prompt, r.seed, r.row_number) for r in ds] == [
        ("fox", "a red fox", 1, 2),
        ("owl", f"an owl,{nl}at night", 2, 3),
        ("elk", "an elk", 3, 5),
    ]
    jsonl = nl.join(['{"key": "fox", "prompt": "a fox"}', "", '{"key": "owl", "prompt": "an owl"}'])
    ds = _load(tmp_path, "p.jsonl", jsonl.encode())
    assert ds.problems == ()
    assert [(r.key, r.row_number) for r in ds] == [("fox", 1), ("owl", 3)]


def test_a_classic_mac_csv_loads_as_an_asset(tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    path.write_bytes(b"key,prompt\rfox,a red fox\rowl,an owl\r")
    defs = dg.Definitions.merge(
        build_image_assets("cards", path, storage=tmp_path / "out"),
        dg.Definitions(resources={"zimage": ZImageResource(api_key="sk-test")}),
    )
    graph = defs.resolve_asset_graph()
    partitions = graph.get(dg.AssetKey("cards")).partitions_def
    assert partitions is not None
    assert partitions.get_partition_keys() == ["fox", "owl"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"title\na fox\n", "no 'prompt' column"),
        (b'prompt\n"a fox never closed\nan owl\n', "never closed"),
        (b"prompt\na caf\xe9\n", "not valid utf-8"),
    ],
)
def test_one_bad_file_never_takes_the_code_location_down(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(data)
    defs = dg.Definitions.merge(
        build_image_assets("broken", bad, storage=tmp_path / "a"),
        build_image_assets("fine", [{"key": "fox", "prompt": "a fox"}], storage=tmp_path / "b"),
        dg.Definitions(resources={"zimage": ZImageResource(api_key="sk-test")}),
    )
    graph = defs.resolve_asset_graph()  # the whole location loads
    broken = graph.get(dg.AssetKey("broken"))
    assert broken.partitions_def is not None
    assert broken.partitions_def.get_partition_keys() == []
    report = broken.metadata["dataset_problem_report"].value
    assert str(bad) in report
    assert reason in report.lower()
    fine = graph.get(dg.AssetKey("fine")).partitions_def
    assert fine is not None
    assert fine.get_partition_keys() == ["fox"]
