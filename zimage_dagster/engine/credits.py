"""Credits: what a run may spend (:class:`CreditBudget`), what it spent (:class:`Usage`), and the
shared spend counters that make a budget hold across runs and pods (:class:`SpendCounter`).

Amounts are counted in micro-credits (integers), so sums are exact: 3 tasks at 0.026 credits are
0.078 credits, not 0.07800000000000001. The counters live in the ledger's storage and change only
by compare-and-set (:mod:`zimage_dagster.engine.atomic`): two runs on two pods that both try to
spend the last credits of a daily budget cannot both succeed.

The checks themselves run at the one place tasks are created
(:class:`~zimage_dagster.engine.create.CreateGate`).

Example:
    >>> import tempfile
    >>> from upath import UPath
    >>> from zimage_dagster.engine.atomic import conditional_files
    >>> root = UPath(tempfile.mkdtemp())
    >>> day = SpendCounter(conditional_files(root), root / "spend.json", window_s=86400)
    >>> [day.try_add(to_micro(0.026), limit=to_micro(0.06)) for _ in range(3)]
    [0, 26000, None]
    >>> from_micro(day.spent())
    0.052
    >>> u = Usage(); u.created(0.026); u.created(0.026); u.failed(0.026)
    >>> u.summary()
    '2 task(s) created, 0.052 credits reserved; 1 task(s) failed (0.026 credits)'
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from upath import UPath

from zimage_dagster.engine.atomic import ConditionalFiles, PreconditionFailedError

__all__ = [
    "DAY_S",
    "DEFAULT_CREDITS_PER_TASK",
    "CreditBudget",
    "OverBudget",
    "SpendCounter",
    "Usage",
    "from_micro",
    "to_micro",
]

#: What one Z-Image-Turbo task reserves per the provider's documents (``usage.credits_reserved``
#: in the create example). Used to estimate until the provider's own answers say otherwise.
DEFAULT_CREDITS_PER_TASK = 0.026
#: The daily budget's window: the last 24 hours (rolling, not a calendar day).
DAY_S = 86400.0
_MICRO = 1_000_000
_CAS_ROUNDS = 64

#: What a run does when its estimate does not fit: ``refuse`` (create nothing, fail every
#: partition saying why) or ``fit`` (create what fits, fail the rest "budget reached").
OverBudget = Literal["refuse", "fit"]


def to_micro(credits: float) -> int:
    """Credits as integer micro-credits.

    >>> to_micro(0.026), to_micro(1)
    (26000, 1000000)
    """
    return round(float(credits) * _MICRO)


def from_micro(micro: int) -> float:
    """Micro-credits as credits (rounded to the micro-credit).

    >>> from_micro(78000)
    0.078
    """
    return round(micro / _MICRO, 6)


def _limit(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of credits >= 0, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class CreditBudget:
    """What a run may spend, and how it checks before spending.

    Args:
        max_credits_per_run: credits one asset's tasks may reserve in one Dagster run (all its
            step attempts together). ``None``: no cap.
        daily_credits: credits one asset's tasks may reserve in any 24 hours, across runs and
            pods (a counter in the ledger's storage). ``None``: no cap.
        credits_per_task: the price used to estimate; ``None``: what the provider reserved for
            the last task, else :data:`DEFAULT_CREDITS_PER_TASK`.
        over_budget: ``refuse`` (default) or ``fit`` (see :data:`OverBudget`).
        preflight: read the account's balance (``GET /v1/credits``) before creating anything and
            treat it as one more budget.

    >>> CreditBudget(max_credits_per_run=1.0).limited, CreditBudget().limited
    (True, False)
    >>> CreditBudget(max_credits_per_run=-1)
    Traceback (most recent call last):
    ...
    ValueError: max_credits_per_run must be a finite number of credits >= 0, not -1
    """

    max_credits_per_run: float | None = None
    daily_credits: float | None = None
    credits_per_task: float | None = None
    over_budget: OverBudget = "refuse"
    preflight: bool = True

    def __post_init__(self) -> None:
        for name in ("max_credits_per_run", "daily_credits", "credits_per_task"):
            object.__setattr__(self, name, _limit(name, getattr(self, name)))
        if self.over_budget not in ("refuse", "fit"):
            raise ValueError(f"over_budget must be 'refuse' or 'fit', not {self.over_budget!r}")

    @property
    def limited(self) -> bool:
        """Whether a budget of our own (not only the balance) caps the run."""
        return self.max_credits_per_run is not None or self.daily_credits is not None


@dataclass
class Usage:
    """What one batch (a step) spent: tasks it created and what the provider reserved for them,
    and the tasks that failed while it watched them (a provider may refund those; the emulator
    does)."""

    tasks_created: int = 0
    reserved_micro: int = 0
    tasks_failed: int = 0
    failed_micro: int = 0

    def created(self, credits: float | None) -> None:
        """Count a created task that reserved ``credits``."""
        self.tasks_created += 1
        self.reserved_micro += to_micro(credits or 0.0)

    def failed(self, credits: float | None) -> None:
        """Count a task that failed, which had reserved ``credits``."""
        self.tasks_failed += 1
        self.failed_micro += to_micro(credits or 0.0)

    @property
    def credits_reserved(self) -> float:
        return from_micro(self.reserved_micro)

    @property
    def credits_failed(self) -> float:
        return from_micro(self.failed_micro)

    def summary(self) -> str:
        """One line for the run log."""
        return (
            f"{self.tasks_created} task(s) created, {self.credits_reserved:g} credits reserved; "
            f"{self.tasks_failed} task(s) failed ({self.credits_failed:g} credits)"
        )


class SpendCounter:
    """Micro-credits spent under one name: in a small JSON file on the ledger's storage, changed
    only by compare-and-set; or in memory (``files`` None) for one process.

    With ``window_s`` only what was spent in the last ``window_s`` seconds counts (a rolling
    daily budget); without, everything does (a run's budget).
    """

    def __init__(
        self,
        files: ConditionalFiles | None,
        path: UPath | None,
        *,
        window_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.files = files if path is not None else None
        self.path = path
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._memory: list[list[float]] = []

    def _live(self, entries: list[list[float]], now: float) -> list[list[float]]:
        if self.window_s is None:
            return entries
        return [e for e in entries if e[0] > now - self.window_s]

    def _read(self) -> tuple[list[list[float]], str | None]:
        if self.files is None or self.path is None:
            return list(self._memory), None
        current = self.files.read(self.path)
        if current is None:
            return [], None
        try:
            entries = [[float(t), int(m)] for t, m in json.loads(current.data)["entries"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"spend counter {self.path} is unreadable: {exc}") from exc
        return entries, current.version

    def spent(self) -> int:
        """Micro-credits spent (within the window)."""
        entries, _ = self._read()
        return sum(int(m) for _, m in self._live(entries, self.clock()))

    def try_add(self, amount: int, limit: int | None) -> int | None:
        """Add ``amount`` if the spend stays within ``limit``: the spend before it, or ``None``
        (nothing added) when it would not fit."""
        return self._change(amount, limit)

    def add(self, amount: int) -> None:
        """Add ``amount`` (negative: give back a reservation that was not used)."""
        self._change(amount, None)

    def _change(self, amount: int, limit: int | None) -> int | None:
        for _ in range(_CAS_ROUNDS):
            with self._lock:
                entries, version = self._read()
                now = self.clock()
                entries = self._live(entries, now)
                before = sum(int(m) for _, m in entries)
                if limit is not None and before + amount > limit:
                    return None
                if self.window_s is None:
                    entries = [[now, before + amount]]
                else:
                    entries = [*entries, [now, amount]]
                if self.files is None or self.path is None:
                    self._memory = entries
                    return before
                data = json.dumps({"entries": entries}, separators=(",", ":")).encode()
                try:
                    if version is None:
                        self.files.create(self.path, data)
                    else:
                        self.files.replace(self.path, data, version)
                except (FileExistsError, PreconditionFailedError):
                    continue  # another writer won: read again
                return before
        raise RuntimeError(f"spend counter {self.path} kept changing ({_CAS_ROUNDS} tries)")

    def __repr__(self) -> str:
        where: Any = self.path if self.path is not None else "memory"
        return f"SpendCounter({where})"
