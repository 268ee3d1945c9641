"""Bad input: prompt datasets (CSV and JSON Lines) generated with hypothesis, mixing good rows with
empty, oversized, unicode, control-character and right-to-left prompts, duplicate keys, keys that
try path traversal, bad sizes and seeds, and malformed lines.

Every row is accounted for: it is either a valid row (in order, with its key) or reported by its
line number with a reason; nothing crashes; a real run of a small sample of the valid rows against
the emulator materializes them; and no file is written outside the storage root (the folder tree
around it is snapshotted before and after).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability._support import (
    failure_text,
    image_asset,
    latest_materializations,
    resource,
    run_range,
)
from zimage_dagster.assets import build_image_assets
from zimage_dagster.emulator.server import EmulatorProcess
from zimage_dagster.prompts import PromptDatasetError, derive_key, load_prompts

GOOD_PROMPTS = [
    "a red fox in the snow",
    "東京の夜景, neon and rain",
    "שלום עולם, a lighthouse at dawn",  # right-to-left
    "مرحبا بالعالم with a \u202eversed\u202c word",  # RLO/PDF bidi controls
    "bell\x07 and escape\x1b[31m sequences",
    "tab\tseparated\tprompt",
    "emoji 🦊🌨️ and combining e\u0301",
    "zero\u200bwidth\u200fmarks",
    "x" * 2000,
    "'; DROP TABLE runs; --",
    "{{ template }} ${env} %s %(name)s",
]
BAD_PROMPTS = ["", "   ", "\u3000\u2028", "x" * 2001, "\x1f\x1e"]
GOOD_KEYS = ["fox-1", "a_b", "0abc", "k" * 80, None, "   "]  # None/blank: derived from the prompt
BAD_KEYS = [
    "../../etc/passwd",
    "..",
    ".",
    "a/b",
    "a\\b",
    "C:evil",
    "/abs",
    "Upper",
    "con",
    "k" * 81,
    "ключ",
    " lead",
    "tab\tkey",
    "k|1",
    "-start",
    "a b",
    "..%2f..%2fx",
]
GOOD_SIZES = [None, "", "1:1", "16:9", "376x376", "1024x768"]
BAD_SIZES = ["100x100", "0x0", "9999x9999", "abc", "16:10", "1024X768", "-1x-1", " 1:1", "1e3x1e3"]
GOOD_SEEDS = [None, "", "1", "42", "2147483647"]
BAD_SEEDS = ["0", "-1", "2147483648", "4.5", "1e3", "abc", "+5", "1_000", "99999999999999999999"]


@st.composite
def rows_(draw: st.DrawFn) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(3, 10))):
        row: dict[str, Any] = {}
        row["prompt"] = draw(st.sampled_from(GOOD_PROMPTS + BAD_PROMPTS))
        row["key"] = draw(st.sampled_from(GOOD_KEYS + BAD_KEYS))
        row["size"] = draw(st.sampled_from(GOOD_SIZES + BAD_SIZES))
        row["seed"] = draw(st.sampled_from(GOOD_SEEDS + BAD_SEEDS))
        duplicate, of_key = draw(st.booleans()), draw(st.booleans())
        if duplicate:  # a duplicate of an earlier key or prompt
            if out and of_key:
                row["key"] = draw(st.sampled_from([r["key"] for r in out]))
            elif out:
                row["prompt"] = draw(st.sampled_from([r["prompt"] for r in out]))
        row["note"] = draw(st.sampled_from(["", "ok", "ünïcödé", "a,b;c"]))
        out.append(row)
    return out


def _ok(row: dict[str, Any]) -> bool:
    prompt = row["prompt"]
    return (
        isinstance(prompt, str)
        and bool(prompt.strip())
        and len(prompt) <= 2000
        and row["key"] not in BAD_KEYS
        and row["size"] not in BAD_SIZES
        and row["seed"] not in BAD_SEEDS
    )


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def expected(
    rows: list[dict[str, Any]], lines: list[int], fmt: str, broken: list[int]
) -> tuple[list[str], set[int]]:
    """The valid keys in order, and the line numbers that must be reported."""
    keys: list[str] = []
    bad: set[int] = set(broken)
    for row, line in zip(rows, lines, strict=True):
        if fmt == "csv" and all(_blank(v) for v in row.values()):
            continue  # a blank CSV line is no row at all
        if not _ok(row):
            bad.add(line)
            continue
        key = row["key"] if not _blank(row["key"]) else derive_key(row["prompt"])
        if key in keys:
            bad.add(line)  # duplicate: the first row wins
            continue
        keys.append(key)
    return keys, bad


def write_dataset(
    folder: Path, rows: list[dict[str, Any]], fmt: str, garbage: list[int]
) -> tuple[Path, list[int], list[int]]:
    """Write rows (and garbage lines before the rows at positions ``garbage``); return the path,
    each row's line number, and the garbage lines' numbers."""
    path = folder / f"prompts.{fmt}"
    lines: list[int] = []
    broken: list[int] = []
    if fmt == "csv":
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["prompt", "key", "size", "seed", "note"])
        number = 1
        for i, row in enumerate(rows):
            if i in garbage:  # more values than columns
                writer.writerow(["a fox", "x", "1:1", "1", "n", "extra", "more"])
                number += 1
                broken.append(number)
            writer.writerow(
                [
                    "" if row[c] is None else row[c]
                    for c in ("prompt", "key", "size", "seed", "note")
                ]
            )
            number += 1
            lines.append(number)
        path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    else:
        out = []
        for i, row in enumerate(rows):
            if i in garbage:
                out.append(
                    ['{"prompt": "a fox", oops', "[1, 2, 3]", '"just a string"', "{}"][i % 4]
                )
                broken.append(len(out))
            out.append(json.dumps({k: v for k, v in row.items() if v is not None}))
            lines.append(len(out))
        path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path, lines, broken


def tree(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in dirnames:  # folders: that they exist (their mtime moves with any child)
            out[str((here / name).relative_to(root))] = (-1, -1)
        for name in filenames:
            st_ = (here / name).lstat()
            out[str((here / name).relative_to(root))] = (st_.st_size, st_.st_mtime_ns)
    return out


def _check_loaded(
    path: Path, rows: list[dict[str, Any]], lines: list[int], broken: list[int], fmt: str
) -> list[str]:
    want_keys, want_bad = expected(rows, lines, fmt, broken)
    ds = load_prompts(path)
    assert ds.keys == want_keys
    assert {p.row_number for p in ds.problems} == want_bad
    for problem in ds.problems:
        assert problem.reason
        assert problem.field in ("prompt", "key", "size", "seed", "row", "line")
        text = str(problem)
        assert text.startswith(f"row {problem.row_number}, field ")
        assert all(c.isprintable() or c == " " for c in text.replace("\n", "")), text
    return want_keys


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=rows_(),
    fmt=st.sampled_from(["csv", "jsonl"]),
    garbage=st.lists(st.integers(0, 9), max_size=2),
)
def test_every_row_is_either_valid_or_reported_by_line(
    rows: list[dict[str, Any]], fmt: str, garbage: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, lines, broken = write_dataset(Path(tmp), rows, fmt, garbage)
        _check_loaded(path, rows, lines, broken, fmt)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=rows_(),
    fmt=st.sampled_from(["csv", "jsonl"]),
    garbage=st.lists(st.integers(0, 9), max_size=2),
)
def test_a_real_run_of_valid_rows_writes_only_under_the_storage_root(
    rows: list[dict[str, Any]], fmt: str, garbage: list[int], emulator_proc: EmulatorProcess
) -> None:
    emulator_proc.configure(latency_s=0.1, estimated_time=1)
    with tempfile.TemporaryDirectory() as tmp:
        outer = Path(tmp) / "work"
        root = outer / "deep" / "store"
        (outer / "data").mkdir(parents=True)
        root.parent.mkdir()
        path, lines, broken = write_dataset(outer / "data", rows, fmt, garbage)
        keys = _check_loaded(path, rows, lines, broken, fmt)
        before = tree(Path(tmp), skip=root)
        with dg.instance_for_test() as instance:
            defs = build_image_assets(
                "imgs", path, storage=root, retry_policy=None, default_size="376x376"
            )
            asset = image_asset(defs)
            sample = keys[:2]
            if sample:
                result = run_range(
                    asset, instance, resource(emulator_proc, concurrency=4), sample[0], sample[-1]
                )
                assert result.success, failure_text(result)
                assert sorted(latest_materializations(instance)) == sorted(sample)
        assert tree(Path(tmp), skip=root) == before  # nothing written outside the root
        if sample:
            written = [p for p in root.rglob("*") if p.is_file()]
            assert all(p.resolve().is_relative_to(root.resolve()) for p in written)
            assert {p.stem for p in (root / "imgs").glob("*.webp")} == set(sample)


MALFORMED = [
    ("csv", b"", "empty file"),
    ("csv", b"key,size\nfox,1:1\n", "no 'prompt' column"),
    ("csv", b"prompt,key\nok,k1\n\xff\xfe,k2\n", "not valid utf-8"),
    ("json", b'{"prompt": "a fox"}', "must be a list of objects"),
    ("json", b'[{"prompt": "a fox"}, {"prompt": ', "not valid JSON"),
    ("jsonl", b'{"key": "a"}\n{"key": "b"}\n', "no record has a 'prompt' field"),
]


@pytest.mark.parametrize(("fmt", "data", "says"), MALFORMED)
def test_unusable_datasets_are_one_clear_error_and_never_a_dead_code_location(
    tmp_path: Path, fmt: str, data: bytes, says: str
) -> None:
    """``load_prompts`` raises one clear error; the asset built from the file loads anyway (the
    code location with it) with no partitions, and its ``dataset_problem_report`` says why."""
    path = tmp_path / f"prompts.{fmt}"
    path.write_bytes(data)
    with pytest.raises(PromptDatasetError) as caught:
        load_prompts(path)
    assert says in str(caught.value)
    assert str(path) in str(caught.value)
    asset = image_asset(build_image_assets("imgs", path, storage=tmp_path / "store"))
    assert asset.partitions_def is not None
    assert asset.partitions_def.get_partition_keys() == []
    report = asset.metadata_by_key[asset.key]["dataset_problem_report"].value
    assert says in report
    assert str(path) in report
    assert not (tmp_path / "store").exists()


def test_nul_and_garbage_lines_are_rows_with_problems_not_crashes(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(
        b'{"prompt": "a fox", "key": "fox"}\n\x00\x00\n\xff\xfe\n{"prompt": "a\\u0000b"}\n'
    )
    ds = load_prompts(path)
    assert ds.keys[0] == "fox"
    assert {p.row_number for p in ds.problems} == {2, 3}
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_bytes(b"prompt,key\na\x00b,with-nul\nfine,k2\n")
    assert load_prompts(csv_path).keys == ["with-nul", "k2"]


def test_an_unclosed_quote_in_a_csv_does_not_swallow_the_rows_after_it(tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    path.write_bytes(b'prompt,key\n"a fox, unclosed,k1\nfine,k2\nalso fine,k3\n')
    try:
        ds = load_prompts(path)
    except PromptDatasetError as exc:  # a clear error for the whole file is acceptable
        error = str(exc)
    else:  # ...or the bad row reported and the rows after it kept; never rows silently merged
        assert {p.row_number for p in ds.problems} == {2}
        assert ds.keys == ["k2", "k3"]
        return
    assert "line 2" in error
