"""One record of a dataset checked at a time: each field with the client's own rules, the key,
the extra columns; a valid record becomes a :class:`~zimage_dagster.dataset.rows.PromptRow`, a bad
one a :class:`~zimage_dagster.dataset.rows.RowProblem` naming its row, field and value.

CSV cells are strings: ``seed`` must be a plain integer string (``42``; not ``42.0``, ``+42``,
``1_000`` or ``4e1``), ``nsfw_check`` one of true/false/1/0/yes/no (any case); an empty or
whitespace-only cell in an optional column means absent. ``NaN`` is a bad value, never "absent".
A value nested deeper than :data:`MAX_NESTING` levels is a bad row.

>>> builder = _Builder("<python>", "record")
>>> builder.add({"prompt": "a fox", "seed": "x"}, 1, "python")
>>> print(builder.dataset().problems[0])
row 1, field 'seed', value 'x': must be a plain integer (digits only)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from zimage_dagster.api import (
    MAX_SEED,
    MIN_SEED,
    RequestValidationError,
    validate_prompt,
    validate_seed,
    validate_size,
)
from zimage_dagster.dataset.keys import check_key, derive_key
from zimage_dagster.dataset.rows import PromptDataset, PromptDatasetError, PromptRow, RowProblem

__all__ = ["KNOWN_COLUMNS", "MAX_NESTING"]

KNOWN_COLUMNS: tuple[str, ...] = ("prompt", "key", "size", "seed", "nsfw_check")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_INT_STRING = re.compile(r"-?[0-9]+")
_SHOW_CHARS = 80
#: Deepest nesting of lists/objects accepted in an extra column (they go into metadata).
MAX_NESTING = 20
# A seed has at most 10 digits (2147483647): longer digit strings are refused before int(),
# which refuses more than 4300 digits with a bare ValueError.
_MAX_SEED_DIGITS = len(str(MAX_SEED))

_Kind = Literal["text", "json", "parquet", "python"]


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
