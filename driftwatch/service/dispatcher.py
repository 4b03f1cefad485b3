"""The dispatcher: the single writer of the job database, between the queue and the executor.

A daemon loop (or ``driftwatch reprocess``) drives it step by step::

    dispatcher = Dispatcher(cfg, store, executor)
    dispatcher.requeue_running()            # once, at start-up: crash recovery
    while running:
        dispatcher.submit_ready()           # queued jobs whose inputs are ready -> workers
        for result in dispatcher.collect(timeout=1.0):   # finished tasks -> database
            ...
    dispatcher.shutdown(grace=cfg.workers.grace_period_s)

Only one process dispatches a database at a time: :meth:`Dispatcher.requeue_running` takes the
writer lock of ``paths.state`` (see :func:`driftwatch.store.db.acquire_writer_lock`).

A job is ready when it is queued, its retry time has come, its field's catalogue job (if any)
has finished, and its exposure's DQ mask is there (or known missing, or ``watch.dq_wait_s`` has
passed since the image arrived). Each job is marked 'running' (committed) before it is handed
to a worker, so a crash never loses one: :meth:`requeue_running` puts it back.

A result is recorded in one transaction: the job's new state, its candidates, and whatever the
alert hooks add (the outbox pattern: candidates and their alerts commit together or not at all).
A job is marked done only when the worker said ok and its products are on disk.

Hooks (the alerts outbox plugs in here; they run only when ``alerts`` is True, so a reprocess
without ``--alerts`` queues nothing):

- ``on_candidates(session, job, candidates)``: after a CCD job's candidates are added.
- ``on_exposure_done(session, exposure)``: when the last CCD job of an exposure finishes.

Both run inside the recording transaction and must not commit; an exception in a hook rolls
the whole result back and the job is retried.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, aliased

from driftwatch.config import Config
from driftwatch.errors import DriftwatchError, StoreError
from driftwatch.service.executor import Executor, TaskOutcome
from driftwatch.service.planner import (
    catalogue_out_path, exposure_out_dir, refresh_exposure_state,
)
from driftwatch.store import jobs as jobstate
from driftwatch.store.db import Store, acquire_writer_lock, release_writer_lock
from driftwatch.store.models import (
    DONE, FAILED, KIND_CATALOGUE, KIND_CCD, QUEUED, RUNNING, SKIPPED, Candidate, CcdJob,
    Exposure, utcnow,
)
from driftwatch.tasks import CatalogueSummary, CatalogueTask, CcdSummary, CcdTask

log = logging.getLogger(__name__)

CandidatesHook = Callable[[Session, CcdJob, list[Candidate]], None]
ExposureHook = Callable[[Session, Exposure], None]


@dataclass(frozen=True)
class JobResult:
    """What happened to one job when its task came back."""

    job_id: int
    kind: str
    ccd: str
    exposure_id: int
    state: str                     # done, queued (to be retried), failed
    error: str | None = None
    exposure_finished: bool = False
    n_candidates: int = 0


def default_ccd_function() -> Callable[[CcdTask], CcdSummary]:
    """Return the real CCD reduction (imported on first use)."""
    try:
        from driftwatch.pipeline.ccd import reduce_ccd
    except ImportError as exc:
        raise DriftwatchError(f"the CCD reduction is not available: {exc}") from None
    return reduce_ccd


def default_catalogue_function() -> Callable[[CatalogueTask], CatalogueSummary]:
    """Return the real catalogue builder (imported on first use)."""
    try:
        from driftwatch.pipeline.catalogue import build_catalogue
    except ImportError as exc:
        raise DriftwatchError(f"the catalogue builder is not available: {exc}") from None
    return build_catalogue


def outbox_exposure_hook(dispatcher: Dispatcher) -> ExposureHook | None:
    """The default exposure hook: queue the exposure's candidate message in the alerts outbox,
    report a failed exposure, and the night's failure rate when over the threshold."""
    try:
        from driftwatch.alerts import outbox
    except ImportError:  # the alerts package is optional for the dispatcher
        return None

    def hook(session: Session, exposure: Exposure) -> None:
        cfg = dispatcher.cfg
        outbox.queue_exposure_alert_from_db(session, cfg, exposure.id)
        if exposure.state == "failed":
            outbox.queue_exposure_failed(session, cfg, exposure.id)
        if exposure.night:
            outbox.queue_failure_rate_if_over(session, cfg, exposure.night)

    return hook


def _finite(value: float | None) -> float | None:
    """NaN (no such quantity, e.g. the peak time of a flash) is stored as NULL."""
    return None if value is None or not math.isfinite(value) else float(value)


def _products_present(path: str | None) -> bool:
    if not path:
        return False
    p = Path(path)
    if p.is_dir():
        return any(p.iterdir())
    return p.is_file() and p.stat().st_size > 0


class Dispatcher:
    """Hand ready jobs to an executor and record what comes back.

    Parameters
    ----------
    cfg, store, executor:
        The configuration, the database and a backend of :mod:`driftwatch.service.executor`.
    ccd_fn, catalogue_fn:
        Picklable module-level task functions; default: the real pipeline functions.
    alerts:
        Call the alert hooks (False for a reprocess without ``--alerts``).
    on_candidates, on_exposure_done:
        The alert hooks (see the module docstring).
    scope:
        Dispatch only these job ids (a reprocess of one night); None: every job.
    on_done:
        Called (from the executor's thread, so it must only signal) whenever a task finishes:
        the daemon's loop wakes at once instead of at its next tick, so a free worker waits
        for its next job only as long as it takes to hand it over.
    """

    def __init__(self, cfg: Config, store: Store, executor: Executor, *,
                 ccd_fn: Callable[[CcdTask], Any] | None = None,
                 catalogue_fn: Callable[[CatalogueTask], Any] | None = None,
                 alerts: bool | None = None, on_candidates: CandidatesHook | None = None,
                 on_exposure_done: ExposureHook | None = None,
                 scope: Iterable[int] | None = None,
                 clock: Callable[[], datetime] = utcnow,
                 on_done: Callable[[], None] | None = None) -> None:
        if isinstance(cfg, Store) and isinstance(store, Config):  # (store, cfg, ...) also works
            cfg, store = store, cfg
        self.cfg = cfg
        self.store = store
        self.executor = executor
        self._ccd_fn = ccd_fn
        self._catalogue_fn = catalogue_fn
        self.alerts = cfg.alerts.enabled if alerts is None else alerts
        self.on_candidates = on_candidates
        self.on_exposure_done = on_exposure_done
        if self.alerts and on_exposure_done is None:
            self.on_exposure_done = outbox_exposure_hook(self)
        self.scope = set(scope) if scope is not None else None
        self.clock = clock
        self.on_done = on_done
        self._done: queue.Queue[tuple[int, int, Any]] = queue.Queue()
        self._inflight: dict[int, tuple[int, Any]] = {}      # job id -> (generation, future)
        self._generation = 0
        self._lost_in_generation: dict[int, int] = {}
        self._suspects: set[int] = set()
        self._released: set[int] = set()   # came back, freed their worker, not yet recorded
        self._lock: Path | None = None

    # -----------------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Tasks handed to workers and not yet recorded."""
        return len(self._inflight)

    @property
    def ccd_fn(self) -> Callable[[CcdTask], Any]:
        if self._ccd_fn is None:
            self._ccd_fn = default_ccd_function()
        return self._ccd_fn

    @property
    def catalogue_fn(self) -> Callable[[CatalogueTask], Any]:
        if self._catalogue_fn is None:
            self._catalogue_fn = default_catalogue_function()
        return self._catalogue_fn

    def reconfigure(self, cfg: Config) -> None:
        """Use a reloaded configuration for the next tasks (workers.* needs a restart)."""
        self.cfg = cfg

    def alive(self) -> bool:
        """True unless the executor is broken beyond the restart the next step does."""
        try:
            return self.executor.capacity > 0
        except Exception:  # a Dask scheduler that went away
            return False

    def step(self, timeout: float = 0.0) -> list[JobResult]:
        """One turn of a daemon loop: submit ready jobs, record what has finished."""
        self.submit_ready()
        return self.collect(timeout, refill=True)

    def recover(self) -> int:
        """Alias of :meth:`requeue_running` (start-up crash recovery)."""
        return self.requeue_running()

    def requeue_running(self) -> int:
        """Put jobs left 'running' by a dead process back in the queue (start-up only).

        The interrupted try counts: a job that kills the whole service each time fails for good
        after ``workers.max_attempts`` instead of looping. Takes the writer lock of
        ``paths.state`` first (held until :meth:`shutdown`), so that a second dispatching
        process (a daemon and a reprocess) stops with a clear error instead of taking the
        first one's running jobs away.
        """
        if self._lock is None:
            self._lock = acquire_writer_lock(self.cfg.paths.state,
                                             f"a driftwatch dispatcher (pid {os.getpid()})")
        now = self.clock()
        n = 0
        with self.store.session_scope() as s:
            for job in s.scalars(select(CcdJob).where(CcdJob.state == RUNNING)):
                if job.id in self._inflight:
                    continue
                jobstate.requeue(job, now, max_attempts=self.cfg.workers.max_attempts)
                n += 1
        if n:
            log.warning("%d job(s) left running by a previous process were put back", n)
        return n

    # -----------------------------------------------------------------------------------------
    def _ready_query(self, now: datetime, limit: int):
        dep = aliased(CcdJob)
        dq_deadline = now - timedelta(seconds=self.cfg.watch.dq_wait_s)
        q = (select(CcdJob).join(Exposure, CcdJob.exposure_id == Exposure.id)
             .outerjoin(dep, CcdJob.depends_on_id == dep.id)
             .where(CcdJob.state == QUEUED,
                    or_(CcdJob.next_attempt_at.is_(None), CcdJob.next_attempt_at <= now),
                    or_(CcdJob.depends_on_id.is_(None), dep.state.in_((DONE, FAILED, SKIPPED))),
                    or_(CcdJob.kind == KIND_CATALOGUE, Exposure.dq_path.is_not(None),
                        Exposure.dq_missing.is_(True), Exposure.arrived_at <= dq_deadline))
             .order_by(CcdJob.kind == KIND_CCD, CcdJob.id))
        if self.scope is not None:
            q = q.where(CcdJob.id.in_(self.scope))
        if self._suspects:
            q = q.where(CcdJob.id.not_in(self._suspects))
        return q.limit(limit)

    def _build_task(self, job: CcdJob) -> tuple[Callable[[Any], Any], Any]:
        exp = job.exposure
        if job.kind == KIND_CATALOGUE:
            inputs = json.loads(job.inputs or "{}")
            ccds = tuple(c for c in self.cfg.pipeline.ccds if c not in self.cfg.pipeline.skip_ccds)
            task: Any = CatalogueTask(
                g_path=inputs["g_path"], r_path=inputs["r_path"],
                out_path=str(catalogue_out_path(self.cfg.paths.products, job.field or "field")),
                ccds=ccds, pipeline=self.cfg.pipeline, field=job.field or "")
            return self.catalogue_fn, task
        catalogue = None
        if self.cfg.paths.catalogue is not None:
            catalogue = str(self.cfg.paths.catalogue)
        elif job.depends_on is not None and job.depends_on.state == DONE:
            catalogue = job.depends_on.product_path
        task = CcdTask(
            image_path=exp.path, ccd=job.ccd,
            out_dir=str(exposure_out_dir(self.cfg.paths.products, exp.night or "unknown",
                                         exp.expnum or 0)),
            pipeline=self.cfg.pipeline, expnum=exp.expnum or 0,
            input_checksum=exp.checksum or "", dq_path=exp.dq_path, catalogue_path=catalogue,
            alerts_enabled=self.alerts)
        return self.ccd_fn, task

    def submit_ready(self) -> int:
        """Hand as many ready jobs to the executor as it has free workers; return how many."""
        if self.executor.needs_restart():
            self.executor.restart()
            self._generation += 1
        free = self.executor.capacity - len(self._inflight)
        if free <= 0:
            return 0
        now = self.clock()
        batch: list[tuple[int, Callable[[Any], Any], Any]] = []
        with self.store.session_scope() as s:
            if self._suspects:
                # After a pool broke under several jobs, each of them runs alone until the one
                # that kills its worker is found (and charged); the others are not blamed.
                if self._inflight:
                    return 0
                jobs = [j for j in (s.get(CcdJob, i) for i in sorted(self._suspects))
                        if j is not None and j.state == QUEUED][:1]
                if not jobs:
                    self._suspects.clear()
            if not self._suspects:
                jobs = list(s.scalars(self._ready_query(now, free)))
            for job in jobs:
                try:
                    fn, task = self._build_task(job)
                except (KeyError, ValueError, DriftwatchError) as exc:
                    jobstate.mark_running(job, None, now)
                    jobstate.mark_failed(job, now, f"cannot build the task: {exc}",
                                         retryable=False, max_attempts=1, backoff_s=0)
                    log.error("job %s (%s %s): cannot build the task: %s", job.id, job.kind,
                              job.ccd, exc)
                    if job.kind == KIND_CCD:
                        refresh_exposure_state(job.exposure, now)
                    continue
                jobstate.mark_running(job, self.executor.name, now)
                batch.append((job.id, fn, task))
        # Committed as running before any worker sees them: a crash from here on is recovered.
        refused: list[tuple[int, BaseException]] = []
        for job_id, fn, task in batch:
            gen = self._generation
            try:
                future = self.executor.submit(fn, task)
            except Exception as exc:  # a broken pool, or a task that cannot be pickled
                refused.append((job_id, exc))
                continue
            self._inflight[job_id] = (gen, future)
            future.add_done_callback(lambda f, j=job_id, g=gen: self._finished(j, g, f))
        if refused:
            self._refused(refused)
        return len(batch) - len(refused)

    def _finished(self, job_id: int, gen: int, fut: Any) -> None:
        """A future's done callback (the executor's thread): queue it, wake the loop."""
        self._done.put((job_id, gen, fut))
        if self.on_done is not None:
            try:
                self.on_done()
            except Exception:  # never into the executor's thread: the loop's tick still comes
                log.exception("the on_done hook raised")

    def _refused(self, refused: list[tuple[int, BaseException]]) -> None:
        """Jobs the executor would not take: a broken pool (not their fault: back in the queue
        with the try refunded, the pool is rebuilt next turn) or a task it cannot send."""
        now = self.clock()
        with self.store.session_scope() as s:
            for job_id, exc in refused:
                job = s.get(CcdJob, job_id)
                if job is None or job.state != RUNNING:
                    continue
                if self.executor.is_lost_worker(exc):
                    jobstate.requeue(job, now, refund=True)
                    continue
                error = f"the executor refused the task: {type(exc).__name__}: {exc}"
                log.error("job %s (%s %s): %s", job_id, job.kind, job.ccd, error)
                jobstate.mark_failed(job, now, error, retryable=True,
                                     max_attempts=self.cfg.workers.max_attempts,
                                     backoff_s=self.cfg.workers.retry_backoff_s)
                self._finish(s, job, job.exposure, now, error)

    # -----------------------------------------------------------------------------------------
    def collect(self, timeout: float | None = 0.0, *, refill: bool = False) -> list[JobResult]:
        """Record every task that has finished, waiting up to ``timeout`` s for the first.

        With ``refill``, the workers of tasks that came back without an exception are handed
        their next job before the results are written, so no worker waits on the database.
        """
        results: list[JobResult] = []
        try:
            first = self._done.get(timeout=timeout) if timeout else self._done.get_nowait()
        except queue.Empty:
            return results
        items = [first]
        while True:
            try:
                items.append(self._done.get_nowait())
            except queue.Empty:
                break
        if refill:
            for job_id, _gen, fut in items:
                if self._succeeded(fut) and self._inflight.pop(job_id, None) is not None:
                    self._released.add(job_id)
            if self._released:
                self.submit_ready()
        for item in items:
            job_id, gen, fut = item
            try:
                res = self._record(job_id, gen, fut)
            except StoreError as exc:
                # The result could not be written (a bad value, a hook that raised): the job
                # must not be lost nor stay 'running'; it fails this try and is retried.
                log.exception("job %s: recording its result failed", job_id)
                res = self._record_error(job_id, f"cannot record the result: {exc}")
            if res is not None:
                results.append(res)
        return results

    @staticmethod
    def _succeeded(fut: Any) -> bool:
        if isinstance(fut, BaseException):
            return False
        try:
            return fut.exception() is None
        except BaseException:  # cancelled
            return False

    def _record_error(self, job_id: int, error: str) -> JobResult | None:
        now = self.clock()
        with self.store.session_scope() as s:
            job = s.get(CcdJob, job_id)
            if job is None or job.state != RUNNING:
                return None
            jobstate.mark_failed(job, now, error[:2000], retryable=True,
                                 max_attempts=self.cfg.workers.max_attempts,
                                 backoff_s=self.cfg.workers.retry_backoff_s)
            return self._finish(s, job, job.exposure, now, error)

    def _outcome(self, fut: Any) -> tuple[TaskOutcome | None, BaseException | None]:
        if isinstance(fut, BaseException):
            return None, fut
        try:
            exc = fut.exception()
        except BaseException as cancelled:  # CancelledError and friends
            return None, cancelled
        if exc is not None:
            return None, exc
        return fut.result(), None

    def _record(self, job_id: int, gen: int, fut: Any) -> JobResult | None:
        entry = self._inflight.pop(job_id, None)
        if entry is None and job_id not in self._released:
            return None
        self._released.discard(job_id)
        outcome, exc = self._outcome(fut)
        now = self.clock()
        with self.store.session_scope() as s:
            job = s.get(CcdJob, job_id)
            if job is None or job.state != RUNNING:
                log.warning("result for job %s ignored: it is no longer running", job_id)
                return None
            exp = job.exposure
            tag = f"[{exp.night} {exp.expnum} {job.ccd}]"
            if exc is not None:
                if self.executor.is_lost_worker(exc):
                    lost = self._lost_in_generation.setdefault(
                        gen, 1 + sum(1 for g, _ in self._inflight.values() if g == gen))
                    if lost > 1:
                        log.warning("%s worker died with %d jobs in flight: retried alone",
                                    tag, lost)
                        jobstate.requeue(job, now, refund=True)
                        self._suspects.add(job_id)
                        return JobResult(job_id, job.kind, job.ccd, exp.id, job.state,
                                         "worker died (retried alone)")
                    self._suspects.discard(job_id)
                    error = f"the worker process died ({type(exc).__name__}: {exc})"
                else:
                    error = f"{type(exc).__name__}: {exc}"
                log.error("%s failed: %s", tag, error)
                jobstate.mark_failed(job, now, error, retryable=True,
                                     max_attempts=self.cfg.workers.max_attempts,
                                     backoff_s=self.cfg.workers.retry_backoff_s)
                return self._finish(s, job, exp, now, error)
            self._suspects.discard(job_id)
            summary = outcome.summary
            if not getattr(summary, "ok", False):
                error = getattr(summary, "error", None) or "the task reported failure"
                log.error("%s failed: %s", tag, error)
                jobstate.mark_failed(job, now, error,
                                     retryable=bool(getattr(summary, "retryable", False)),
                                     max_attempts=self.cfg.workers.max_attempts,
                                     backoff_s=self.cfg.workers.retry_backoff_s)
                return self._finish(s, job, exp, now, error)
            product = (summary.out_path if isinstance(summary, CatalogueSummary)
                       else summary.product_dir)
            if not _products_present(product):
                error = f"the task said ok but its products are not on disk: {product}"
                log.error("%s %s", tag, error)
                jobstate.mark_failed(job, now, error, retryable=True,
                                     max_attempts=self.cfg.workers.max_attempts,
                                     backoff_s=self.cfg.workers.retry_backoff_s)
                return self._finish(s, job, exp, now, error)
            if isinstance(summary, CatalogueSummary):
                # job.pipeline_version stays the dispatcher's (the idempotency key).
                jobstate.mark_done(job, now, product_path=product,
                                   n_trails=summary.n_stars, worker=outcome.worker)
                log.info("%s catalogue of %s: %d stars", tag, job.field, summary.n_stars)
                return self._finish(s, job, exp, now, None)
            jobstate.mark_done(job, now, product_path=product,
                               n_trails=summary.n_trails, n_matched=summary.n_matched,
                               n_candidates=summary.n_candidates,
                               notes="; ".join(summary.notes) or None, worker=outcome.worker)
            cands = [Candidate(kind=c.kind, star_id=c.star_id, ra=c.ra, dec=c.dec, x=c.x, y=c.y,
                               t_peak_s=_finite(c.t_peak_s), duration_s=_finite(c.duration_s),
                               amplitude=c.amplitude, significance=c.significance,
                               mag=_finite(c.mag), stamp_path=c.stamp_path, created_at=now)
                     for c in summary.candidates]
            job.candidates.extend(cands)
            s.flush()
            if cands and self.alerts and self.on_candidates is not None:
                self.on_candidates(s, job, cands)
            log.info("%s done: %d trails, %d candidates (%.1f s on %s)", tag, summary.n_trails,
                     len(cands), outcome.seconds, outcome.worker)
            return self._finish(s, job, exp, now, None, len(cands))

    def _finish(self, s: Session, job: CcdJob, exp: Exposure, now: datetime, error: str | None,
                n_candidates: int = 0) -> JobResult:
        finished = False
        if job.kind == KIND_CCD:
            finished = refresh_exposure_state(exp, now)
            if finished and self.alerts and self.on_exposure_done is not None:
                self.on_exposure_done(s, exp)
        return JobResult(job.id, job.kind, job.ccd, exp.id, job.state, error, finished,
                         n_candidates)

    # -----------------------------------------------------------------------------------------
    def pending(self) -> tuple[int, datetime | None]:
        """Return (queued jobs in scope, the earliest retry time among them or None)."""
        with self.store.session_scope() as s:
            q = select(CcdJob.next_attempt_at).where(CcdJob.state == QUEUED)
            if self.scope is not None:
                q = q.where(CcdJob.id.in_(self.scope))
            times = list(s.scalars(q))
        future = [t for t in times if t is not None]
        return len(times), (min(future) if future else None)

    def run_until_idle(self, on_result: Callable[[JobResult], None] | None = None,
                       poll_s: float = 0.5) -> None:
        """Dispatch until no job in scope is queued or running (reprocess)."""
        while True:
            self.submit_ready()
            for res in self.collect(timeout=poll_s if self._inflight else 0, refill=True):
                if on_result is not None:
                    on_result(res)
            if self._inflight or not self._done.empty():
                continue
            n_queued, _ = self.pending()
            if n_queued == 0:
                return
            if self.submit_ready() == 0 and not self._inflight:
                time.sleep(poll_s)  # waiting for a retry time (backoff) or a DQ mask

    def shutdown(self, grace: float | None = None) -> tuple[int, int]:
        """Wait up to ``grace`` s for tasks in flight, hand the rest back to the queue, stop.

        Return (tasks recorded during the grace period, jobs handed back to the queue).
        """
        grace = self.cfg.workers.grace_period_s if grace is None else grace
        deadline = time.monotonic() + grace
        recorded = 0
        while self._inflight and time.monotonic() < deadline:
            recorded += len(self.collect(
                timeout=min(0.5, max(deadline - time.monotonic(), 0.01))))
        handed_back = len(self._inflight)
        if self._inflight:
            now = self.clock()
            with self.store.session_scope() as s:
                for job_id in list(self._inflight):
                    job = s.get(CcdJob, job_id)
                    if job is not None and job.state == RUNNING:
                        jobstate.requeue(job, now, refund=True)
            log.warning("%d job(s) still running at shutdown were put back in the queue",
                        len(self._inflight))
            self._inflight.clear()
        self.executor.shutdown(wait=False)
        if self._lock is not None:
            release_writer_lock(self._lock)
            self._lock = None
        return recorded, handed_back
