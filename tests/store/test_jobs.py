"""The job state machine: pure decisions, and each transition on a real SQLite file."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from driftwatch.store import jobs
from driftwatch.store.db import Store
from driftwatch.store.models import CcdJob, Exposure, utcnow

T0 = datetime(2026, 11, 21, 5, 0, tzinfo=timezone.utc)


def rec(state="done", attempts=1, checksum="abc", version="1.0"):
    return SimpleNamespace(state=state, attempts=attempts, input_checksum=checksum,
                           pipeline_version=version)


@pytest.mark.parametrize("job, kw, process, reset", [
    (None, {}, True, False),
    (rec("done"), {}, False, False),
    (rec("done"), {"force": True}, True, True),
    (rec("done", checksum="old"), {}, True, True),
    (rec("done", version="0.9"), {}, True, True),
    (rec("queued"), {}, False, False),
    (rec("running"), {}, False, False),
    (rec("skipped"), {}, False, False),
    (rec("failed", attempts=1), {}, True, False),
    (rec("failed", attempts=3), {}, False, False),
    (rec("failed", attempts=3), {"retry_failed": True}, True, True),
    (rec("failed", attempts=3, checksum="old"), {}, True, True),
])
def test_should_process(job, kw, process, reset):
    d = jobs.should_process(job, "abc", "1.0", 3, **kw)
    assert (d.process, d.reset) == (process, reset), d.reason
    assert d.reason


def test_is_retryable_and_backoff():
    assert jobs.is_retryable(True, 1, 3)
    assert not jobs.is_retryable(True, 3, 3)
    assert not jobs.is_retryable(False, 1, 3)
    assert jobs.next_attempt_time(T0, 1, 30) == T0 + timedelta(seconds=30)
    assert jobs.next_attempt_time(T0, 3, 30) == T0 + timedelta(seconds=120)
    assert jobs.next_attempt_time(T0, 30, 30) == T0 + timedelta(seconds=jobs.MAX_BACKOFF_S)


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield s
    s.dispose()


def _job(store) -> int:
    with store.session_scope() as s:
        exp = Exposure(path="/x/a.fits", role="drift", state="planned", night="2026-11-20")
        job = CcdJob(exposure=exp, ccd="S4", input_checksum="abc", pipeline_version="1.0")
        s.add(job)
        s.flush()
        return job.id


def _apply(store, job_id, fn, *args, **kw):
    with store.session_scope() as s:
        job = s.get(CcdJob, job_id)
        out = fn(job, *args, **kw)
    with store.session_scope() as s:  # read back from the file
        return s.get(CcdJob, job_id), out


def test_queued_running_done(store):
    jid = _job(store)
    job, _ = _apply(store, jid, jobs.mark_running, "host:1", T0)
    assert (job.state, job.attempts, job.worker, job.started_at) == ("running", 1, "host:1", T0)
    job, _ = _apply(store, jid, jobs.mark_done, T0 + timedelta(seconds=2), product_path="/p",
                    n_trails=5, n_candidates=1)
    assert (job.state, job.product_path, job.n_trails, job.duration_s) == ("done", "/p", 5, 2.0)
    with pytest.raises(jobs.InvalidTransition):
        _apply(store, jid, jobs.mark_running, "h", T0)


def test_failure_retried_with_backoff_then_failed_for_good(store):
    jid = _job(store)
    for attempt in (1, 2):
        _apply(store, jid, jobs.mark_running, "h", T0)
        job, retried = _apply(store, jid, jobs.mark_failed, T0, f"boom {attempt}",
                              retryable=True, max_attempts=3, backoff_s=10)
        assert retried and job.state == "queued" and job.error == f"boom {attempt}"
        assert job.next_attempt_at == T0 + timedelta(seconds=10 * 2 ** (attempt - 1))
    _apply(store, jid, jobs.mark_running, "h", T0)
    job, retried = _apply(store, jid, jobs.mark_failed, T0, "boom 3", retryable=True,
                          max_attempts=3, backoff_s=10)
    assert not retried and job.state == "failed" and job.attempts == 3
    assert job.error == "boom 3"


def test_not_retryable_fails_at_once(store):
    jid = _job(store)
    _apply(store, jid, jobs.mark_running, "h", T0)
    job, retried = _apply(store, jid, jobs.mark_failed, T0, "bad input", retryable=False,
                          max_attempts=3, backoff_s=0)
    assert not retried and job.state == "failed" and job.attempts == 1


def test_skipped_and_requeue_and_reset(store):
    jid = _job(store)
    job, _ = _apply(store, jid, jobs.mark_skipped, "dead CCD", T0)
    assert (job.state, job.reason) == ("skipped", "dead CCD")
    job, _ = _apply(store, jid, jobs.reset, T0, checksum="new", reason="forced")
    assert (job.state, job.attempts, job.input_checksum, job.reason) == ("queued", 0, "new", None)
    _apply(store, jid, jobs.mark_running, "h", T0)
    job, requeued = _apply(store, jid, jobs.requeue, T0, max_attempts=3)
    assert requeued and job.state == "queued" and job.attempts == 1   # the lost try counts
    _apply(store, jid, jobs.mark_running, "h", T0)
    job, requeued = _apply(store, jid, jobs.requeue, T0, refund=True, max_attempts=3)
    assert requeued and job.attempts == 1                              # refunded
    for _ in range(2):
        _apply(store, jid, jobs.mark_running, "h", T0)
        job, requeued = _apply(store, jid, jobs.requeue, T0, max_attempts=3)
    assert not requeued and job.state == "failed" and "interrupted" in job.error


def test_utc_times_roundtrip(store):
    jid = _job(store)
    with store.session_scope() as s:
        job = s.get(CcdJob, jid)
        assert job.created_at.tzinfo is not None
        assert abs((utcnow() - job.created_at).total_seconds()) < 60
