"""Reading prompt datasets: CSV, TSV, JSON Lines, JSON, Parquet files (any fsspec URL) and Python
lists, into a :class:`~zimage_dagster.dataset.rows.PromptDataset`.

Only dataset-level faults raise :class:`~zimage_dagster.dataset.rows.PromptDatasetError`: no
``prompt`` column, undecodable CSV/JSON, a JSON document that is not a list, an unknown format.
A line longer than :data:`MAX_LINE_BYTES` (CSV, JSON Lines) is a bad row, reported and skipped
unread; a JSON record too deep for the parser is a bad row.

>>> print(load_prompts(["a fox", "a fox"]).problem_report())
row 2, field 'key', value 'a-fox-5ebbe2a2650a': duplicate prompt (its derived key): row 1 already uses it (the first row wins)
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from upath import UPath

from zimage_dagster.dataset.rows import PromptDataset, PromptDatasetError
from zimage_dagster.dataset.validate import _Builder, _Kind, _normalise_columns, _record

__all__ = ["FORMATS", "MAX_LINE_BYTES", "Source", "load_prompts"]

#: A longer CSV or JSON Lines line is a bad row, skipped without being decoded or parsed.
MAX_LINE_BYTES = 1024 * 1024

Source = str | os.PathLike[str] | UPath | Sequence[Mapping[str, Any] | str]


def _decode_error(
    data: bytes, offset: int, source: str, encoding: str, exc: UnicodeDecodeError
) -> PromptDatasetError:
    line = data.count(b"\n", 0, offset + exc.start) + 1
    return PromptDatasetError(
        f"{source}: bytes at line {line} (offset {offset + exc.start}) are not valid {encoding}: "
        f"{exc.reason}; save the file as UTF-8"
    )


def _decode(data: bytes, source: str, encoding: str) -> str:
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _decode_error(data, 0, source, encoding, exc) from None
    return text.removeprefix("\ufeff")


#: A line ends with ``\n`` (Unix), ``\r\n`` (Windows) or a lone ``\r`` (classic Mac OS, and
#: what some spreadsheet exports still write).
_LINE_END = re.compile(rb"\r\n?|\n")


def _raw_lines(data: bytes) -> Iterator[tuple[int, int, int]]:
    r"""(line number, start, end) of each line of ``data``, the end past its line end (``\n``,
    ``\r\n`` or ``\r``); no copies.

    >>> [data[s:e] for data in [b"a\rb\r\nc\nd"] for _, s, e in _raw_lines(data)]
    [b'a\r', b'b\r\n', b'c\n', b'd']
    """
    start, number = 0, 1
    for match in _LINE_END.finditer(data):
        yield number, start, match.end()
        start, number = match.end(), number + 1
    if start < len(data):
        yield number, start, len(data)


class _CsvLines:
    """The decoded lines of a CSV file for ``csv.reader``, one at a time (memory: the file's
    bytes plus one line). A line longer than :data:`MAX_LINE_BYTES` is reported to ``builder``
    and skipped unread. ``numbers`` records the file line number of every line handed out."""

    def __init__(
        self, data: bytes, source: str, encoding: str, builder: _Builder | None = None
    ) -> None:
        self.data, self.source, self.encoding, self.builder = data, source, encoding, builder
        self.numbers: list[int] = []

    def __iter__(self) -> Iterator[str]:
        for number, start, end in _raw_lines(self.data):
            if end - start > MAX_LINE_BYTES:
                if self.builder is not None:
                    self.builder.bad(
                        number,
                        "row",
                        None,
                        f"line of {end - start} bytes; a line may be at most {MAX_LINE_BYTES} "
                        "bytes (skipped unread)",
                    )
                continue
            try:
                line = self.data[start:end].decode(self.encoding)
            except UnicodeDecodeError as exc:
                raise _decode_error(self.data, start, self.source, self.encoding, exc) from None
            self.numbers.append(number)
            yield line.removeprefix("\ufeff") if number == 1 else line

    def next_line_number(self, handed_out: int) -> int:
        """The file line number of the line after the first ``handed_out`` ones."""
        if handed_out < len(self.numbers):
            return self.numbers[handed_out]
        return self.numbers[-1] + 1 if self.numbers else 1


@contextmanager
def _csv_cell_limit() -> Iterator[None]:
    """Let a cell be as long as a line may be (the csv module's default is 128 KiB, and going
    over it is an error for the whole file); the module-wide setting is restored after."""
    with _CSV_LIMIT_LOCK:
        previous = csv.field_size_limit(MAX_LINE_BYTES)
        try:
            yield
        finally:
            csv.field_size_limit(previous)


_CSV_LIMIT_LOCK = threading.Lock()


def _unclosed_quote_line(data: bytes, source: str, encoding: str, delimiter: str) -> int | None:
    """The line where a quoted field opens and never closes (it would eat the rest of the file).

    >>> _unclosed_quote_line(b'prompt\\n"open\\nfine\\n', "p.csv", "utf-8", ",")
    2
    """
    lines = _CsvLines(data, source, encoding)
    reader = csv.reader(iter(lines), delimiter=delimiter, strict=True)
    start = 1
    try:
        for _ in reader:
            start = lines.next_line_number(reader.line_num)
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            return start
    return None


def _load_csv(data: bytes, source: str, encoding: str, delimiter: str) -> PromptDataset:
    with _csv_cell_limit():
        unclosed = _unclosed_quote_line(data, source, encoding, delimiter)
        if unclosed is not None:
            raise PromptDatasetError(
                f"{source}: malformed CSV: the quoted field opened on line {unclosed} is never "
                "closed (every later row would be swallowed into it)"
            )
        builder = _Builder(source, "line")
        lines = _CsvLines(data, source, encoding, builder)
        reader = csv.reader(iter(lines), delimiter=delimiter, strict=False)
        try:
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise PromptDatasetError(
                    f"{source}: empty file; a CSV prompt dataset needs a header with a 'prompt' column"
                )
            columns = _normalise_columns(header, source)
            if "prompt" not in columns:
                raise PromptDatasetError(
                    f"{source}: no 'prompt' column in the header (found: {', '.join(columns)})"
                )
            while True:
                handed_out = reader.line_num
                cells = next(reader, None)
                if cells is None:
                    break
                start = lines.next_line_number(handed_out)
                if not cells or all(not c.strip() for c in cells):
                    continue
                if len(cells) > len(columns):
                    builder.bad(
                        start,
                        "row",
                        delimiter.join(cells),
                        f"has {len(cells)} values but the header has {len(columns)} columns",
                    )
                    continue
                builder.add(dict(zip(columns, cells, strict=False)), start, "text")
        except csv.Error as exc:
            raise PromptDatasetError(
                f"{source}: malformed CSV near line {lines.next_line_number(reader.line_num - 1)}: {exc}"
            ) from None
    return builder.dataset()


def _check_has_prompt(records: Sequence[object], source: str) -> None:
    mappings = [r for r in records if isinstance(r, Mapping)]
    if mappings and not any("prompt" in _record(r) for r in mappings):
        raise PromptDatasetError(f"{source}: no record has a 'prompt' field")


def _load_jsonl(data: bytes, source: str, encoding: str) -> PromptDataset:
    builder = _Builder(source, "line")
    parsed: list[tuple[int, object]] = []
    for number, start, end in _raw_lines(data):
        if end - start > MAX_LINE_BYTES:
            reason = f"line of {end - start} bytes; a line may be at most {MAX_LINE_BYTES} bytes (skipped unread)"
            builder.bad(number, "line", None, reason)
            continue
        raw = data[start:end]
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            builder.bad(number, "line", raw, f"not valid {encoding}: {exc.reason}")
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            builder.bad(number, "line", line, f"not valid JSON: {exc}")
            continue
        except RecursionError:
            builder.bad(number, "line", line, "nested too deeply for the JSON parser")
            continue
        parsed.append((number, obj))
    _check_has_prompt([o for _, o in parsed], source)
    for number, obj in parsed:
        if isinstance(obj, Mapping):
            builder.add(_record(obj), number, "json")
        else:
            builder.bad(number, "line", json.dumps(obj), "must be a JSON object")
    return builder.dataset()


def _load_records(
    records: Sequence[object], source: str, kind: _Kind, strings_ok: bool = False
) -> PromptDataset:
    _check_has_prompt(records, source)
    builder = _Builder(source, "record")
    for number, obj in enumerate(records, start=1):
        if isinstance(obj, Mapping):
            builder.add(_record(obj), number, kind)
        elif strings_ok and isinstance(obj, str):
            builder.add({"prompt": obj}, number, kind)
        else:
            builder.bad(number, "row", obj, "must be an object with a 'prompt' field")
    return builder.dataset()


def _load_json(data: bytes, source: str, encoding: str) -> PromptDataset:
    text = _decode(data, source, encoding)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # One record too deep (or a number too long) for the parser: read the array record by
        # record, so that only that record is bad. A broken document stays a dataset error.
        elements = _json_array_elements(text)
        if elements is None:
            reason = exc if isinstance(exc, ValueError) else "nested too deeply for the parser"
            raise PromptDatasetError(f"{source}: not valid JSON: {reason}") from None
        return _load_json_elements(elements, source)
    if not isinstance(doc, list):
        raise PromptDatasetError(
            f"{source}: a JSON prompt dataset must be a list of objects, not {type(doc).__name__}"
        )
    return _load_records(doc, source, "json")


def _json_array_elements(text: str) -> list[str] | None:
    """The source text of each element of a top-level JSON array, found without recursion
    (strings and nesting tracked), or ``None`` when ``text`` is not one well-bracketed array.

    >>> _json_array_elements(' [1, {"a": "],"}, [[2]]] ')
    ['1', '{"a": "],"}', '[[2]]']
    """
    body = text.strip()
    if not body.startswith("[") or not body.endswith("]"):
        return None
    elements: list[str] = []
    depth, in_string, escaped, start = 0, False, False, 1
    for i in range(1, len(body) - 1):
        ch = body[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth < 0:
                return None
        elif ch == "," and depth == 0:
            elements.append(body[start:i].strip())
            start = i + 1
    if depth or in_string:
        return None
    last = body[start:-1].strip()
    if last or elements:
        elements.append(last)
    return elements


def _load_json_elements(elements: list[str], source: str) -> PromptDataset:
    builder = _Builder(source, "record")
    records: list[tuple[int, object]] = []
    for number, element in enumerate(elements, start=1):
        try:
            records.append((number, json.loads(element)))
        except ValueError as exc:
            builder.bad(number, "row", element, f"not valid JSON: {exc}")
        except RecursionError:
            builder.bad(number, "row", element, "nested too deeply for the JSON parser")
    _check_has_prompt([obj for _, obj in records], source)
    for number, obj in records:
        if isinstance(obj, Mapping):
            builder.add(_record(obj), number, "json")
        else:
            builder.bad(number, "row", obj, "must be an object with a 'prompt' field")
    return builder.dataset()


def _load_parquet(data: bytes, source: str) -> PromptDataset:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PromptDatasetError(
            "reading Parquet needs pyarrow: pip install 'zimage-dagster[parquet]'"
        ) from None
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises its own error types
        raise PromptDatasetError(f"{source}: not a readable Parquet file: {exc}") from None
    columns = _normalise_columns(list(table.column_names), source)
    if "prompt" not in columns:
        raise PromptDatasetError(f"{source}: no 'prompt' column (found: {', '.join(columns)})")
    table = table.rename_columns(columns)
    return _load_records(table.to_pylist(), source, "parquet")


_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "json", "parquet")


def load_prompts(
    source: Source,
    *,
    format: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    encoding: str = "utf-8",
) -> PromptDataset:
    """Load and validate a prompt dataset.

    Args:
        source: a path (``str``, ``PathLike``, ``UPath``, any fsspec URL) to a ``.csv``, ``.tsv``,
            ``.jsonl``/``.ndjson``, ``.json`` (a list of objects) or ``.parquet`` file, or a Python
            sequence of dicts (or of plain prompt strings).
        format: override the format guessed from the suffix (one of :data:`FORMATS`).
        storage_options: fsspec options for a URL source.
        encoding: text encoding of CSV/JSON files (a UTF-8 BOM is ignored).

    Raises:
        PromptDatasetError: the dataset as a whole is unusable (no ``prompt`` column,
            undecodable CSV/JSON, unknown format, pyarrow missing for Parquet).
        FileNotFoundError: the file does not exist.

    >>> import json, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "p.jsonl"
    >>> _ = p.write_text(json.dumps({"prompt": "a fox", "seed": 3}) + "\\n{oops\\n")
    >>> ds = load_prompts(p)
    >>> len(ds), ds.problems[0].row_number, ds.problems[0].field
    (1, 2, 'line')
    """
    if isinstance(source, (str, os.PathLike, UPath)):
        path = (
            source
            if isinstance(source, UPath) and not storage_options
            else UPath(
                str(source) if isinstance(source, UPath) else os.fspath(source),
                **dict(storage_options or {}),
            )
        )
        fmt = (format or _SUFFIX_FORMATS.get(path.suffix.lower(), "")).lower()
        if fmt not in FORMATS:
            raise PromptDatasetError(
                f"{source}: cannot tell the dataset format from the suffix {path.suffix!r}; "
                f"pass format= one of {', '.join(FORMATS)}"
            )
        name = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"prompt dataset not found: {name}") from None
        if fmt in ("csv", "tsv"):
            return _load_csv(data, name, encoding, "," if fmt == "csv" else "\t")
        if fmt == "jsonl":
            return _load_jsonl(data, name, encoding)
        if fmt == "json":
            return _load_json(data, name, encoding)
        return _load_parquet(data, name)
    if isinstance(source, Sequence):
        return _load_records(list(source), "<python>", "python", strings_ok=True)
    raise TypeError(
        f"load_prompts takes a path, URL or a list of dicts, not {type(source).__name__}"
    )
