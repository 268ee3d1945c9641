"""``ZImageClient``: the blocking client. A thin driver of the flows in ``_core``."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from zimage_dagster.api import _core
from zimage_dagster.api.images import (
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_PIXELS,
    DownloadedImage,
    ImageCheck,
)
from zimage_dagster.api.models import Credits, GenerationRequest, Task
from zimage_dagster.api.policies import PollPolicy, RetryPolicy
from zimage_dagster.api.results import GenerationResult, WaitOutcome

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["ZImageClient"]

T = TypeVar("T")


class ZImageClient:
    """Blocking client for the Z-Image-Turbo API.

    Args:
        api_key: the ``sk-evo-...`` key; default: env ``ZIMAGE_API_KEY`` (missing -> ``ConfigurationError``).
        base_url: default: env ``ZIMAGE_BASE_URL``, else ``https://api.evolink.ai``.
        timeout: seconds per attempt (connect, read, write, pool).
        deadline: seconds for one call across all its attempts and backoff sleeps.
        retry: :class:`RetryPolicy`; poll: :class:`PollPolicy` (``wait``'s schedule and deadline).
        max_download_bytes: download cap (default 50 MB); max_image_pixels: decode cap.
        http_client: an ``httpx.Client`` to use (not closed by this client; its transport, proxies,
            limits and TLS settings are used, but not its default headers, cookies or auth: every
            request is built here, so nothing of the injected client can leak to the file host); or
        transport: an ``httpx`` transport for a client this object creates and owns.
        verify: TLS verification of the client this object creates: ``True`` (system CAs), a CA
            bundle path or an ``ssl.SSLContext`` (e.g. the emulator's ``--tls`` CA), ``False``.
        allow_internal_redirects: let a download follow a redirect to a loopback/private
            address (local testing only; refused by default).
        sleep, clock: injectable ``time.sleep`` / ``time.monotonic`` (tests).

    The key is sent per API request (``Authorization: Bearer ...``), never set as a default
    header, and never sent to the file host that serves the images.

    Example::

        with ZImageClient() as client:                      # key from ZIMAGE_API_KEY
            result = client.generate(GenerationRequest(prompt="a red fox in snow", size="16:9"))
            open("fox" + result.image.extension, "wb").write(result.image.data)
            print(result.seed, result.task.id, result.timings.total_s)
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
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        verify: _core.Verify = True,
        allow_internal_redirects: bool = False,
        sleep: Callable[[float], None] | None = None,
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
        self._http = http_client or httpx.Client(
            transport=transport, **_core.http_client_options(timeout, verify)
        )
        self._sleep = sleep or time.sleep

    @property
    def base_url(self) -> str:
        return self._core.base_url

    def __repr__(self) -> str:
        return f"ZImageClient(base_url={self._core.base_url!r})"

    # -- lifecycle --

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> ZImageClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- driver --

    def _perform(self, action: _core.Action) -> _core.Outcome:
        if isinstance(action, _core.Sleep):
            if action.seconds > 0:
                self._sleep(action.seconds)
            return None
        if isinstance(action, _core.Compute):
            return action.work()
        try:
            response = self._http.send(
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
                    chunks = [guard.feed(chunk) for chunk in response.iter_raw()]
                    content = b"".join([*chunks, guard.finish()])
            elif guard is not None:
                content = b""  # the file host's error page is of no use
            else:
                content = response.read()
        except httpx.RequestError as exc:
            return exc
        finally:
            response.close()
        return _core.Received(response.status_code, response.headers, content, str(response.url))

    def _run(self, flow: _core.Flow[T]) -> T:
        try:
            action = next(flow)
            while True:
                action = flow.send(self._perform(action))
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            flow.close()

    # -- API --

    def create_task(self, request: GenerationRequest) -> Task:
        """``POST /v1/images/generations``: start a task (one image). Returns it, status ``pending``.

        Sends ``request`` as it is (a request without seed gets a random seed from the server,
        which nobody can know: prefer :meth:`generate`, or set a seed). Retried only where no task
        can have been made; otherwise ``CreateOutcomeUnknownError``.

        >>> task = client.create_task(GenerationRequest(prompt="a cute cat", seed=7))  # doctest: +SKIP
        """
        return self._run(self._core.create_flow(request))

    def get_task(self, task_id: str) -> Task:
        """``GET /v1/tasks/{task_id}``: the task's status, progress, results or error.

        >>> client.get_task("task-unified-1757165031-uyujaw3d").status  # doctest: +SKIP
        <TaskStatus.COMPLETED: 'completed'>
        """
        return self._run(self._core.get_task_flow(task_id))

    def wait(
        self,
        task_or_id: Task | str,
        *,
        deadline: float | None = None,
        on_poll: Callable[[Task], Any] | None = None,
    ) -> WaitOutcome:
        """Poll until the task completes (adaptive schedule, see :class:`PollPolicy`).

        Raises ``TaskFailedError`` (status failed), ``UnknownTaskStatusError``, or
        ``WaitTimeoutError`` after ``deadline`` seconds (default ``PollPolicy.deadline``).
        ``on_poll(task)`` is called after every status request.

        >>> outcome = client.wait(client.create_task(req), on_poll=print)  # doctest: +SKIP
        >>> outcome.task.result_url, outcome.polls  # doctest: +SKIP
        """
        return self._run(self._core.wait_flow(task_or_id, deadline=deadline, on_poll=on_poll))

    def download(
        self,
        url: str,
        *,
        task_id: str | None = None,
        keep_pixels: bool = False,
        derive: Callable[[Image.Image], Any] | None = None,
        check: ImageCheck = "decode",
    ) -> DownloadedImage:
        """Fetch a result image: streamed, size-capped, checked to decode; no API key is sent.
        ``keep_pixels``: the result keeps the decoded image (``DownloadedImage.pixels``), for a
        caller that needs the pixels and should not decode the file again. ``derive``: called
        with the decoded image, its result kept in ``DownloadedImage.derived`` (a thumbnail made
        from the check's decode, without holding the pixels afterwards). ``check``:
        ``"structure"`` checks the header and that the file is whole, without decoding the
        pixels (see :func:`~zimage_dagster.api.images.decode_image`).

        Raises ``ResultExpiredError`` (403/404/410), ``ImageTooLargeError``, ``NotAnImageError``,
        ``DownloadError``.

        >>> image = client.download(outcome.task.result_url, task_id=outcome.task.id)  # doctest: +SKIP
        >>> image.format, image.width, image.sha256[:8]  # doctest: +SKIP
        """
        return self._run(
            self._core.download_flow(
                url, task_id=task_id, keep_pixels=keep_pixels, derive=derive, check=check
            )
        )

    def generate(
        self,
        request: GenerationRequest,
        *,
        max_task_attempts: int | None = None,
        on_task_created: Callable[[Task], Any] | None = None,
        on_poll: Callable[[Task], Any] | None = None,
    ) -> GenerationResult:
        """Create, wait and download: one image. The seed is always known (drawn if absent).

        A failed task with a retryable error code is resubmitted with the same seed, up to
        ``max_task_attempts`` tasks (default ``RetryPolicy.max_task_attempts``).
        ``on_task_created(task)`` runs right after each create (record the id before waiting).

        >>> result = client.generate(GenerationRequest(prompt="a lighthouse at dusk"))  # doctest: +SKIP
        >>> result.seed, result.image.format, result.polls  # doctest: +SKIP
        """
        return self._run(
            self._core.generate_flow(
                request,
                max_task_attempts=max_task_attempts,
                on_task_created=on_task_created,
                on_poll=on_poll,
            )
        )

    def get_credits(self) -> Credits:
        """``GET /v1/credits``: remaining and used credits.

        >>> client.get_credits().remaining  # doctest: +SKIP
        """
        return self._run(self._core.credits_flow())
