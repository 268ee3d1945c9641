"""Slots freed by our own tasks: what a deferred submit waits on at the provider's cap.

When the provider's concurrency cap is reached, a create is answered 429 with a whole-second
``Retry-After``; sleeping it blindly leaves each freed slot idle for about a second, every round
of a big submit, and a herd of creates asks again at once. :class:`OwnSlots` paces the submit
instead; each create takes a :meth:`OwnSlots.turn`, whose hook
(:data:`~zimage_dagster.api.CapacityHook`) the client awaits in place of the Retry-After sleep:

* Nothing happens until the first 429: a submit that is never throttled polls nothing and
  waits for nothing.
* From the first 429 on, every task this submit created and that is still open is followed with
  the client's own ``wait`` (its learned poll schedule, the machinery blocking mode uses), and so
  is every task created afterwards.
* Throttled creates wait in line, longest-waiting first; a create that has not been sent yet
  joins the line too while it is not empty (the cap is known reached: no blind create). A task
  seen finished frees one slot: it goes to the head of the line, which is sent again at once
  (one freed slot, one create: no herd). The head alone also keeps the provider's Retry-After:
  when it passes, the head asks again (for slots freed by tasks that are not ours), and if that
  create is accepted, the next in line asks at once too.
* What is seen is kept: the task's end goes to the ledger
  (:func:`~zimage_dagster.engine.collect.record_end`, as the task watcher writes it), so the
  task-status sensor does not poll it again.
* :meth:`OwnSlots.aclose` (the last create made) stops following: open tasks are the sensor's.

Each 429 still counts against the client's ``max_retries``, and the call deadline bounds a
create's wait in line (the client's :class:`~zimage_dagster.api.APITimeoutError`).

Example:
    >>> import asyncio, tempfile
    >>> from zimage_dagster import api, emulator
    >>> from zimage_dagster.engine.ledger import TaskLedger
    >>> async def main(server: emulator.EmulatorServer, ledger: TaskLedger) -> str:
    ...     async with api.AsyncZImageClient(api_key=server.api_key, base_url=server.url) as client:
    ...         slots = OwnSlots(client, ledger, "catalogue")
    ...         request = api.GenerationRequest(prompt="a red fox", seed=7)
    ...         first = await client.create_task(request)
    ...         ledger.record_submitted(
    ...             "catalogue", "fox", task_id=first.id, request={"prompt": "a red fox", "seed": 7}
    ...         )
    ...         slots.opened(first, "fox")
    ...         # The cap (1) is reached; the provider asks to come back in 30 s (a fault with a
    ...         # long Retry-After: the fox, 0.3 s, is seen finished long before it passes).
    ...         server.configure(http_faults=[{"route": "create", "status": 429, "retry_after": 30, "count": 1}])
    ...         async with slots.turn() as hook:  # answered 429, waits for the fox, not 30 s
    ...             await client.create_task(request, wait_for_capacity=hook)
    ...         await slots.aclose()
    ...         return f"{slots.summary()}; fox is {ledger.get('catalogue', 'fox').status.value}"
    >>> config = emulator.EmulatorConfig.for_tests(concurrency_cap=1, latency_s=0.3)
    >>> with emulator.EmulatorServer(config) as server:
    ...     asyncio.run(main(server, TaskLedger(tempfile.mkdtemp())))
    '1 create(s) throttled; 1 task(s) seen finished, 1 create(s) given their slot; fox is completed'
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from zimage_dagster.api import AsyncZImageClient, CapacityHook, Task, TaskFailedError, ZImageError
from zimage_dagster.engine.collect import record_end
from zimage_dagster.engine.ledger import TaskLedger
from zimage_dagster.engine.outcome import Log
from zimage_dagster.engine.store import AssetLike, asset_parts

__all__ = ["OwnSlots"]

log = logging.getLogger(__name__)


class _Turn:
    """One create's place in line (kept across its retries)."""

    def __init__(self) -> None:
        self.moved = asyncio.Event()  # given a slot, or became the head of the line
        self.given = False  # a freed slot is this create's
        self.probing = False  # sent after the Retry-After passed, not for a slot seen freed


class OwnSlots:
    """A submit's own open tasks, followed once the provider throttles its creates.

    Args:
        client: the submit's open client (its ``wait`` and learned poll schedule are used).
        ledger: where a task seen finished is recorded.
        asset: the asset key's parts.
        clock: unix seconds, for ``completed_at``.
        logger: where it says it started following its tasks.
    """

    def __init__(
        self,
        client: AsyncZImageClient,
        ledger: TaskLedger,
        asset: AssetLike,
        *,
        clock: Callable[[], float] = time.time,
        logger: Log | None = None,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.asset = asset_parts(asset)
        self.clock = clock
        self.log: Log = logger or log
        self.throttled = 0  # creates answered 429 (at least once)
        self.finished = 0  # own tasks seen finished (completed or failed)
        self.given = 0  # slots seen freed that went to a waiting create
        self._unwatched: dict[str, tuple[Task, str]] = {}
        self._following: set[asyncio.Task[None]] = set()
        self._recording: set[asyncio.Task[None]] = set()
        self._line: deque[_Turn] = deque()
        self._retry_after = 1.0  # the provider's last Retry-After
        self._watching = False
        self._closed = False

    def opened(self, task: Task, partition_key: str) -> None:
        """A task this submit created (and recorded in the ledger) for ``partition_key``."""
        if self._closed:
            return
        if self._watching:
            self._follow(task, partition_key)
        else:
            self._unwatched[task.id] = (task, partition_key)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[CapacityHook]:
        """One create's turn: waits in line first if creates are waiting for capacity; yields
        the hook to pass to the create (``wait_for_capacity``)."""
        turn = _Turn()
        throttled = False

        async def hook(retry_after_s: float) -> None:
            nonlocal throttled
            if not throttled:
                throttled = True
                self.throttled += 1
            self._retry_after = retry_after_s
            self._start_following(retry_after_s)
            await self._wait(turn, retry_after_s, first=turn.given or turn.probing)

        try:
            if self._line:  # the cap is reached and others wait: no blind create
                await self._wait(turn, self._retry_after, first=False)
            yield hook
        finally:
            self._leave(turn)

    async def aclose(self) -> None:
        """Stop following (the last create was made); ends already seen are still written."""
        self._closed = True
        self._unwatched.clear()
        for follower in self._following - self._recording:
            follower.cancel()
        await asyncio.gather(*self._following, return_exceptions=True)

    def summary(self) -> str:
        return (
            f"{self.throttled} create(s) throttled; {self.finished} task(s) seen finished, "
            f"{self.given} create(s) given their slot"
        )

    # -- the line -------------------------------------------------------------------------------

    async def _wait(self, turn: _Turn, retry_after_s: float, *, first: bool) -> None:
        """Wait in line until a freed slot is ``turn``'s, or it has been the head of the line
        for ``retry_after_s`` (then it asks, out of line). ``first``: it was sent and refused
        again: back to the head."""
        turn.given = turn.probing = False
        if turn not in self._line:
            if first:
                self._line.appendleft(turn)
            else:
                self._line.append(turn)
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while not turn.given:
            turn.moved.clear()
            if self._line[0] is not turn:
                await turn.moved.wait()
                continue
            deadline = loop.time() + retry_after_s if deadline is None else deadline
            left = deadline - loop.time()
            if left <= 0:  # the head keeps the Retry-After: ask, for slots that are not ours
                turn.probing = True
                self._line.remove(turn)  # back at the head if refused (see first)
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(turn.moved.wait(), timeout=left)

    def _leave(self, turn: _Turn) -> None:
        """The create is done (made, or failed for good)."""
        was_head = bool(self._line) and self._line[0] is turn
        with contextlib.suppress(ValueError):
            self._line.remove(turn)
        if turn.probing:  # asked after the Retry-After and was not refused: the next may too
            self._give()
        elif was_head:
            self._promote()

    def _give(self) -> None:
        """A slot may be free: the head of the line is sent at once."""
        if self._line:
            head = self._line.popleft()
            head.given = True
            head.moved.set()
            self._promote()

    def _promote(self) -> None:
        """The head of the line starts keeping the Retry-After."""
        if self._line:
            self._line[0].moved.set()

    # -- following one task ---------------------------------------------------------------------

    def _start_following(self, retry_after_s: float) -> None:
        if self._watching or self._closed:
            return
        self._watching = True
        self.log.info(
            f"the provider's concurrency cap is reached (Retry-After {retry_after_s:g} s): "
            f"following this submit's {len(self._unwatched)} open task(s); a create waits in "
            "line for one of them to finish"
        )
        for task, key in self._unwatched.values():
            self._follow(task, key)
        self._unwatched.clear()

    def _follow(self, task: Task, partition_key: str) -> None:
        follower = asyncio.get_running_loop().create_task(self._until_end(task, partition_key))
        self._following.add(follower)
        follower.add_done_callback(self._following.discard)

    async def _until_end(self, task: Task, partition_key: str) -> None:
        """Follow ``task`` to its end; free a slot; record the end. Whatever goes wrong here
        only leaves the task to the sensor (which polls it, as any open task)."""
        try:
            ended = (await self.client.wait(task)).task
        except TaskFailedError as exc:
            if not isinstance(exc.task, Task):
                return
            ended = exc.task
        except ZImageError as exc:
            log.debug("stopped following task %s: %s", task.id, exc)
            return
        except Exception as exc:  # never sinks the submit
            self.log.warning(f"stopped following task {task.id}: {type(exc).__name__}: {exc}")
            return
        self.finished += 1
        if self._line:
            self.given += 1
            self._give()
        current = asyncio.current_task()
        assert current is not None
        self._recording.add(current)  # not cancelled by aclose: what was seen is written
        try:
            await asyncio.to_thread(
                record_end,
                self.ledger,
                self.asset,
                partition_key,
                ended,
                clock=self.clock,
                logger=self.log,
            )
        except Exception as exc:  # the storage failed: the sensor polls it again
            self.log.warning(
                f"partition {partition_key}: could not record the end of task {task.id} "
                f"({type(exc).__name__}: {exc}); the task-status sensor will poll it"
            )
        finally:
            self._recording.discard(current)
