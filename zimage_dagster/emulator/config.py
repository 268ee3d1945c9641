"""EmulatorConfig: every knob of the emulator, as one JSON-shaped dataclass.

The same field names are used by the Python handle (`EmulatorServer.configure(**fields)`), by the
control route (`POST /_emulator/config` with a partial JSON object) and by the CLI (`--config JSON`).

>>> cfg = EmulatorConfig(latency_s=0.5)
>>> cfg.image_format, cfg.updated({"image_format": "png"}).image_format
('webp', 'png')
>>> EmulatorConfig.from_dict(cfg.to_dict()) == cfg
True
>>> EmulatorConfig().updated({"latency_s": -1})
Traceback (most recent call last):
...
zimage_dagster.emulator.config.ConfigError: latency_s: must be >= 0
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

ROUTES = ("create", "task", "credits", "files", "*")
FAULT_ACTIONS = ("status", "drop", "truncate", "slow")
IMAGE_FORMATS = ("png", "jpeg", "webp")
#: The terminal statuses a failure rule can end a task in (the provider spells "cancelled" both ways).
FAILURE_STATUSES = ("failed", "cancelled", "canceled")
#: A failure rule's regex is searched in every prompt on the event loop: keep it short and
#: free of the shapes that backtrack exponentially.
MAX_PATTERN_LENGTH = 256
#: Clock offsets and advances beyond a century are refused (they overflow dates, not tests).
MAX_CLOCK_SHIFT_S = 100 * 365 * 86400.0
DEFAULT_API_KEY = "sk-evo-emulator-local"


class ConfigError(ValueError):
    """A config field has a bad value; `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True)
class FaultRule:
    """An HTTP fault injected on a route before (or, with `after_create`, after) the real handler.

    - `route`: `create`, `task`, `credits`, `files` or `*`.
    - `action`: `status` (answer `status` with the provider's error envelope and, if set,
      `Retry-After: retry_after`), `drop` (close the connection without any answer),
      `truncate` (send a 200 head and part of a body, then close), `slow` (wait `delay_s`,
      then answer normally).
    - `probability`: chance that the rule fires on a matching request (seeded draws).
    - `count`: how many times it fires at most (`None`: no limit).
    - `after_create`: run the real handler first (so a create makes its task), then fire:
      "the answer was lost but the task exists".

    >>> FaultRule.from_dict({"route": "create", "action": "status", "status": 503, "retry_after": 2})
    FaultRule(route='create', action='status', status=503, retry_after=2.0, code=None, message=None, delay_s=0.0, probability=1.0, count=None, after_create=False)
    """

    route: str = "*"
    action: str = "status"
    status: int = 503
    retry_after: float | None = None
    code: str | None = None
    message: str | None = None
    delay_s: float = 0.0
    probability: float = 1.0
    count: int | None = None
    after_create: bool = False

    @classmethod
    def from_dict(cls, data: Any, param: str = "http_faults") -> FaultRule:
        return cls(**_check_fields(cls, data, _FAULT_CHECKS, param))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FailureRule:
    """A task whose prompt matches `pattern` (a regex, searched) fails with `code`, ending in
    `status` (`failed`, or `cancelled` / `canceled` as the provider reports a cancelled task).

    Patterns are bounded: at most `MAX_PATTERN_LENGTH` characters, no backreferences, and no
    repeat around something that itself repeats or branches (`(a+)+`, `(a|aa)*`: the shapes
    that make a regex engine backtrack for ever).

    >>> FailureRule.from_dict({"pattern": "(?i)broken", "code": "service_error"}).code
    'service_error'
    >>> FailureRule.from_dict({"pattern": "(a+)+$", "code": "service_error"})
    Traceback (most recent call last):
    ...
    zimage_dagster.emulator.config.ConfigError: failure_rules.pattern: regex too costly: a repeat inside a repeat
    """

    pattern: str
    code: str
    message: str | None = None
    status: str = "failed"

    @classmethod
    def from_dict(cls, data: Any, param: str = "failure_rules") -> FailureRule:
        return cls(**_check_fields(cls, data, _FAILURE_RULE_CHECKS, param))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EmulatorConfig:
    """The emulator's settings. Defaults follow the provider's documents where they say something.

    `load_mode` (off by default) serves each result from a small pool of stock images per size
    (:func:`~zimage_dagster.emulator.render.pooled_key`): for load tests only.

    Latency: a task takes `latency_s` seconds, or a seeded random draw in `latency_range_s`
    (`[min, max]`) when that is set; it is `pending` for the first `pending_share` of it, then
    `processing` with progress rising to 100.

    >>> EmulatorConfig().result_ttl_s
    86400.0
    >>> EmulatorConfig.for_tests().latency_s
    0.2
    """

    # auth
    api_keys: list[str] | None = None  # None: any "sk-..." token is accepted
    # lifecycle
    latency_s: float = 1.0
    latency_range_s: tuple[float, float] | None = None
    pending_share: float = 0.15
    random_seed: int = 0
    estimated_time: int = 10
    can_cancel: bool = False
    # task failures
    failure_rates: dict[str, float] = field(default_factory=dict)
    failure_rules: list[FailureRule] = field(default_factory=list)
    moderation_words: list[str] = field(default_factory=lambda: ["forbidden", "gore", "massacre"])
    nsfw_words: list[str] = field(default_factory=lambda: ["nsfw", "nude", "naked", "explicit"])
    # HTTP faults and limits
    http_faults: list[FaultRule] = field(default_factory=list)
    concurrency_cap: int | None = None
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None  # None: ceil(rate_limit_per_s)
    legacy_credits_errors: bool = True  # /v1/credits errors carry the HTTP status as `code`
    # billing
    credits_reserved: float = 0.026
    initial_credits: float = 100.0
    unlimited_credits: bool = False
    # results
    result_ttl_s: float = 86400.0
    image_format: str = "webp"
    # The origin result links point at (the file host), e.g. "https://localhost:8443". The
    # servers set it to their file origin; None: "http://localhost" (in-process apps only).
    public_files_url: str | None = None
    render_on_create: bool = True
    # Load mode, a load-test aid: every result is one of a few stock images per size and format
    # (rendered once, still real images of the requested size behind the same expiring links),
    # so that the emulator's renders do not bound a benchmark of many thousand tasks. Off: each
    # task's image is rendered from its own prompt and seed, as the real service would.
    load_mode: bool = False
    # clock
    clock_offset_s: float = 0.0
    # callbacks
    callback_timeout_s: float = 10.0
    callback_retry_delays_s: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    allow_loopback_callbacks: bool = False
    deliver_external_callbacks: bool = False

    @classmethod
    def for_tests(cls, **overrides: Any) -> EmulatorConfig:
        """Short latency, estimate and callback retries, for test suites (documented rules
        otherwise). The estimate keeps the provider's proportion (about 10 s announced for
        6-10 s tasks), so a client's first poll comes after ~0.6 s instead of ~6 s."""
        base = cls(
            latency_s=0.2,
            estimated_time=1,
            callback_retry_delays_s=[0.05, 0.1, 0.2],
            callback_timeout_s=2.0,
        )
        return base.updated(overrides)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmulatorConfig:
        return cls().updated(data)

    def updated(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with `changes` (JSON-shaped values) checked and applied; raises ConfigError."""
        if not isinstance(changes, Mapping):
            raise ConfigError("config", "must be a JSON object")
        checked = _check_fields(EmulatorConfig, changes, _CONFIG_CHECKS, None, partial=True)
        new = dataclasses.replace(self, **checked)
        if new.latency_range_s is not None and new.latency_range_s[0] > new.latency_range_s[1]:
            raise ConfigError("latency_range_s", "min must be <= max")
        return new

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped copy (tuples become lists)."""
        out = dataclasses.asdict(self)
        if self.latency_range_s is not None:
            out["latency_range_s"] = list(self.latency_range_s)
        return out

    @property
    def primary_api_key(self) -> str:
        """A key this configuration accepts."""
        return self.api_keys[0] if self.api_keys else DEFAULT_API_KEY

    def accepts_key(self, token: str) -> bool:
        """Whether a Bearer token is valid under this configuration.

        >>> EmulatorConfig().accepts_key("sk-anything"), EmulatorConfig().accepts_key("nope")
        (True, False)
        """
        if self.api_keys is None:
            return token.startswith("sk-") and len(token) > 3
        return token in self.api_keys


# ---------------------------------------------------------------------------------------------
# field checks: each takes the JSON value and the field's name, returns the typed value

Check = Callable[[Any, str], Any]


def _number(lo: float | None = None, hi: float | None = None) -> Check:
    def check(value: Any, name: str) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ConfigError(name, "must be a finite number")
        if lo is not None and value < lo:
            raise ConfigError(name, f"must be >= {lo:g}")
        if hi is not None and value > hi:
            raise ConfigError(name, f"must be <= {hi:g}")
        return float(value)

    return check


def _integer(lo: int | None = None, hi: int | None = None) -> Check:
    def check(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, "must be an integer")
        if lo is not None and value < lo:
            raise ConfigError(name, f"must be >= {lo}")
        if hi is not None and value > hi:
            raise ConfigError(name, f"must be <= {hi}")
        return value

    return check


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, "must be a boolean")
    return value


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(name, "must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(name, f"has a lone surrogate at index {exc.start}") from None
    return value


def _url(value: Any, name: str) -> str:
    text = _string(value, name)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigError(name, "must be an http(s) origin such as https://localhost:8443")
    return text.rstrip("/")


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(value: Any, name: str) -> str:
        if value not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}")
        return str(value)

    return check


def _optional(inner: Check) -> Check:
    def check(value: Any, name: str) -> Any:
        return None if value is None else inner(value, name)

    return check


def _list_of(inner: Check) -> Check:
    def check(value: Any, name: str) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, "must be a list")
        return [inner(item, f"{name}[{i}]") for i, item in enumerate(value)]

    return check


def _regex(value: Any, name: str) -> str:
    text = _string(value, name)
    if len(text) > MAX_PATTERN_LENGTH:
        raise ConfigError(name, f"regex longer than {MAX_PATTERN_LENGTH} characters")
    try:
        parsed = _sre_parse(text)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ConfigError(name, f"bad regex: {exc}") from None
    problem = _costly(parsed, inside_repeat=False)
    if problem:
        raise ConfigError(name, f"regex too costly: {problem}")
    return text


# The stdlib's own regex parser (Python 3.11+; `sre_parse` before), to look at a pattern's shape.
_sre_parser: Any = importlib.import_module("re._parser")
sre_constants: Any = importlib.import_module("re._constants")
_REPEATS = {sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT}


def _sre_parse(text: str) -> Any:
    return _sre_parser.parse(text)


def _costly(items: Any, *, inside_repeat: bool) -> str | None:
    """Why a parsed pattern can backtrack exponentially, or None: a backreference, or a repeat
    (of more than one item) around another repeat or around a branch."""
    for op, arg in items:
        if op in (sre_constants.GROUPREF, sre_constants.GROUPREF_EXISTS):
            return "backreferences are not allowed"
        if op in _REPEATS:
            _low, high, sub = arg
            repeats = high is sre_constants.MAXREPEAT or high > 1
            if repeats and inside_repeat:
                return "a repeat inside a repeat"
            found = _costly(sub, inside_repeat=inside_repeat or repeats)
        elif op is sre_constants.BRANCH:
            if inside_repeat:
                return "a branch inside a repeat"
            found = next((p for p in (_costly(b, inside_repeat=False) for b in arg[1]) if p), None)
        elif op is sre_constants.SUBPATTERN:
            found = _costly(arg[-1], inside_repeat=inside_repeat)
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            found = _costly(arg[1], inside_repeat=inside_repeat)
        elif op is sre_constants.ATOMIC_GROUP:
            found = _costly(arg, inside_repeat=inside_repeat)
        else:
            found = None
        if found:
            return found
    return None


def _latency_range(value: Any, name: str) -> tuple[float, float]:
    items = _list_of(_number(0.0))(value, name)
    if len(items) != 2:
        raise ConfigError(name, "must be [min, max]")
    return (items[0], items[1])


def _rates(value: Any, name: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ConfigError(name, "must be an object of task error code -> probability")
    rates = {str(k): _number(0.0, 1.0)(v, f"{name}.{k}") for k, v in value.items()}
    if sum(rates.values()) > 1.0 + 1e-9:
        raise ConfigError(name, "probabilities must add up to at most 1")
    return rates


def _rules(cls: Any) -> Check:
    def check(value: Any, name: str) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, "must be a list")
        return [
            item if isinstance(item, cls) else cls.from_dict(item, f"{name}[{i}]")
            for i, item in enumerate(value)
        ]

    return check


def _check_fields(
    cls: Any,
    data: Any,
    checks: Mapping[str, Check],
    param: str | None,
    *,
    partial: bool = False,
) -> dict[str, Any]:
    prefix = f"{param}." if param else ""
    if not isinstance(data, Mapping):
        raise ConfigError(param or "config", "must be a JSON object")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in checks:
            raise ConfigError(f"{prefix}{key}", f"unknown field of {cls.__name__}")
        out[key] = checks[key](value, f"{prefix}{key}")
    if not partial:
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        for name in required:
            if name not in out:
                raise ConfigError(f"{prefix}{name}", "is required")
    return out


_FAULT_CHECKS: dict[str, Check] = {
    "route": _one_of(ROUTES),
    "action": _one_of(FAULT_ACTIONS),
    "status": _integer(400, 599),
    "retry_after": _optional(_number(0.0)),
    "code": _optional(_string),
    "message": _optional(_string),
    "delay_s": _number(0.0, 600.0),
    "probability": _number(0.0, 1.0),
    "count": _optional(_integer(0)),
    "after_create": _boolean,
}

_FAILURE_RULE_CHECKS: dict[str, Check] = {
    "pattern": _regex,
    "code": _string,
    "message": _optional(_string),
    "status": _one_of(FAILURE_STATUSES),
}

_CONFIG_CHECKS: dict[str, Check] = {
    "api_keys": _optional(_list_of(_string)),
    "latency_s": _number(0.0),
    "latency_range_s": _optional(_latency_range),
    "pending_share": _number(0.0, 1.0),
    "random_seed": _integer(),
    "estimated_time": _integer(0),
    "can_cancel": _boolean,
    "failure_rates": _rates,
    "failure_rules": _rules(FailureRule),
    "moderation_words": _list_of(_string),
    "nsfw_words": _list_of(_string),
    "http_faults": _rules(FaultRule),
    "concurrency_cap": _optional(_integer(1)),
    "rate_limit_per_s": _optional(_number(1e-6)),
    "rate_limit_burst": _optional(_integer(1)),
    "legacy_credits_errors": _boolean,
    "credits_reserved": _number(0.0),
    "initial_credits": _number(0.0),
    "unlimited_credits": _boolean,
    "result_ttl_s": _number(0.0),
    "image_format": _one_of(IMAGE_FORMATS),
    "public_files_url": _optional(_url),
    "render_on_create": _boolean,
    "load_mode": _boolean,
    "clock_offset_s": _number(-MAX_CLOCK_SHIFT_S, MAX_CLOCK_SHIFT_S),
    "callback_timeout_s": _number(0.001),
    "callback_retry_delays_s": _list_of(_number(0.0)),
    "allow_loopback_callbacks": _boolean,
    "deliver_external_callbacks": _boolean,
}
assert set(_CONFIG_CHECKS) == {f.name for f in dataclasses.fields(EmulatorConfig)}
