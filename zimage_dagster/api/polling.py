"""When ``wait`` looks at a task again: a schedule per task, and what one client has learned
about its tasks' timing, shared by all its waits.

The provider announces ``estimated_time`` 10 s whatever the task, so the announcement only
seeds the schedule: a client that has seen tasks finish places the first status request just
before the shortest of them would finish, and reads the rest off the task's own progress.

>>> model = LatencyModel()
>>> for d in (1.6, 2.0, 2.4, 2.8, 3.0):
...     model.record(duration=d, pending_share=0.15)
>>> round(model.quantile(0.1), 2), model.pending_share()
(1.33, 0.15)
"""

from __future__ import annotations

import statistics
import threading
from collections import deque

from zimage_dagster.api.models import Task, TaskStatus
from zimage_dagster.api.policies import PollPolicy

__all__ = ["LatencyModel", "PollSchedule"]

#: Progress comes as an integer cut down (41 means 41.0-41.99...): read it as the middle.
PROGRESS_CUT = 0.5


class LatencyModel:
    """Durations of the last ``size`` tasks this client saw complete (from the create answer to
    the estimated finish) and the share of them spent pending. Thread-safe (a sync client may be
    shared by threads)."""

    def __init__(self, size: int = 64) -> None:
        self._durations: deque[float] = deque(maxlen=size)
        self._pending_shares: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def record(self, *, duration: float | None, pending_share: float | None) -> None:
        with self._lock:
            if duration is not None and duration > 0:
                self._durations.append(duration)
            if pending_share is not None and 0.0 <= pending_share < 1.0:
                self._pending_shares.append(pending_share)

    @property
    def samples(self) -> int:
        return len(self._durations)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1, lower rank) of the durations seen, or None if none. Few
        samples overstate a low quantile, so with ``n`` samples it is scaled by ``n / (n + 1)``
        (the expected minimum of ``n`` uniform draws sits there)."""
        with self._lock:
            values = sorted(self._durations)
        if not values:
            return None
        n = len(values)
        return values[min(n - 1, max(0, int(q * (n - 1))))] * n / (n + 1)

    def median_longer_than(self, elapsed: float) -> float | None:
        """The median duration of the tasks seen that took longer than ``elapsed``."""
        with self._lock:
            longer = [d for d in self._durations if d > elapsed]
        return statistics.median(longer) if longer else None

    def pending_share(self) -> float | None:
        """The median share of a task spent pending, from tasks whose progress gave it."""
        with self._lock:
            shares = list(self._pending_shares)
        return statistics.median(shares) if shares else None


class PollSchedule:
    """Decides how long ``wait`` sleeps before the next status request (see :class:`PollPolicy`).

    Feed it every sighting of the task with :meth:`observe` (the created task included, at the
    time it was received), and ask :meth:`next_delay`; :meth:`learn` hands what the finished task
    showed to the client's :class:`LatencyModel`.
    """

    def __init__(
        self,
        policy: PollPolicy,
        estimated_time: float | None,
        origin: float | None,
        model: LatencyModel | None = None,
    ) -> None:
        self.policy = policy
        self.estimated_time = (
            estimated_time
            if estimated_time and estimated_time > 0
            else policy.default_estimated_time
        )
        self.origin = origin
        self.model = model if model is not None else LatencyModel()
        self.observations: list[tuple[float, TaskStatus | str, int]] = []
        self.last_pending_at: float | None = None
        self.first_processing_at: float | None = None
        self.progress_points: list[tuple[float, int]] = []
        self.stalled = False
        self._blind_polls = 0
        self._first_done = False

    def observe(self, at: float, task: Task) -> None:
        status = task.known_status
        self.observations.append((at, task.status, task.progress))
        if status is TaskStatus.PENDING and self.first_processing_at is None:
            self.last_pending_at = at
        elif status is TaskStatus.PROCESSING:
            if self.first_processing_at is None:
                self.first_processing_at = at
            last = self.progress_points[-1][1] if self.progress_points else None
            # Progress that did not move since the last reading makes any ETA a guess, unless
            # so little time passed that, at the rate seen, it could not move a whole point.
            rate = self._rate()
            moved_little = rate is not None and (at - self.progress_points[-1][0]) * rate < 2.0
            self.stalled = last is not None and task.progress <= last and not moved_little
            if task.progress > 0 and (last is None or task.progress > last):
                self.progress_points.append((at, task.progress))

    # -- estimates ---------------------------------------------------------------------------

    def _rate(self) -> float | None:
        pts = self.progress_points
        if len(pts) >= 2 and pts[-1][1] > pts[0][1] and pts[-1][0] > pts[0][0]:
            return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
        return None

    def _rate_since_start(self) -> float | None:
        """Points per second from the last reading and the estimated start of processing."""
        start = self.processing_start()
        if not self.progress_points or start is None:
            return None
        t_last, p_last = self.progress_points[-1]
        return (p_last + PROGRESS_CUT) / (t_last - start) if t_last > start else None

    def processing_start(self) -> float | None:
        """When processing began (client clock), from what was seen; None if unknown.

        Two progress readings give it exactly (progress is read as linear in time); one reading
        gives it with the pending share learned from earlier tasks; else the middle of the last
        ``pending`` and first ``processing`` sightings.
        """
        pts = self.progress_points
        rate = self._rate()
        if rate is not None:
            start = pts[0][0] - (pts[0][1] + PROGRESS_CUT) / rate
            low = self.last_pending_at if self.last_pending_at is not None else self.origin
            return max(start, low) if low is not None else start
        share = self.model.pending_share()
        if pts and share is not None and self.origin is not None:
            t1, p1 = pts[0]
            duration = (t1 - self.origin) / (share + (1.0 - share) * (p1 + PROGRESS_CUT) / 100.0)
            return self.origin + share * duration
        if self.last_pending_at is not None and self.first_processing_at is not None:
            return (self.last_pending_at + self.first_processing_at) / 2.0
        return None

    def eta(self) -> float | None:
        """Estimated finish time (on the client clock), from progress readings; ``None`` if unknown."""
        pts = self.progress_points
        if not pts:
            return None
        t_last, p_last = pts[-1]
        if p_last >= 100:
            return t_last
        rate = self._rate() or self._rate_since_start()
        return None if rate is None else t_last + (100 - p_last - PROGRESS_CUT) / rate

    # -- the schedule ------------------------------------------------------------------------

    def _first_delay(self, now: float) -> float:
        p = self.policy
        if self.origin is None:
            return 0.0  # we do not know when the task was made: look now
        shortest = self.model.quantile(p.first_poll_quantile) if p.learn else None
        if shortest is not None:
            target = self.origin + p.first_poll_share * shortest
        else:  # nothing learned yet: the announcement seeds the first poll
            target = self.origin + p.first_wait_fraction * self.estimated_time
        return max(0.0, target - now)

    def next_delay(self, now: float) -> float:
        p = self.policy
        if not self._first_done:
            self._first_done = True
            return self._first_delay(now)
        if p.use_progress_eta and not self.stalled:
            eta = self.eta()
            if eta is not None and eta + p.eta_margin > now:
                return min(p.max_interval, max(p.min_interval, eta + p.eta_margin - now))
            rate = self._rate() or self._rate_since_start()
            if eta is not None and rate is not None:
                # The estimate passed within the last point of progress (a reading at 99 % may
                # place the finish before its own answer arrived): look once it moved.
                return min(p.max_interval, max(p.min_interval, 1.0 / rate))
            if (
                eta is None
                and len(self.progress_points) == 1
                and self.origin is not None
                and self.progress_points[0][0] >= now - p.max_interval
            ):
                # One reading and nothing to place it with: a second one soon gives the rate.
                return max(p.min_interval, p.rate_probe_share * (now - self.origin))
        blind = min(p.max_interval, p.initial_interval * (p.growth**self._blind_polls))
        self._blind_polls += 1
        typical = (
            self.model.median_longer_than(now - self.origin)
            if p.learn and self.origin is not None
            else None
        )
        if typical is not None:
            blind = min(blind, self.origin + typical + p.eta_margin - now)  # type: ignore[operator]
        return min(p.max_interval, max(p.min_interval, blind))

    def phases(self, end: float) -> tuple[float, float]:
        """``(queued_s, generating_s)``: pending time and processing time up to ``end``, split
        where processing was seen (or estimated) to begin."""
        if not self.observations:
            return 0.0, 0.0
        begin = self.origin if self.origin is not None else self.observations[0][0]
        switch = self.processing_start()
        if switch is None:
            share = self.model.pending_share()
            first_other = next(
                (at for at, s, _ in self.observations if s != TaskStatus.PENDING), None
            )
            if first_other is None:
                switch = end
            elif share is not None:
                switch = begin + share * (end - begin)
            elif self.last_pending_at is not None:
                switch = (self.last_pending_at + first_other) / 2.0
            else:
                switch = first_other
        switch = min(max(switch, begin), end)
        return switch - begin, end - switch

    def learn(self, completed_at: float) -> None:
        """Give the client's model this task's duration and pending share, as observed.

        The finish lies between the last sighting before ``completed_at`` and ``completed_at``;
        the progress ETA places it within that window when it can.
        """
        if self.origin is None:
            return
        before = [at for at, _, _ in self.observations if at < completed_at]
        low = max(before) if before else self.origin
        eta = self.eta()
        end = min(max(eta, low), completed_at) if eta is not None else (low + completed_at) / 2
        share: float | None = None
        rate = self._rate()
        if rate is not None:
            start = self.progress_points[0][0] - (self.progress_points[0][1] + PROGRESS_CUT) / rate
            finish = start + 100.0 / rate
            if finish > self.origin:
                share = max(0.0, (start - self.origin) / (finish - self.origin))
        self.model.record(duration=end - self.origin, pending_share=share)
