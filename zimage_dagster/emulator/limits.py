"""The two throttles: a request-rate token bucket and the count of non-terminal tasks.

>>> bucket = TokenBucket(rate_per_s=1.0, burst=2, now=0.0)
>>> bucket.take(0.0), bucket.take(0.0), bucket.take(0.0)
(0.0, 0.0, 1.0)
>>> active = ActiveTasks()
>>> active.add(10.0); active.add(5.0)
>>> active.count(now=6.0), active.next_end(now=6.0)
(1, 10.0)
"""

from __future__ import annotations

import heapq


class TokenBucket:
    """`take(now)` returns 0 when a request may pass, else the seconds until one may."""

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class ActiveTasks:
    """End times of tasks not yet terminal, in a heap: counting is amortised O(log n)."""

    def __init__(self) -> None:
        self._ends: list[float] = []

    def add(self, end_at: float) -> None:
        heapq.heappush(self._ends, end_at)

    def _expire(self, now: float) -> None:
        while self._ends and self._ends[0] <= now:
            heapq.heappop(self._ends)

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._ends)

    def next_end(self, now: float) -> float | None:
        """When the first active task ends (None if none is active)."""
        self._expire(now)
        return self._ends[0] if self._ends else None

    def clear(self) -> None:
        self._ends.clear()
