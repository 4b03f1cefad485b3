"""The job state machine: pure decisions and the transitions of a ``ccd_jobs`` row.

::

    queued ──> running ──> done
      ^  │        │
      │  │        ├──> queued   (retryable failure, attempts < max: retried after a backoff)
      │  │        ├──> failed   (not retryable, or max_attempts reached: failed for good)
      │  │        └──> queued   (the dispatcher died: put back at start-up)
      │  └──> skipped (with a reason: dead CCD, CCD absent from the file)
      └── any state <── reset (new checksum, new pipeline version, or forced)

The decision functions take plain values and return plain values, so they are tested without a
database; the transition functions change one job row in memory (the caller's session writes
it) and refuse a transition the machine does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from driftwatch.errors import StoreError
from driftwatch.store.models import DONE, FAILED, QUEUED, RUNNING, SKIPPED, CcdJob

#: The longest delay between two tries of a job, whatever the backoff doubling gives.
MAX_BACKOFF_S = 3600.0

#: Allowed transitions (reset is separate: it is allowed from every state).
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, SKIPPED}),
    RUNNING: frozenset({DONE, FAILED, QUEUED}),
    DONE: frozenset(),
    FAILED: frozenset(),
    SKIPPED: frozenset(),
}


class InvalidTransition(StoreError):
    """A job was asked to move along a transition the state machine does not have."""


class JobLike(Protocol):
    state: str
    attempts: int
    input_checksum: str | None
    pipeline_version: str | None


@dataclass(frozen=True)
class Decision:
    """Whether to (re)process, and why (shown to operators)."""

    process: bool
    reset: bool          # the job must be reset (attempts to 0, products replaced)
    reason: str


def should_process(job: JobLike | None, checksum: str | None, pipeline_version: str,
                   max_attempts: int, *, force: bool = False,
                   retry_failed: bool = False) -> Decision:
    """Decide whether an input (a file's CCD) needs work.

    Parameters
    ----------
    job:
        The existing job of this input, or None when there is none yet.
    checksum, pipeline_version:
        Of the input file now, and of the code that would reduce it.
    max_attempts:
        Tries before a job has failed for good (``workers.max_attempts``).
    force:
        Redo even finished work (``reprocess --force``).
    retry_failed:
        Give a job that failed for good a fresh set of tries (an operator's reprocess).
    """
    if job is None:
        return Decision(True, False, "new")
    if force:
        return Decision(True, True, "forced")
    if job.input_checksum is not None and checksum is not None and job.input_checksum != checksum:
        return Decision(True, True, "the input file changed (new checksum)")
    if job.state in (QUEUED, RUNNING):
        return Decision(False, False, f"already {job.state}")
    if job.state == SKIPPED:
        return Decision(False, False, "skipped")
    if job.pipeline_version and job.pipeline_version != pipeline_version:
        return Decision(True, True,
                        f"new pipeline version ({job.pipeline_version} -> {pipeline_version})")
    if job.state == DONE:
        return Decision(False, False, "already done with this checksum and pipeline version")
    # FAILED
    if retry_failed:
        return Decision(True, True, "failed before: retried on request")
    if job.attempts < max_attempts:
        return Decision(True, False, f"retry {job.attempts + 1} of {max_attempts}")
    return Decision(False, False, f"failed for good after {job.attempts} attempts")


def is_retryable(retryable: bool, attempts: int, max_attempts: int) -> bool:
    """Return True when a failed try should be tried again.

    ``retryable`` is the worker's verdict (False for bad input that fails the same way again);
    ``attempts`` counts the tries made so far, this one included.
    """
    return retryable and attempts < max_attempts


def next_attempt_time(now: datetime, attempts: int, backoff_s: float) -> datetime:
    """Return when try number ``attempts + 1`` may start: the backoff doubles after each try."""
    delay = min(backoff_s * 2.0 ** max(attempts - 1, 0), MAX_BACKOFF_S)
    return now + timedelta(seconds=delay)


# ---------------------------------------------------------------------------------------------
# Transitions of a row
# ---------------------------------------------------------------------------------------------
def _move(job: CcdJob, new: str) -> None:
    if new not in TRANSITIONS[job.state]:
        raise InvalidTransition(f"job {job.id} ({job.kind} {job.ccd}): "
                                f"no transition {job.state} -> {new}")
    job.state = new


def mark_running(job: CcdJob, worker: str | None, now: datetime) -> None:
    """queued -> running: one more try starts."""
    _move(job, RUNNING)
    job.attempts = (job.attempts or 0) + 1
    job.worker = worker
    job.started_at = now
    job.finished_at = None
    job.next_attempt_at = None


def mark_done(job: CcdJob, now: datetime, *, product_path: str | None,
              pipeline_version: str | None = None, n_trails: int | None = None,
              n_matched: int | None = None, n_candidates: int | None = None,
              notes: str | None = None, worker: str | None = None) -> None:
    """running -> done. The caller has checked that the products are on disk."""
    _move(job, DONE)
    job.finished_at = now
    job.duration_s = (now - job.started_at).total_seconds() if job.started_at else None
    job.product_path = product_path
    job.error = None
    if pipeline_version:
        job.pipeline_version = pipeline_version
    job.n_trails, job.n_matched, job.n_candidates = n_trails, n_matched, n_candidates
    job.notes = notes
    if worker:
        job.worker = worker


def mark_failed(job: CcdJob, now: datetime, error: str, *, retryable: bool, max_attempts: int,
                backoff_s: float) -> bool:
    """running -> queued (retried later) or failed (for good). Return True if it will be retried."""
    job.error = error
    job.finished_at = now
    job.duration_s = (now - job.started_at).total_seconds() if job.started_at else None
    if is_retryable(retryable, job.attempts, max_attempts):
        _move(job, QUEUED)
        job.queued_at = now
        job.next_attempt_at = next_attempt_time(now, job.attempts, backoff_s)
        return True
    _move(job, FAILED)
    return False


def mark_skipped(job: CcdJob, reason: str, now: datetime) -> None:
    """queued -> skipped, with the reason."""
    _move(job, SKIPPED)
    job.reason = reason
    job.finished_at = now


def requeue(job: CcdJob, now: datetime, *, refund: bool = False,
            max_attempts: int | None = None) -> bool:
    """running -> queued: its process or worker went away before it reported.

    The try that was running counts (a job that kills its worker every time must not loop for
    ever), unless ``refund`` (the try was lost through no fault of this job). When the count has
    reached ``max_attempts`` the job fails for good instead. Return True if it was requeued.
    """
    if refund and job.attempts:
        job.attempts -= 1
    if max_attempts is not None and job.attempts >= max_attempts:
        job.error = job.error or "interrupted on every try (the worker or the service died)"
        _move(job, FAILED)
        job.finished_at = now
        return False
    _move(job, QUEUED)
    job.queued_at = now
    job.worker = None
    return True


def reset(job: CcdJob, now: datetime, *, checksum: str | None, reason: str) -> None:
    """Any state -> queued with a fresh set of tries (its old candidates are dropped)."""
    job.state = QUEUED
    job.attempts = 0
    job.error = None
    job.reason = None
    job.notes = f"reset: {reason}"
    job.worker = None
    job.started_at = job.finished_at = job.duration_s = None
    job.next_attempt_at = None
    job.queued_at = now
    job.product_path = None
    job.n_trails = job.n_matched = job.n_candidates = None
    if checksum is not None:
        job.input_checksum = checksum
    job.candidates.clear()
