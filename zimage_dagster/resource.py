"""`ZImageResource`: Dagster's face of the Z-Image-Turbo client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from zimage_dagster._docs import ui_docstring
from zimage_dagster.api import (
    AsyncZImageClient,
    GenerationRequest,
    GenerationResult,
    PollPolicy,
    RetryPolicy,
    Task,
    ZImageClient,
)
from zimage_dagster.engine.credits import Usage

__all__ = ["MeteredClient", "ZImageResource"]


def _then(
    first: Callable[[Task], Any], then: Callable[[Task], Any] | None
) -> Callable[[Task], None]:
    """A callback calling ``first``, then the caller's own ``then`` (if any)."""

    def both(task: Task) -> None:
        first(task)
        if then is not None:
            then(task)

    return both


class MeteredClient(ZImageClient):
    """A :class:`~zimage_dagster.api.ZImageClient` that counts what its tasks reserve
    (:class:`~zimage_dagster.engine.credits.Usage`) and reports the counts after each change
    (``on_usage``): see :meth:`ZImageResource.metered_client`."""

    def __init__(self, on_usage: Callable[[Usage], Any], **options: Any) -> None:
        super().__init__(**options)
        self.usage = Usage()
        self._on_usage = on_usage
        self._failed: set[str] = set()

    def _created(self, task: Task) -> None:
        self.usage.created(task.credits_reserved)
        self._on_usage(self.usage)

    def _polled(self, task: Task) -> None:
        if task.is_failed and task.id not in self._failed:
            self._failed.add(task.id)
            self.usage.failed(task.credits_reserved)
            self._on_usage(self.usage)

    def create_task(self, request: GenerationRequest) -> Task:
        task = super().create_task(request)
        self._created(task)
        return task

    def generate(self, request: GenerationRequest, **options: Any) -> GenerationResult:
        options["on_task_created"] = _then(self._created, options.get("on_task_created"))
        options["on_poll"] = _then(self._polled, options.get("on_poll"))
        return super().generate(request, **options)


def _poll_policy(max_interval: float, deadline: float) -> PollPolicy:
    """The default schedule under a ``max_interval`` cap (short caps pull the floor down too:
    ``PollPolicy`` needs ``min_interval <= max_interval``)."""
    defaults = PollPolicy()
    return PollPolicy(
        max_interval=max_interval,
        min_interval=min(defaults.min_interval, max_interval),
        initial_interval=min(defaults.initial_interval, max_interval),
        deadline=deadline,
    )


@ui_docstring
class ZImageResource(dg.ConfigurableResource):
    """Gives assets and ops a configured Z-Image-Turbo client, sync or async.

    The sync client (`get_client()`) is opened when a run starts and closed when it ends; async
    clients are made per event loop with `async_client()`, because an `httpx.AsyncClient`
    belongs to the loop that uses it. The API key never appears in a log line, an error
    message, metadata or `repr`.

    Example:

        >>> import dagster as dg
        >>> from zimage_dagster import ZImageResource
        >>> resource = ZImageResource(api_key=dg.EnvVar("ZIMAGE_API_KEY"))
        >>> defs = dg.Definitions(resources={"zimage": resource})

    In an asset:

        @dg.asset
        def hero(zimage: ZImageResource) -> None:
            result = zimage.get_client().generate(GenerationRequest(prompt="a lighthouse"))
    """

    api_key: str | None = Field(
        default=None,
        repr=False,
        description=(
            "EvoLink API key (`sk-...`). Pass `dagster.EnvVar('ZIMAGE_API_KEY')` so the key stays "
            "out of run config; when unset, the ZIMAGE_API_KEY environment variable is read."
        ),
    )
    base_url: str | None = Field(
        default=None,
        description=(
            "API base URL. Unset: ZIMAGE_BASE_URL, then https://api.evolink.ai. Point it at the "
            "local emulator (`zimage-emulator`) to run without an account."
        ),
    )
    request_timeout: float = Field(
        default=30.0, gt=0, description="Seconds one HTTP attempt may take (connect, send, read)."
    )
    call_deadline: float = Field(
        default=120.0,
        gt=0,
        description="Seconds one API call may take in all, across its retries and backoff sleeps.",
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        description=(
            "HTTP retries per call for transient failures (connection errors, timeouts, 408, 409, "
            "429, 5xx). A create is retried only where no task can have been made."
        ),
    )
    wait_deadline: float = Field(
        default=600.0, gt=0, description="Seconds to wait for one task to finish before giving up."
    )
    max_poll_interval: float = Field(
        default=5.0, gt=0, description="Longest pause between two status requests for a task."
    )
    concurrency: int = Field(
        default=8,
        ge=1,
        description="Tasks in flight at once in a run that covers many partitions.",
    )
    max_resubmits: int = Field(
        default=2,
        ge=0,
        description=(
            "Times a task that failed with a retryable provider error (service_error, "
            "generation_timeout...) is submitted again with the same seed."
        ),
    )
    max_download_bytes: int = Field(
        default=50 * 1024 * 1024, gt=0, description="Largest image file accepted, in bytes."
    )
    ca_bundle: str | None = Field(
        default=None,
        description=(
            "Path of a CA bundle (PEM) to trust instead of the system's, for the API and the file "
            "host: e.g. the CA `zimage-emulator --tls` prints, or a corporate proxy's."
        ),
    )
    verify_tls: bool = Field(
        default=True,
        description="Check TLS certificates (leave on; `ca_bundle` is the way to trust a private CA).",
    )

    _client: ZImageClient | None = PrivateAttr(default=None)

    def _client_options(self) -> dict[str, object]:
        return {
            "api_key": self.api_key,
            "base_url": self.base_url,
            "timeout": self.request_timeout,
            "deadline": self.call_deadline,
            "retry": RetryPolicy(max_retries=self.max_retries),
            "poll": _poll_policy(self.max_poll_interval, self.wait_deadline),
            "max_download_bytes": self.max_download_bytes,
            "verify": self.ca_bundle if self.ca_bundle else self.verify_tls,
        }

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._client = ZImageClient(**self._client_options())  # type: ignore[arg-type]

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def get_client(self) -> ZImageClient:
        """The sync client opened for this run (made on first use outside a run)."""
        if self._client is None:
            self._client = ZImageClient(**self._client_options())  # type: ignore[arg-type]
        return self._client

    @contextmanager
    def metered_client(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        output_name: str | None = None,
    ) -> Iterator[MeteredClient]:
        """A sync client whose tasks' credits go to the step's output metadata, as
        ``zimage.tasks_created``, ``zimage.credits_reserved``, ``zimage.tasks_failed`` and
        ``zimage.credits_failed`` (the keys the image assets' run-level events use), and to the
        run log when it closes.

        Example::

            @dg.asset
            def hero(context: dg.AssetExecutionContext, zimage: ZImageResource) -> None:
                with zimage.metered_client(context) as client:
                    client.generate(GenerationRequest(prompt="a lighthouse", seed=7))
        """
        from zimage_dagster.metadata import usage_metadata

        def report(usage: Usage) -> None:
            context.add_output_metadata(usage_metadata(usage), output_name)

        client = MeteredClient(report, **self._client_options())
        try:
            yield client
        finally:
            client.close()
            context.log.info(f"zimage credits: {client.usage.summary()}")

    @asynccontextmanager
    async def async_client(self) -> AsyncIterator[AsyncZImageClient]:
        """An async client bound to the running event loop, closed on exit.

        Example::

            async with zimage.async_client() as client:
                async for outcome in client.generate_many(requests, concurrency=8):
                    ...
        """
        async with AsyncZImageClient(**self._client_options()) as client:  # type: ignore[arg-type]
            yield client
