"""The logic both clients share, written without I/O: :class:`ClientCore`, one per client.

Every operation (a retried HTTP call, a wait, a download, a whole generation) is a generator
("flow") that *yields* what it needs done, :class:`Send` (an HTTP request) or :class:`Sleep`,
and is *sent* the outcome (a :class:`Received` or the ``httpx`` exception). The sync client drives
a flow with blocking calls, the async one with ``await``: the decisions live once, by concern:

- ``api/_actions.py``: what a flow and its driver exchange; ``api/_stream.py`` a download's byte
  cap and deadline;
- ``api/_settings.py``: a client's settings (key, base URL, limits) and the ``httpx`` options;
- ``api/_retry.py``: retry arithmetic (``Retry-After``, backoff, what is worth another attempt);
- ``api/_flows.py``: one API call retried, the three operations, waiting for a task;
- ``api/_download.py``: fetching a result image; ``api/_generate.py``: a whole generation.

The names the drivers and the receiver use are importable from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zimage_dagster.api._actions import (
    Action,
    Compute,
    Flow,
    Outcome,
    Received,
    Send,
    Sleep,
    Throttled,
)
from zimage_dagster.api._download import download_flow
from zimage_dagster.api._flows import (
    create_flow,
    credits_flow,
    get_task_flow,
    request_flow,
    wait_flow,
)
from zimage_dagster.api._generate import GenerationTracker, generate_flow
from zimage_dagster.api._retry import UNREACHABLE_RETRY_S, describe_exception
from zimage_dagster.api._settings import (
    DEFAULT_BASE_URL,
    ENV_BASE_URL,
    ClientSettings,
    Verify,
    http_client_options,
    resolve_settings,
)
from zimage_dagster.api.errors import ConfigurationError
from zimage_dagster.api.policies import PollPolicy, RetryPolicy
from zimage_dagster.api.polling import LatencyModel

if TYPE_CHECKING:
    from collections.abc import Mapping

    from PIL import Image

    from zimage_dagster.api._settings import Secret
    from zimage_dagster.api.images import DownloadedImage, ImageCheck
    from zimage_dagster.api.models import Credits, GenerationRequest, Task
    from zimage_dagster.api.results import GenerationResult, WaitOutcome

#: What the drivers (``api/_sync.py``, ``api/_async.py``) and the receiver use from here.
__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_BASE_URL",
    "UNREACHABLE_RETRY_S",
    "Action",
    "ClientCore",
    "ClientSettings",
    "Compute",
    "Flow",
    "GenerationTracker",
    "Outcome",
    "Received",
    "Send",
    "Sleep",
    "Throttled",
    "Verify",
    "describe_exception",
    "http_client_options",
    "resolve_settings",
]


class ClientCore:
    """Settings plus the flows. One per client; holds no connection."""

    @classmethod
    def from_arguments(
        cls,
        api_key: str | None,
        base_url: str | None,
        *,
        timeout: float,
        deadline: float,
        retry: RetryPolicy | None,
        poll: PollPolicy | None,
        max_download_bytes: int,
        max_image_pixels: int,
        clock: Callable[[], float] | None,
        injected_client: bool,
        injected_transport: bool,
        allow_internal_redirects: bool = False,
    ) -> ClientCore:
        """The core of a client built from its constructor's arguments (shared by both clients)."""
        key, url = resolve_settings(api_key, base_url)
        if injected_client and injected_transport:
            raise ConfigurationError("pass http_client or transport, not both")
        settings = ClientSettings(
            api_key=key,
            base_url=url,
            timeout=timeout,
            deadline=deadline,
            retry=retry or RetryPolicy(),
            poll=poll or PollPolicy(),
            max_download_bytes=max_download_bytes,
            max_image_pixels=max_image_pixels,
            clock=clock or time.monotonic,
            allow_internal_redirects=allow_internal_redirects,
        )
        return cls(settings)

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        #: What this client learned of its tasks' timing; every ``wait`` reads and feeds it.
        self.latency = LatencyModel()

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    @property
    def _key(self) -> Secret:
        return self.settings.api_key

    def scrub(self, text: str) -> str:
        """``text`` with the API key (should a server echo it) replaced by ``[REDACTED]``."""
        return self.settings.scrub(text)

    # -- the flows, on this client's settings --

    def request_flow(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        deadline: float | None = None,
    ) -> Flow[Received]:
        """One API call with retries, backoff and an overall deadline (see :func:`request_flow`)."""
        return request_flow(self.settings, method, path, json_body=json_body, deadline=deadline)

    def create_flow(
        self, request: GenerationRequest, *, deadline: float | None = None
    ) -> Flow[Task]:
        return create_flow(self.settings, request, deadline=deadline)

    def get_task_flow(self, task_id: str, *, deadline: float | None = None) -> Flow[Task]:
        return get_task_flow(self.settings, task_id, deadline=deadline)

    def credits_flow(self) -> Flow[Credits]:
        return credits_flow(self.settings)

    def wait_flow(
        self,
        task_or_id: Task | str,
        *,
        deadline: float | None = None,
        on_poll: Callable[[Task], object] | None = None,
    ) -> Flow[WaitOutcome]:
        """Poll until the task is terminal; see :class:`PollPolicy` for the schedule."""
        return wait_flow(
            self.settings, self.latency, task_or_id, deadline=deadline, on_poll=on_poll
        )

    def download_flow(
        self,
        url: str,
        *,
        task_id: str | None = None,
        keep_pixels: bool = False,
        derive: Callable[[Image.Image], Any] | None = None,
        check: ImageCheck = "decode",
    ) -> Flow[DownloadedImage]:
        """Fetch a result image (see :func:`download_flow`)."""
        return download_flow(
            self.settings,
            url,
            task_id=task_id,
            keep_pixels=keep_pixels,
            derive=derive,
            check=check,
        )

    def generate_flow(
        self,
        request: GenerationRequest,
        *,
        tracker: GenerationTracker | None = None,
        max_task_attempts: int | None = None,
        on_task_created: Callable[[Task], object] | None = None,
        on_poll: Callable[[Task], object] | None = None,
    ) -> Flow[GenerationResult]:
        """Create (with a seed, always), wait, download; resubmit retryable task failures."""
        return generate_flow(
            self.settings,
            self.latency,
            request,
            tracker=tracker,
            max_task_attempts=max_task_attempts,
            on_task_created=on_task_created,
            on_poll=on_poll,
        )
