"""The emulator clock: wall time plus a configured offset plus explicit advances.

Task lifecycles, link expiry and callback timing are all read from this clock, so a test can jump
25 hours ahead without waiting.

>>> clock = EmulatorClock()
>>> before = clock.now()
>>> clock.advance(3600)
>>> 3599 < clock.now() - before < 3700
True
>>> clock.reset()
>>> clock.now() - before < 100
True
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class EmulatorClock:
    """Wall-clock seconds (`time.time()`) shifted by `offset_s` and accumulated advances.

    Coroutines can `await clock.wait_until(t)`; an advance or an offset change wakes them early.
    """

    def __init__(self, offset_s: float = 0.0) -> None:
        self._offset_s = offset_s
        self._advanced_s = 0.0
        self._changed: asyncio.Event | None = None

    def now(self) -> float:
        """Current emulator time, in unix seconds."""
        return time.time() + self._offset_s + self._advanced_s

    @property
    def skew_s(self) -> float:
        """How far the emulator clock is ahead of wall time."""
        return self._offset_s + self._advanced_s

    def set_offset(self, offset_s: float) -> None:
        self._offset_s = offset_s
        self._notify()

    def advance(self, seconds: float) -> None:
        """Jump the clock forward (or back, with a negative value)."""
        self._advanced_s += seconds
        self._notify()

    def reset(self, offset_s: float = 0.0) -> None:
        self._offset_s = offset_s
        self._advanced_s = 0.0
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_until(self, deadline: float) -> None:
        """Sleep until the emulator clock reads `deadline` (early wake-ups on clock changes)."""
        while True:
            remaining = deadline - self.now()
            if remaining <= 0:
                return
            if self._changed is None:
                self._changed = asyncio.Event()
            event = self._changed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=remaining)
