"""What ``wait``, ``generate`` and ``generate_many`` return.

>>> Timings(queued_s=0.5, generating_s=7.0, downloading_s=0.2, total_s=7.9).total_s
7.9
"""

from __future__ import annotations

from dataclasses import dataclass

from zimage_dagster.api.errors import ZImageError
from zimage_dagster.api.images import DownloadedImage
from zimage_dagster.api.models import GenerationRequest, Task

__all__ = ["GenerationFailure", "GenerationResult", "Timings", "WaitOutcome"]


@dataclass(frozen=True)
class WaitOutcome:
    """A finished wait: the completed ``task``, how many status requests it took (``polls``), and
    the time the task spent ``pending`` (``queued_s``) and ``processing`` (``generating_s``) as seen
    from the client. Status changes happen between two polls; the pending->processing change is
    placed halfway between them, the end at the poll that saw it (so the two add up to the wait).
    """

    task: Task
    polls: int
    queued_s: float
    generating_s: float

    @property
    def elapsed_s(self) -> float:
        return self.queued_s + self.generating_s


@dataclass(frozen=True)
class Timings:
    """Seconds spent queued, generating, downloading, and in all (create included)."""

    queued_s: float
    generating_s: float
    downloading_s: float
    total_s: float


@dataclass(frozen=True)
class GenerationResult:
    """One generated image and how it was made.

    ``seed`` is the seed that was sent (drawn by the client if the request had none), so the image
    can be made again. ``attempts`` is the number of tasks created (more than 1 when a retryable
    task failure was resubmitted); ``polls`` counts status requests for the final task.
    ``task_ids`` lists every task created, oldest first.
    """

    request: GenerationRequest
    task: Task
    image: DownloadedImage
    seed: int
    timings: Timings
    polls: int
    attempts: int
    task_ids: tuple[str, ...] = ()

    @property
    def task_id(self) -> str:
        return self.task.id

    @property
    def ok(self) -> bool:
        return True


@dataclass(frozen=True)
class GenerationFailure:
    """A request of a batch that did not produce an image. ``task_id`` is the last task created
    for it, if any got that far (so it can be looked up, or waited on again)."""

    request: GenerationRequest
    error: ZImageError
    task_id: str | None = None

    @property
    def ok(self) -> bool:
        return False
