"""``AsyncZImageClient``: the asyncio client. A thin driver of the flows in ``_core``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx

from zimage_dagster.api import _core
from zimage_dagster.api.errors import ConfigurationError, ZImageError
from zimage_dagster.api.images import (
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_PIXELS,
    DownloadedImage,
    ImageCheck,
)
from zimage_dagster.api.models import Credits, GenerationRequest, Task
from zimage_dagster.api.policies import PollPolicy, RetryPolicy
from zimage_dagster.api.results import GenerationFailure, GenerationResult, WaitOutcome

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["AsyncZImageClient", "CapacityHook"]

T = TypeVar("T")


class CapacityHook(Protocol):
    """``await hook(retry_after_s)``: what a create answered 429 (the provider's cap is reached)
    awaits instead of sleeping the server's Retry-After; it returns when the create should be
    sent again (see :meth:`AsyncZImageClient.create_task`).

    >>> async def at_most_half_a_second(retry_after_s: float) -> None:
    ...     await asyncio.sleep(min(retry_after_s, 0.5))
    >>> hook: CapacityHook = at_most_half_a_second
    """

    def __call__(self, retry_after_s: float, /) -> Awaitable[None]: ...


class _Done:
    """End-of-worker marker in ``generate_many``'s queue."""


class AsyncZImageClient:
    """The asyncio twin of :class:`~zimage_dagster.api.ZImageClient` (same arguments, ``async`` methods),
    plus :meth:`generate_many`.

    Example::

        async with AsyncZImageClient() as client:
            requests = [GenerationRequest(prompt=p, seed=i + 1) for i, p in enumerate(prompts)]
            async for item in client.generate_many(requests, concurrency=8):
                if item.ok:
                    print(item.task.id, item.seed, item.image.sha256)
                else:
                    print("failed:", item.request.prompt, item.error)
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 30.0,
        deadline: float = 300.0,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: _core.Verify = True,
        allow_internal_redirects: bool = False,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._core = _core.ClientCore.from_arguments(
            api_key,
            base_url,
            timeout=timeout,
            deadline=deadline,
            retry=retry,
            poll=poll,
            max_download_bytes=max_download_bytes,
            max_image_pixels=max_image_pixels,
            clock=clock,
            allow_internal_redirects=allow_internal_redirects,
            injected_client=http_client is not None,
            injected_transport=transport is not None,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            transport=transport, **_core.http_client_options(timeout, verify)
        )
        self._sleep = sleep or asyncio.sleep

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def __repr__(self) -> str:
        return f"AsyncZImageClient(base_url={self._core.base_url!r})"

    # -- lifecycle --

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncZImageClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- driver --

    async def _perform(
        self, action: _core.Action, capacity: CapacityHook | None = None
    ) -> _core.Outcome:
        if isinstance(action, _core.Throttled) and capacity is not None:
            # the hook decides when to send again; the call's deadline bounds it
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(capacity(action.seconds), timeout=action.budget_s)
            return None
        if isinstance(action, _core.Sleep):
            if action.seconds > 0:
                await self._sleep(action.seconds)
            return None
        if isinstance(action, _core.Compute):  # off the event loop: the other tasks go on
            return await asyncio.to_thread(action.work)
        guard = action.guard
        remaining = guard.remaining_s() if guard is not None else None
        if guard is None or remaining is None:
            return await self._exchange(action)
        try:  # the whole download, however slowly its bytes come, within the deadline
            return await asyncio.wait_for(self._exchange(action), timeout=max(0.0, remaining))
        except asyncio.TimeoutError:
            raise guard.deadline_error() from None

    async def _exchange(self, action: _core.Send) -> _core.Outcome:
        try:
            response = await self._http.send(
                action.request, stream=True, auth=None, follow_redirects=action.follow_redirects
            )
        except httpx.RequestError as exc:
            return exc
        try:
            guard = action.guard
            if guard is not None and response.is_success:
                # raw chunks: the guard decodes them itself, bounded, and watches the clock
                guard.check_headers(response.headers)
                if response.is_stream_consumed:  # an in-memory response, already whole
                    content = guard.feed_whole(response.content)
                else:
                    chunks = [guard.feed(chunk) async for chunk in response.aiter_raw()]
                    content = b"".join([*chunks, guard.finish()])
            elif guard is not None:
                content = b""
            else:
                content = await response.aread()
        except httpx.RequestError as exc:
            return exc
        finally:
            await response.aclose()
        return _core.Received(response.status_code, response.headers, content, str(response.url))

    async def _run(self, flow: _core.Flow[T], capacity: CapacityHook | None = None) -> T:
        try:
            action = next(flow)
            while True:
                action = flow.send(await self._perform(action, capacity))
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            flow.close()

    # -- API --

    async def create_task(
        self, request: GenerationRequest, *, wait_for_capacity: CapacityHook | None = None
    ) -> Task:
        """See :meth:`ZImageClient.create_task`. ``task = await client.create_task(req)``.

        ``wait_for_capacity(retry_after_s)``: awaited instead of sleeping the server's
        ``Retry-After`` when the create is answered 429 (the provider's cap is reached); it
        returns when a slot may be free (e.g. one of the caller's own tasks was seen finished,
        or ``retry_after_s`` passed), and the create is sent again. The retry budget is the same
        as without the hook: each 429 counts against ``max_retries``, and the call's deadline
        cuts the wait off (then :class:`~zimage_dagster.api.APITimeoutError`).
        """
        return await self._run(self._core.create_flow(request), wait_for_capacity)

    async def get_task(self, task_id: str) -> Task:
        """See :meth:`ZImageClient.get_task`. ``task = await client.get_task(task_id)``."""
        return await self._run(self._core.get_task_flow(task_id))

    async def wait(
        self,
        task_or_id: Task | str,
        *,
        deadline: float | None = None,
        on_poll: Callable[[Task], Any] | None = None,
    ) -> WaitOutcome:
        """See :meth:`ZImageClient.wait` (``on_poll`` is a plain, non-async callable).
        ``outcome = await client.wait(task)``."""
        return await self._run(self._core.wait_flow(task_or_id, deadline=deadline, on_poll=on_poll))

    async def download(
        self,
        url: str,
        *,
        task_id: str | None = None,
        keep_pixels: bool = False,
        derive: Callable[[Image.Image], Any] | None = None,
        check: ImageCheck = "decode",
    ) -> DownloadedImage:
        """See :meth:`ZImageClient.download` (the decode check runs in a worker thread).
        ``image = await client.download(url)``."""
        return await self._run(
            self._core.download_flow(
                url, task_id=task_id, keep_pixels=keep_pixels, derive=derive, check=check
            )
        )

    async def generate(
        self,
        request: GenerationRequest,
        *,
        max_task_attempts: int | None = None,
        on_task_created: Callable[[Task], Any] | None = None,
        on_poll: Callable[[Task], Any] | None = None,
    ) -> GenerationResult:
        """See :meth:`ZImageClient.generate`. ``result = await client.generate(req)``."""
        return await self._run(
            self._core.generate_flow(
                request,
                max_task_attempts=max_task_attempts,
                on_task_created=on_task_created,
                on_poll=on_poll,
            )
        )

    async def get_credits(self) -> Credits:
        """See :meth:`ZImageClient.get_credits`. ``credits = await client.get_credits()``."""
        return await self._run(self._core.credits_flow())

    async def _generate_one(
        self,
        request: GenerationRequest,
        max_task_attempts: int | None,
        on_task_created: Callable[[GenerationRequest, Task], Any] | None,
    ) -> GenerationResult | GenerationFailure:
        tracker = _core.GenerationTracker()

        def created(task: Task) -> None:
            if on_task_created is not None:
                on_task_created(request, task)

        try:
            return await self._run(
                self._core.generate_flow(
                    request,
                    tracker=tracker,
                    max_task_attempts=max_task_attempts,
                    on_task_created=created,
                )
            )
        except ZImageError as exc:
            error = exc
        except Exception as exc:  # one bad request never sinks the batch
            error = ZImageError(self._core.scrub(f"unexpected {_core.describe_exception(exc)}"))
            error.__cause__ = exc
        task_id = tracker.task_ids[-1] if tracker.task_ids else None
        return GenerationFailure(request=request, error=error, task_id=task_id)

    async def generate_many(
        self,
        requests: Iterable[GenerationRequest],
        *,
        concurrency: int = 8,
        max_task_attempts: int | None = None,
        on_task_created: Callable[[GenerationRequest, Task], Any] | None = None,
    ) -> AsyncIterator[GenerationResult | GenerationFailure]:
        """Generate many images, at most ``concurrency`` at a time; yield each as it finishes.

        Every request yields exactly one item: a :class:`GenerationResult`, or a
        :class:`GenerationFailure` carrying the error (a bad prompt never sinks the batch).
        Order is completion order (match items by ``item.request``). ``on_task_created(request,
        task)`` runs right after each create. Leaving the loop early cancels the work in flight.

        >>> async for item in client.generate_many(reqs, concurrency=4):  # doctest: +SKIP
        ...     print(item.ok, item.request.prompt)
        """
        if concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1")
        source = iter(requests)
        queue: asyncio.Queue[GenerationResult | GenerationFailure | _Done] = asyncio.Queue()

        async def worker() -> None:
            try:
                for request in source:  # shared iterator: each worker takes the next request
                    await queue.put(
                        await self._generate_one(request, max_task_attempts, on_task_created)
                    )
            finally:
                queue.put_nowait(_Done())

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        finished = 0
        try:
            while finished < len(workers):
                item = await queue.get()
                if isinstance(item, _Done):
                    finished += 1
                    continue
                yield item
            for task in workers:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
