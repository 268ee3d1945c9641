"""Prompt datasets: formats, validation, keys, seeds, bad input that loses nothing."""

from __future__ import annotations

import contextlib
import csv
import doctest
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from upath import UPath

import zimage_dagster.prompts as prompts_module
from zimage_dagster.prompts import (
    KEY_PATTERN,
    PromptDataset,
    PromptDatasetError,
    PromptRow,
    RowProblem,
    check_key,
    content_fingerprint,
    derive_key,
    derive_seed,
    load_prompts,
    request_fingerprint,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "prompts.csv"
KEY_RE = re.compile(KEY_PATTERN)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_doctests() -> None:
    assert doctest.testmod(prompts_module).failed == 0


# -- formats ------------------------------------------------------------------------------------


def test_csv_basic_with_line_numbers_and_extras(tmp_path: Path) -> None:
    src = write(
        tmp_path / "p.csv",
        "prompt,key,size,seed,nsfw_check,category\n"
        "a red fox in snow,fox,16:9,42,true,animals\n"
        '"a poster, with a comma\nand a newline",,1024x768,,no,posters\n'
        "a bad one,,9999x1,,,\n"
        "\n"
        "a teapot,,,,,\n",
    )
    ds = load_prompts(src)
    assert ds.numbering == "line"
    assert [r.row_number for r in ds] == [2, 3, 7]
    fox = ds.get("fox")
    assert fox == PromptRow(
        "fox", "a red fox in snow", "16:9", 42, True, {"category": "animals"}, 2
    )
    poster = ds.rows[1]
    assert poster.prompt == "a poster, with a comma\nand a newline"
    assert poster.nsfw_check is False
    assert poster.seed is None
    assert poster.size == "1024x768"
    assert poster.key == derive_key(poster.prompt)
    teapot = ds.rows[2]
    assert teapot.extra == {}  # empty cells are absent
    assert teapot.size is None
    assert teapot.nsfw_check is None
    (problem,) = ds.problems
    assert problem == RowProblem(5, "size", "9999x1", "width 9999 is outside 376..1536")
    assert str(problem) == "row 5, field 'size', value '9999x1': width 9999 is outside 376..1536"


def test_csv_header_names_case_insensitive_and_bom(tmp_path: Path) -> None:
    src = tmp_path / "p.csv"
    src.write_bytes("\ufeff Prompt ,SEED,Notes\na cat,5,x\n".encode())
    ds = load_prompts(src)
    assert ds.rows[0].prompt == "a cat"
    assert ds.rows[0].seed == 5
    assert ds.rows[0].extra == {"Notes": "x"}


def test_tsv(tmp_path: Path) -> None:
    ds = load_prompts(write(tmp_path / "p.tsv", "prompt\tsize\na cat, sitting\t3:4\n"))
    assert ds.rows[0].prompt == "a cat, sitting"
    assert ds.rows[0].size == "3:4"


def test_jsonl_bad_lines_are_bad_rows(tmp_path: Path) -> None:
    lines = [
        json.dumps({"prompt": "a fox", "seed": 3, "tags": ["a", "b"]}),
        "{not json",
        "",
        json.dumps([1, 2]),
        json.dumps({"prompt": "a wolf", "nsfw_check": 1, "key": 12}),
    ]
    src = tmp_path / "p.ndjson"
    src.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe bad bytes\n")
    ds = load_prompts(src)
    assert [r.prompt for r in ds] == ["a fox", "a wolf"]
    assert ds.rows[0].extra == {"tags": ["a", "b"]}
    assert ds.rows[1].key == "12"
    assert ds.rows[1].nsfw_check is True
    assert [(p.row_number, p.field) for p in ds.problems] == [(2, "line"), (4, "line"), (6, "line")]
    assert "not valid JSON" in ds.problems[0].reason
    assert "JSON object" in ds.problems[1].reason
    assert "utf-8" in ds.problems[2].reason


def test_json_list_and_record_numbering(tmp_path: Path) -> None:
    src = write(
        tmp_path / "p.json",
        json.dumps([{"prompt": "one"}, "not an object", {"prompt": "three", "seed": 2.5}]),
    )
    ds = load_prompts(src)
    assert ds.numbering == "record"
    assert [r.prompt for r in ds] == ["one"]
    assert [(p.row_number, p.field) for p in ds.problems] == [(2, "row"), (3, "seed")]


def test_json_not_a_list_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(PromptDatasetError, match="list of objects"):
        load_prompts(write(tmp_path / "p.json", '{"prompt": "x"}'))
    with pytest.raises(PromptDatasetError, match="not valid JSON"):
        load_prompts(write(tmp_path / "q.json", "[{"))


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "prompt": ["a fox", "a wolf", None],
            "seed": [7.0, None, 3.0],  # what pandas writes for an int column with nulls
            "size": ["1:1", "16:9", "1:1"],
            "category": ["animals", "animals", "x"],
        }
    )
    path = tmp_path / "p.parquet"
    pq.write_table(table, path)
    ds = load_prompts(path)
    assert [(r.prompt, r.seed, r.size) for r in ds] == [
        ("a fox", 7, "1:1"),
        ("a wolf", None, "16:9"),
    ]
    assert ds.rows[0].extra == {"category": "animals"}
    assert [(p.row_number, p.field, p.reason) for p in ds.problems] == [(3, "prompt", "is missing")]


def test_parquet_without_prompt_column(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(PromptDatasetError, match="no 'prompt' column"):
        load_prompts(tmp_path / "p.parquet")


def test_python_list_and_strings() -> None:
    ds = load_prompts([{"prompt": "a fox", "key": "fox"}, "a plain string prompt", 42])  # type: ignore[list-item]
    assert ds.keys[0] == "fox"
    assert ds.rows[1].prompt == "a plain string prompt"
    assert len(ds.problems) == 1
    assert ds.problems[0].row_number == 3


def test_memory_upath_source() -> None:
    path = UPath("memory://prompt-tests/data/p.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"prompt,seed\na lighthouse,9\n")
    ds = load_prompts(path)
    assert ds.rows[0].seed == 9
    assert ds.source == "memory://prompt-tests/data/p.csv"
    ds2 = load_prompts("memory://prompt-tests/data/p.csv")
    assert ds2.rows == ds.rows


def test_format_override_and_unknown_suffix(tmp_path: Path) -> None:
    src = write(tmp_path / "p.txt", "prompt\na fox\n")
    with pytest.raises(PromptDatasetError, match="format"):
        load_prompts(src)
    assert len(load_prompts(src, format="csv")) == 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="prompt dataset not found"):
        load_prompts(tmp_path / "nope.csv")


def test_wrong_source_type() -> None:
    with pytest.raises(TypeError):
        load_prompts(42)  # type: ignore[arg-type]


# -- dataset-level errors -----------------------------------------------------------------------


def test_csv_missing_prompt_column_raises(tmp_path: Path) -> None:
    with pytest.raises(PromptDatasetError, match="no 'prompt' column"):
        load_prompts(write(tmp_path / "p.csv", "text,seed\na fox,1\n"))


def test_csv_empty_file_raises_header_only_is_empty(tmp_path: Path) -> None:
    with pytest.raises(PromptDatasetError, match="empty file"):
        load_prompts(write(tmp_path / "p.csv", ""))
    assert len(load_prompts(write(tmp_path / "q.csv", "prompt\n"))) == 0


def test_csv_undecodable_bytes_raise_with_line(tmp_path: Path) -> None:
    src = tmp_path / "p.csv"
    src.write_bytes(b"prompt\na fox\ncaf\xe9 latte\n")
    with pytest.raises(PromptDatasetError, match="line 3"):
        load_prompts(src)
    assert load_prompts(src, encoding="latin-1").rows[1].prompt == "café latte"


def test_csv_duplicate_columns_raise(tmp_path: Path) -> None:
    with pytest.raises(PromptDatasetError, match="more than once"):
        load_prompts(write(tmp_path / "p.csv", "prompt,Prompt\na,b\n"))


def test_jsonl_without_any_prompt_raises(tmp_path: Path) -> None:
    with pytest.raises(PromptDatasetError, match="'prompt'"):
        load_prompts(write(tmp_path / "p.jsonl", '{"text": "a"}\n{"text": "b"}\n'))


def test_csv_too_many_values_is_a_bad_row(tmp_path: Path) -> None:
    ds = load_prompts(write(tmp_path / "p.csv", "prompt,seed\na,1,extra\nb,2\n"))
    assert [r.prompt for r in ds] == ["b"]
    assert ds.problems[0].row_number == 2
    assert "header has 2" in ds.problems[0].reason


# -- field rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("42", 42), ("007", 7), ("2147483647", 2147483647), ("", None), ("  ", None)],
)
def test_csv_seed_ok(tmp_path: Path, cell: str, expected: int | None) -> None:
    ds = load_prompts(write(tmp_path / "p.csv", f"prompt,seed\na fox,{cell}\n"))
    assert ds.rows[0].seed == expected


@pytest.mark.parametrize(
    "cell", ["42.0", "+42", "1_000", "4e1", " 42", "0x2a", "٤٢", "0", "-5", "2147483648", "abc"]
)
def test_csv_seed_strict(tmp_path: Path, cell: str) -> None:
    ds = load_prompts(write(tmp_path / "p.csv", f'prompt,seed\na fox,"{cell}"\n'))
    assert len(ds) == 0
    (problem,) = ds.problems
    assert problem.field == "seed"
    assert problem.row_number == 2


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("No", False), ("0", False)],
)
def test_csv_nsfw(tmp_path: Path, cell: str, expected: bool) -> None:
    ds = load_prompts(write(tmp_path / "p.csv", f"prompt,nsfw_check\na fox,{cell}\n"))
    assert ds.rows[0].nsfw_check is expected


def test_nsfw_bad_values() -> None:
    ds = load_prompts([{"prompt": "a", "nsfw_check": "maybe"}, {"prompt": "b", "nsfw_check": 2}])
    assert [p.field for p in ds.problems] == ["nsfw_check", "nsfw_check"]


def test_all_field_problems_of_a_row_are_reported() -> None:
    ds = load_prompts([{"prompt": "", "size": "5:4", "seed": True, "key": "../x"}])
    assert {p.field for p in ds.problems} == {"prompt", "size", "seed", "key"}
    assert {p.row_number for p in ds.problems} == {1}


def test_seed_bool_and_float_refused_in_json() -> None:
    ds = load_prompts([{"prompt": "a", "seed": True}, {"prompt": "b", "seed": 4.0}])
    assert len(ds) == 0
    assert [p.field for p in ds.problems] == ["seed", "seed"]


def test_prompt_too_long_and_whitespace() -> None:
    ds = load_prompts([{"prompt": "x" * 2001}, {"prompt": " \t "}, {"prompt": "x" * 2000}])
    assert len(ds) == 1
    assert "2001 characters" in ds.problems[0].reason
    assert ds.problems[0].value is not None
    assert ds.problems[0].value.endswith("(2001 characters)")


def test_problem_value_escapes_control_and_bidi_characters() -> None:
    ds = load_prompts([{"prompt": "ok", "size": "1:1\x1b[31m\u202e\n"}])
    (problem,) = ds.problems
    assert problem.value == "1:1\\x1b[31m\\u202e\\x0a"
    assert all(c.isprintable() for c in str(problem))


def test_unpaired_surrogate_prompt_is_a_bad_row(tmp_path: Path) -> None:
    src = write(tmp_path / "p.jsonl", '{"prompt": "bad \\ud800 prompt"}\n{"prompt": "good"}\n')
    ds = load_prompts(src)
    assert [r.prompt for r in ds] == ["good"]
    assert ds.problems[0].field == "prompt"
    assert "surrogate" in ds.problems[0].reason


# -- keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "Fox",
        "fox.png",
        "a/b",
        "..",
        "a b",
        "-lead",
        "_lead",
        "x" * 81,
        "a|b",
        "é",
        "con",
        "lpt1",
        "",
    ],
)
def test_bad_user_keys_are_bad_rows_never_rewritten(key: str) -> None:
    ds = load_prompts([{"prompt": "a", "key": key}, {"prompt": "b"}])
    if key == "":  # empty means absent: derived
        assert len(ds) == 2
        return
    assert [r.prompt for r in ds] == ["b"]
    assert ds.problems[0].field == "key"
    assert ds.problems[0].row_number == 1


def test_good_user_keys() -> None:
    keys = ["a", "0", "hero-01", "a_b-c", "x" * 80, "con-1", "com10"]
    ds = load_prompts([{"prompt": f"p{i}", "key": k} for i, k in enumerate(keys)])
    assert ds.keys == keys
    assert not ds.problems


def test_duplicate_keys_first_wins() -> None:
    ds = load_prompts(
        [
            {"prompt": "first", "key": "k"},
            {"prompt": "second", "key": "k"},
            {"prompt": "same prompt"},
            {"prompt": "same prompt", "size": "16:9"},
        ]
    )
    assert [r.prompt for r in ds] == ["first", "same prompt"]
    assert [(p.row_number, p.field) for p in ds.problems] == [(2, "key"), (4, "key")]
    assert "row 1" in ds.problems[0].reason
    assert "row 3" in ds.problems[1].reason


def test_derive_key_is_stable_and_valid() -> None:
    # Pinned: these must never change, or every stored partition would be orphaned.
    assert derive_key("A red fox, in the snow!") == "a-red-fox-in-the-snow-850d29527006"
    assert derive_key("東京の夜景") == "prompt-" + derive_key("東京の夜景")[-12:]
    long = derive_key("word " * 100)
    assert len(long) <= 53
    assert KEY_RE.fullmatch(long)
    assert derive_key("Crème brûlée").startswith("creme-brulee-")
    assert derive_key("a fox") != derive_key("a fox ")


@given(st.text(max_size=300))
def test_derive_key_always_valid(prompt: str) -> None:
    key = derive_key(prompt)
    assert KEY_RE.fullmatch(key)
    assert check_key(key) is None


def test_check_key() -> None:
    assert check_key("ok-key") is None
    assert check_key("Nul") is not None  # uppercase anyway
    assert check_key("nul") is not None


# -- seeds and fingerprints ---------------------------------------------------------------------


def test_derive_seed_pinned_and_in_range() -> None:
    assert derive_seed("hero", "fox", "a red fox") == derive_seed("hero", "fox", "a red fox")
    assert derive_seed("a", "bc") != derive_seed("ab", "c")
    with pytest.raises(ValueError, match="at least one"):
        derive_seed()


@given(st.lists(st.text(max_size=50), min_size=1, max_size=4))
def test_derive_seed_range(parts: list[str]) -> None:
    assert 1 <= derive_seed(*parts) <= 2147483647


def test_resolve_seed_and_request_fields() -> None:
    row = PromptRow("fox", "a red fox", None, None, None)
    assert row.resolve_seed("hero") == derive_seed("hero", "fox", "a red fox")
    assert PromptRow("fox", "a red fox", "16:9", 5, True).request_fields("hero") == {
        "prompt": "a red fox",
        "size": "16:9",
        "seed": 5,
        "nsfw_check": True,
    }


def test_fingerprints() -> None:
    a = PromptRow("k", "a fox", None, 3, None)
    assert content_fingerprint(a) == request_fingerprint("a fox", "1:1", 3, False)
    assert content_fingerprint(a) != content_fingerprint(PromptRow("k", "a fox!", None, 3, None))
    assert content_fingerprint(a) != content_fingerprint(PromptRow("k", "a fox", "16:9", 3, None))
    assert content_fingerprint(a) != content_fingerprint(PromptRow("k", "a fox", None, 4, None))
    assert content_fingerprint(a) != content_fingerprint(PromptRow("k", "a fox", None, 3, True))
    assert len(content_fingerprint(a)) == 16


def test_dataset_api() -> None:
    ds = load_prompts([{"prompt": "a", "key": "a"}, {"prompt": "b", "key": "b"}, {"prompt": ""}])
    assert len(ds) == 2
    assert list(ds) == list(ds.rows)
    assert "a" in ds
    assert ds.get("zz") is None
    assert "row 3" in ds.problem_report()
    with pytest.raises(PromptDatasetError, match="1 bad row"):
        ds.raise_if_problems()
    PromptDataset(ds.rows).raise_if_problems()


def test_examples_csv_is_valid() -> None:
    ds = load_prompts(EXAMPLES)
    assert not ds.problems, ds.problem_report()
    assert 14 <= len(ds) <= 16
    sizes = {r.size for r in ds}
    assert {"1:1", "16:9", "3:4", "9:16", "1024x768"} <= sizes
    assert any(r.seed is not None for r in ds)
    assert any(r.seed is None for r in ds)
    with EXAMPLES.open(newline="", encoding="utf-8") as fh:
        raw_keys = [row["key"] for row in csv.DictReader(fh)]
    assert any(raw_keys)
    assert not all(raw_keys)
    assert all("category" in r.extra for r in ds)


# -- hypothesis: arbitrary bad input never crashes and loses nothing ------------------------------

_weird_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=30),
    st.sampled_from(
        [
            "",
            " ",
            "\u202eevil rtl",
            "مرحبا بالعالم",
            "שלום עולם",
            "a\x00b",
            "line\nbreak",
            "\x1b[2J",
            "x" * 2001,
            "🦊 emoji fox",
            "../../etc/passwd",
        ]
    ),
)
_key = st.one_of(
    st.none(),
    st.sampled_from(
        ["fox", "fox", "Fox", "../x", "..", "/abs", "C:\\x", "a\\b", "con", "a\x00", "dup"]
    ),
    st.from_regex(r"[a-z0-9][a-z0-9_-]{0,10}", fullmatch=True),
    st.text(max_size=10),
)
_size = st.one_of(
    st.none(),
    st.sampled_from(
        ["1:1", "16:9", "5:4", "9999x1", "375x376", "1536x1536", "1024x768", "0x0", "abc"]
    ),
    st.text(max_size=8),
    st.integers(),
)
_seed = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=2**31 + 5),
    st.sampled_from(["42", "4.2", "", "-1", "0", "1e3", True]),
    st.floats(allow_nan=True),
)
_row = st.fixed_dictionaries(
    {"prompt": st.one_of(_weird_text, st.none(), st.integers())},
    optional={
        "key": _key,
        "size": _size,
        "seed": _seed,
        "nsfw_check": st.one_of(st.booleans(), st.text(max_size=5)),
        "note": _weird_text,
    },
)


def _check_accounting(ds: PromptDataset, total: int) -> None:
    bad_rows = {p.row_number for p in ds.problems}
    good_rows = {r.row_number for r in ds}
    assert not bad_rows & good_rows
    assert len(bad_rows) + len(good_rows) == total, (bad_rows, good_rows)
    assert len(set(ds.keys)) == len(ds)
    for r in ds:
        assert KEY_RE.fullmatch(r.key)
        assert check_key(r.key) is None
    for p in ds.problems:
        assert p.reason
        assert all(c.isprintable() for c in str(p)), str(p)
        assert p.value is None or len(p.value) < 120


@settings(max_examples=150, deadline=None)
@given(st.lists(_row, max_size=12))
def test_hypothesis_python_rows(rows: list[dict[str, Any]]) -> None:
    ds = load_prompts(rows)
    _check_accounting(ds, len(rows))


def _csv_cell(value: object) -> str:
    return "" if value is None else str(value)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_row, min_size=1, max_size=10))
def test_hypothesis_csv_file(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    cols = ["prompt", "key", "size", "seed", "nsfw_check", "note"]
    writer.writerow(cols)
    written = 0
    for row in rows:
        cells = [_csv_cell(row.get(c)) for c in cols]
        if all(not c.strip() for c in cells):
            continue  # blank lines are skipped, not rows
        writer.writerow(cells)
        written += 1
    src = tmp_path / "h.csv"
    src.write_bytes(buf.getvalue().encode("utf-8", "surrogatepass"))
    before = sorted(tmp_path.iterdir())
    ds = load_prompts(src)
    _check_accounting(ds, written)
    assert sorted(tmp_path.iterdir()) == before  # loading writes nothing
    numbers = [r.row_number for r in ds] + [p.row_number for p in ds.problems]
    assert all(n >= 2 for n in numbers)  # line 1 is the header


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(_row.map(json.dumps), st.text(max_size=20)), max_size=10))
def test_hypothesis_jsonl_file(tmp_path: Path, lines: list[str]) -> None:
    lines = [ln.replace("\n", " ").replace("\r", " ") for ln in lines]
    src = tmp_path / "h.jsonl"
    src.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    nonblank = sum(1 for ln in lines if ln.encode("utf-8", "surrogatepass").strip())
    records = []
    for ln in lines:
        with contextlib.suppress(ValueError):
            records.append(json.loads(ln))
    if any(isinstance(r, dict) for r in records) and not any(
        isinstance(r, dict) and "prompt" in r for r in records
    ):  # objects but none with a prompt field: the dataset has no prompt column
        with pytest.raises(PromptDatasetError, match="'prompt'"):
            load_prompts(src)
        return
    _check_accounting(load_prompts(src), nonblank)
