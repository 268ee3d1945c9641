"""Prompt datasets: CSV, JSON Lines, JSON, Parquet or Python lists -> validated rows with stable keys.

Columns: ``prompt`` (required), ``key`` (optional partition key), ``size``, ``seed``, ``nsfw_check``;
any other column is carried in ``PromptRow.extra`` (and later into metadata). Known column names are
matched case-insensitively, ignoring surrounding spaces (``Prompt`` works).

Every row is checked with the client's own rules (``zimage_dagster.api`` validators). A bad row is
reported as a :class:`RowProblem` (row number, field, value, reason) and left out; the good rows go
on. Only dataset-level faults raise :class:`PromptDatasetError`: no ``prompt`` column, undecodable
CSV/JSON, a JSON document that is not a list, an unknown format.

Row numbers count what is most useful to find the row:

* CSV/TSV and JSON Lines: the 1-based **line number in the file** where the record starts (the CSV
  header is line 1, so the first data row is line 2);
* JSON arrays, Parquet and Python lists: the 1-based **position of the record**.

Keys (partition keys and file names) follow :data:`KEY_PATTERN`: ``^[a-z0-9][a-z0-9_-]{0,79}$``,
and not a Windows device name (``con``, ``nul``, ``com1``...). Lowercase only, so two keys never
collide on a case-insensitive filesystem (macOS, Windows); no dot, slash, backslash, colon, space,
``|``, ``,``, ``[``, ``]`` or control character, so a key is safe as a file name on every filesystem
and object store and as a Dagster partition key (Dagster refuses ``...`` and control characters,
and ``| , [ ]`` in multi-partition dimensions). A user key breaking the rule is a bad row: it is
never rewritten. A missing key is derived from the prompt (:func:`derive_key`): a slug and 12 hex
of the prompt's sha256, stable across runs and machines. Duplicate keys: the first row wins, later
ones are bad rows (two rows with the same prompt and no key collide: give them keys).

CSV cells are strings: ``seed`` must be a plain integer string (``42``; not ``42.0``, ``+42``,
``1_000`` or ``4e1``), ``nsfw_check`` one of true/false/1/0/yes/no (any case); an empty or
whitespace-only cell in an optional column means absent. ``NaN`` is a bad value, never "absent".

One bad cell never takes the dataset down: a huge number, a value nested deeper than
:data:`MAX_NESTING` levels, a JSON record too deep for the parser, a line longer than
:data:`MAX_LINE_BYTES` (CSV, JSON Lines: reported and skipped unread) are each a bad row. Loading
a CSV or JSON Lines file holds the file's bytes plus the record being read, so its peak memory is
a small multiple of the file's size (``tests/dagster/test_prompt_robustness.py`` measures it).

Example:
    >>> ds = load_prompts([
    ...     {"prompt": "a red fox in snow", "seed": 7, "category": "animals"},
    ...     {"prompt": "a poster", "key": "Bad Key!"},
    ... ])
    >>> ds.keys
    ['a-red-fox-in-snow-049e0c0b66d6']
    >>> print(ds.problems[0])
    row 2, field 'key', value 'Bad Key!': must match ^[a-z0-9][a-z0-9_-]{0,79}$ (lowercase letters, digits, '-' and '_'; 1 to 80 characters)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import threading
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from upath import UPath

from zimage_dagster.api import (
    MAX_SEED,
    MIN_SEED,
    RequestValidationError,
    validate_prompt,
    validate_seed,
    validate_size,
)
from zimage_dagster.engine.request import (
    DEFAULT_SIZE,
    choose_seed,
    derive_seed,
    random_seed,
    request_fingerprint,
)

__all__ = [
    "DEFAULT_SIZE",
    "KEY_PATTERN",
    "MAX_LINE_BYTES",
    "MAX_NESTING",
    "PromptDataset",
    "PromptDatasetError",
    "PromptRow",
    "RowProblem",
    "check_key",
    "content_fingerprint",
    "derive_key",
    "derive_seed",
    "load_prompts",
    "random_seed",
    "request_fingerprint",
]

#: The rule every partition key follows (plus: not a Windows device name).
KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,79}$"
_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")
_RESERVED_KEYS = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
)
_KEY_RULE = f"must match {KEY_PATTERN} (lowercase letters, digits, '-' and '_'; 1 to 80 characters)"

KNOWN_COLUMNS: tuple[str, ...] = ("prompt", "key", "size", "seed", "nsfw_check")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_INT_STRING = re.compile(r"-?[0-9]+")
_SHOW_CHARS = 80
#: A longer CSV or JSON Lines line is a bad row, skipped without being decoded or parsed.
MAX_LINE_BYTES = 1024 * 1024
#: Deepest nesting of lists/objects accepted in an extra column (they go into metadata).
MAX_NESTING = 20
# A seed has at most 10 digits (2147483647): longer digit strings are refused before int(),
# which refuses more than 4300 digits with a bare ValueError.
_MAX_SEED_DIGITS = len(str(MAX_SEED))

Source = str | os.PathLike[str] | UPath | Sequence[Mapping[str, Any] | str]
_Kind = Literal["text", "json", "parquet", "python"]


class PromptDatasetError(ValueError):
    """The dataset as a whole cannot be read (no ``prompt`` column, undecodable file...)."""


def _show(value: object) -> str:
    """A short, printable rendering of a bad value: truncated to 80 characters, and every character
    that is not printable (control, bidi and zero-width format characters, line separators, unusual
    spaces, unassigned code points, lone surrogates) and the backslash escaped."""
    text = value if isinstance(value, str) else repr(value)
    out = []
    for ch in text[:_SHOW_CHARS]:
        if not (ch.isprintable() or ch == " ") or ch == "\\":
            code = ord(ch)
            if ch == "\\":
                out.append("\\\\")
            elif code <= 0xFF:
                out.append(f"\\x{code:02x}")
            else:
                out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    shown = "".join(out)
    if len(text) > _SHOW_CHARS:
        shown += f"... ({len(text)} characters)"
    return shown


@dataclass(frozen=True)
class RowProblem:
    """One bad row (or one bad field of a row): reported, and the row left out.

    ``value`` is already made printable (truncated, control characters escaped); ``None`` when
    the field was absent.

    >>> print(RowProblem(7, "size", "9999x1", "width 9999 is outside 376..1536"))
    row 7, field 'size', value '9999x1': width 9999 is outside 376..1536
    """

    row_number: int
    field: str
    value: str | None
    reason: str

    def __str__(self) -> str:
        shown = "" if self.value is None else f", value '{self.value}'"
        return f"row {self.row_number}, field '{self.field}'{shown}: {self.reason}"


@dataclass(frozen=True)
class PromptRow:
    """One valid prompt: ``size``/``seed``/``nsfw_check`` are ``None`` when the dataset left them out.

    >>> row = PromptRow("fox", "a red fox", None, None, None, {}, 2)
    >>> row.request_fields("hero")["size"], 1 <= row.resolve_seed("hero") <= 2147483647
    ('1:1', True)
    """

    key: str
    prompt: str
    size: str | None
    seed: int | None
    nsfw_check: bool | None
    extra: Mapping[str, Any] = field(default_factory=dict)
    row_number: int = 0

    def resolve_seed(self, asset_key: str) -> int:
        """The seed sent for this row as its own partition (the rule is ``choose_seed``'s)."""
        return choose_seed(
            asset_key, self.key, row_key=self.key, prompt=self.prompt, row_seed=self.seed
        )

    def request_fields(self, asset_key: str) -> dict[str, Any]:
        """``prompt``, ``size``, ``seed``, ``nsfw_check`` as sent: defaults filled, seed resolved."""
        return {
            "prompt": self.prompt,
            "size": self.size or DEFAULT_SIZE,
            "seed": self.resolve_seed(asset_key),
            "nsfw_check": bool(self.nsfw_check),
        }


@dataclass(frozen=True)
class PromptDataset:
    """The valid rows of a dataset, in order, plus the problems found.

    ``numbering`` says what ``row_number`` counts: ``"line"`` (CSV, JSON Lines) or ``"record"``.

    >>> ds = load_prompts(["a lighthouse at dusk", "a lighthouse at dusk"])
    >>> len(ds), len(ds.problems), ds.get(ds.keys[0]).prompt
    (1, 1, 'a lighthouse at dusk')
    """

    rows: tuple[PromptRow, ...]
    problems: tuple[RowProblem, ...] = ()
    source: str = "<python>"
    numbering: Literal["line", "record"] = "record"
    _index: dict[str, PromptRow] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {r.key: r for r in self.rows})

    @property
    def keys(self) -> list[str]:
        """Partition keys, in dataset order."""
        return [r.key for r in self.rows]

    def get(self, key: str) -> PromptRow | None:
        """The row with this key, or ``None``."""
        return self._index.get(key)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PromptRow]:
        return iter(self.rows)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def problem_report(self, limit: int = 50) -> str:
        """The problems, one a line (at most ``limit``), for logs and error messages."""
        lines = [str(p) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more")
        return "\n".join(lines)

    def left_out_summary(self, asset: str) -> str | None:
        """One line saying how many rows were left out, for the log on load (``None``: none).

        >>> print(load_prompts(["a fox", {"prompt": ""}]).left_out_summary("hero"))
        hero: 1 of 2 rows of <python> left out; see the asset's dataset_problem_report metadata
        """
        if not self.problems:
            return None
        bad = len({p.row_number for p in self.problems})
        return (
            f"{asset}: {bad} of {bad + len(self.rows)} rows of {self.source} left out; "
            "see the asset's dataset_problem_report metadata"
        )

    def raise_if_problems(self) -> None:
        """Raise :class:`PromptDatasetError` listing the problems, if any."""
        if self.problems:
            raise PromptDatasetError(
                f"{len(self.problems)} bad row(s) in {self.source}:\n{self.problem_report()}"
            )


# -- keys, seeds, fingerprints ------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def check_key(key: str) -> str | None:
    """``None`` if ``key`` is a valid partition key, else the reason.

    >>> check_key("hero-01"), check_key("con")
    (None, "'con' is a reserved device name on Windows")
    """
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        return _KEY_RULE
    if key in _RESERVED_KEYS:
        return f"{key!r} is a reserved device name on Windows"
    return None


def derive_key(prompt: str) -> str:
    """A stable key for a prompt: up to 40 characters of slug, ``-``, 12 hex of its sha256.

    >>> derive_key("A red fox, in the snow!")
    'a-red-fox-in-the-snow-850d29527006'
    >>> derive_key("東京の夜景")[:7]
    'prompt-'
    """
    ascii_ = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_.lower()).strip("-")
    if len(slug) > 40:
        cut = slug[:40]
        slug = (cut.rsplit("-", 1)[0] if "-" in cut else cut).strip("-")
    digest = hashlib.sha256(_utf8(prompt)).hexdigest()[:12]
    return f"{slug or 'prompt'}-{digest}"


def content_fingerprint(row: PromptRow) -> str:
    """Fingerprint of a row's prompt, size, seed and nsfw_check: changes when the row changes.

    A row without a seed fingerprints ``seed: null`` (its derived seed follows from the prompt).
    The ledger fingerprints the request as sent (resolved seed): compare like with like, e.g.
    ``request_fingerprint(**row.request_fields(asset))`` against ``LedgerEntry.fingerprint``.

    >>> r = PromptRow("k", "a fox", None, None, None)
    >>> content_fingerprint(r) == request_fingerprint("a fox")
    True
    """
    return request_fingerprint(row.prompt, row.size, row.seed, row.nsfw_check)


# -- field parsing ------------------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field, self.value, self.reason = field, value, reason


def _blank(value: object) -> bool:
    """Absent: ``None`` or a blank string. (``NaN`` is a value, and a bad one, never "absent".)"""
    if value is None:
        return True
    return isinstance(value, str) and not value.strip()


def _parse_prompt(value: object) -> str:
    if value is None:
        raise _Bad("prompt", None, "is missing")
    try:
        prompt = validate_prompt(value)
    except RequestValidationError as exc:
        raise _Bad("prompt", value, exc.reason) from None
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad("prompt", value, "contains an unpaired surrogate (not valid Unicode)") from None
    return prompt


def _parse_key(value: object, kind: _Kind) -> str | None:
    if _blank(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and kind != "text":
        value = str(value)
    if not isinstance(value, str):
        raise _Bad("key", value, f"must be a string, not {type(value).__name__}")
    reason = check_key(value)
    if reason is not None:
        raise _Bad("key", value, reason)
    return value


def _parse_size(value: object) -> str | None:
    if _blank(value):
        return None
    try:
        return validate_size(value)
    except RequestValidationError as exc:
        raise _Bad("size", value, exc.reason) from None


def _parse_seed(value: object, kind: _Kind) -> int | None:
    if _blank(value):
        return None
    parsed: object = value
    if isinstance(value, str):
        if not _INT_STRING.fullmatch(value):
            raise _Bad("seed", value, "must be a plain integer (digits only)")
        if len(value.lstrip("-").lstrip("0")) > _MAX_SEED_DIGITS:
            raise _Bad("seed", value, f"must be between {MIN_SEED} and {MAX_SEED}")
        parsed = int(value)
    elif isinstance(value, float) and math.isnan(value):
        raise _Bad("seed", value, "is NaN, not an integer")
    elif (
        kind == "parquet"
        and isinstance(value, float)
        and math.isfinite(value)
        and value.is_integer()
    ):
        parsed = int(value)
    try:
        return validate_seed(parsed)
    except RequestValidationError as exc:
        raise _Bad("seed", value, exc.reason) from None


def _parse_nsfw(value: object, kind: _Kind) -> bool | None:
    if _blank(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and kind != "text" and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise _Bad("nsfw_check", value, "must be one of true/false/1/0/yes/no")


class _TooDeep(Exception):
    pass


def _json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-safe data for metadata; :class:`_TooDeep` past :data:`MAX_NESTING`."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (Mapping, list, tuple)) and depth >= MAX_NESTING:
        raise _TooDeep
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in value]
    return str(value)


# -- building rows ------------------------------------------------------------------------------


class _Builder:
    def __init__(self, source: str, numbering: Literal["line", "record"]) -> None:
        self.source = source
        self.numbering = numbering
        self.rows: list[PromptRow] = []
        self.problems: list[RowProblem] = []
        self.first_row_of_key: dict[str, int] = {}

    def bad(self, row_number: int, field_: str, value: object, reason: str) -> None:
        shown = None if value is None else _show(value)
        self.problems.append(RowProblem(row_number, field_, shown, reason))

    def add(self, record: Mapping[str, Any], row_number: int, kind: _Kind) -> None:
        """Validate one record whose known columns are already lower-case named."""
        values: dict[str, Any] = {}
        errors: list[_Bad] = []
        parsers = {
            "prompt": _parse_prompt,
            "key": lambda v: _parse_key(v, kind),
            "size": _parse_size,
            "seed": lambda v: _parse_seed(v, kind),
            "nsfw_check": lambda v: _parse_nsfw(v, kind),
        }
        for name, parse in parsers.items():
            try:
                values[name] = parse(record.get(name))
            except _Bad as exc:
                errors.append(exc)
        if errors:
            for e in errors:
                self.bad(row_number, e.field, e.value, e.reason)
            return
        prompt: str = values["prompt"]
        key = values["key"] or derive_key(prompt)
        first = self.first_row_of_key.get(key)
        if first is not None:
            what = "key" if values["key"] else "prompt (its derived key)"
            self.bad(
                row_number,
                "key",
                key,
                f"duplicate {what}: row {first} already uses it (the first row wins)",
            )
            return
        extra = {}
        for k, v in record.items():
            if k in KNOWN_COLUMNS or (kind == "text" and v == ""):
                continue
            try:
                extra[k] = _json_safe(v)
            except _TooDeep:
                reason = f"nested more than {MAX_NESTING} levels deep"
                self.bad(row_number, k, "[...]", reason)
                return
        self.first_row_of_key[key] = row_number
        self.rows.append(
            PromptRow(
                key=key,
                prompt=prompt,
                size=values["size"],
                seed=values["seed"],
                nsfw_check=values["nsfw_check"],
                extra=extra,
                row_number=row_number,
            )
        )

    def dataset(self) -> PromptDataset:
        problems = tuple(sorted(self.problems, key=lambda p: p.row_number))
        return PromptDataset(tuple(self.rows), problems, self.source, self.numbering)


def _normalise_columns(names: Sequence[object], source: str) -> list[str]:
    """Known columns lower-cased; others kept; blanks named ``column_<n>``; duplicates refused."""
    out: list[str] = []
    for i, raw in enumerate(names, start=1):
        name = str(raw) if raw is not None else ""
        low = name.strip().lower()
        if low in KNOWN_COLUMNS:
            name = low
        elif not name.strip():
            name = f"column_{i}"
        if name in out:
            raise PromptDatasetError(f"{source}: column {name!r} appears more than once")
        out.append(name)
    return out


def _record(raw: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        name = str(k)
        low = name.strip().lower()
        out[low if low in KNOWN_COLUMNS else name] = v
    return out


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


def _raw_lines(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(line number, start, end) of each line of ``data``, the end past its newline; no copies."""
    start, number, size = 0, 1, len(data)
    while start < size:
        newline = data.find(b"\n", start)
        end = size if newline < 0 else newline + 1
        yield number, start, end
        start, number = end, number + 1


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
