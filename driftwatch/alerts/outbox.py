"""The alerts outbox: every message is first a row of the ``alerts`` table, then sent.

A row is written with a unique de-duplication key, so queueing the same message twice (a
reprocessed exposure, a restarted daemon announcing the same failure) is a no-op. The sender
(:mod:`driftwatch.alerts.sender`) delivers pending rows oldest first per route.

States of ``alerts.state``:

``pending``
    waiting to be sent (``next_attempt_at``, when set, is the earliest time of the next try).
``sending``
    a request is in flight. A sender killed at that moment leaves the row so; the next sender
    sends it again (at-least-once: Slack may then show it twice) and logs that it does.
``sent``
    Slack answered 200 (``sent_at``).
``failed``
    given up: a 4xx other than 429, or ``alerts.max_attempts`` server errors (``last_error``).
    ``attempts`` counts the tries that got an HTTP answer other than 429: an unreachable server
    (connection refused, timeout) never uses them up, so an outage does not fail messages.
    ``driftwatch alerts retry`` puts failed rows back to pending.
``dry_run``
    ``alerts.dry_run``: the JSON went to the log and to ``<products>/alerts-dry-run/``, not to Slack.
``suppressed``
    ``alerts.quiet``: a candidate message recorded but not sent (operations messages still are).

De-duplication keys: ``cand/<night>/<expnum>/<route>/<content digest>`` for an exposure's
candidates (reprocessing that finds the same candidates queues nothing; different candidates are
sent as an update, only when the caller asks for alerts), ``ops/<what>/...`` for operations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from driftwatch.alerts import format as fmt
from driftwatch.alerts.format import AlertCandidate, AlertExposure, NightSummary
from driftwatch.config import AlertsConfig, Config
from driftwatch.store.models import (
    ALERT_FAILED,
    ALERT_PENDING,
    ALERT_SENT,
    DONE,
    EXP_FAILED,
    FAILED,
    KIND_CCD,
    ROLE_DRIFT,
    SKIPPED,
    Alert,
    Candidate,
    CcdJob,
    Exposure,
    utcnow,
)
from driftwatch.tasks import CandidateSummary

log = logging.getLogger(__name__)

PENDING = ALERT_PENDING
SENDING = "sending"
SENT = ALERT_SENT
FAILED_STATE = ALERT_FAILED
DRY_RUN = "dry_run"
SUPPRESSED = "suppressed"
STATES = (PENDING, SENDING, SENT, FAILED_STATE, DRY_RUN, SUPPRESSED)

KIND_CANDIDATES = "candidates"
OPS_ROUTE_KEY = "ops"


def route_for(alerts: AlertsConfig, kind: str) -> str:
    """Return the route of a candidate kind (or ``'ops'``): ``alerts.kind_routes`` or default."""
    return alerts.kind_routes.get(kind, "default")


def enqueue(session: Session, *, dedup_key: str, kind: str, route: str, payload: fmt.Payload,
            night: str | None = None, state: str = PENDING,
            now: datetime | None = None) -> Alert | None:
    """Write one message to the outbox; return None when its key is already there."""
    if session.scalar(select(Alert.id).where(Alert.dedup_key == dedup_key)) is not None:
        return None
    alert = Alert(dedup_key=dedup_key, kind=kind, route=route, night=night, state=state,
                  payload=json.dumps(payload, ensure_ascii=False), attempts=0,
                  created_at=now or utcnow())
    try:
        with session.begin_nested():
            session.add(alert)
    except IntegrityError:  # another writer queued the same key between our check and insert
        return None
    log.info("alert queued: %s (route %s, %s)", dedup_key, route, state)
    return alert


# ---------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------
def content_version(items: Sequence[AlertCandidate]) -> str:
    """Return a short digest of a candidate list that survives float jitter of a re-run."""
    def r(value: float | None, digits: int) -> str:
        return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "-"

    rows = sorted(
        (it.ccd, it.candidate.kind,
         it.candidate.star_id or f"{r(it.candidate.x, 0)},{r(it.candidate.y, 0)}",
         r(it.candidate.t_peak_s, 1))
        for it in items
    )
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:12]


def queue_exposure_alert(session: Session, cfg: Config, exposure: AlertExposure,
                         items: Sequence[AlertCandidate], *,
                         now: datetime | None = None) -> list[Alert]:
    """Queue the message(s) of one exposure: one per route of its alerting candidates.

    Candidates below ``alerts.min_significance`` or of kinds not in ``alerts.kinds`` are left
    out; no message is queued when none is left. In quiet mode the rows are ``suppressed``.
    """
    a = cfg.alerts
    if not a.enabled:
        return []
    chosen = fmt.select_candidates(items, a.min_significance, a.kinds)
    by_route: dict[str, list[AlertCandidate]] = defaultdict(list)
    for it in chosen:
        by_route[route_for(a, it.candidate.kind)].append(it)
    queued = []
    for route, group in sorted(by_route.items()):
        prefix = f"cand/{exposure.night}/{exposure.label}/{route}/"
        key = prefix + content_version(group)
        if session.scalar(select(Alert.id).where(Alert.dedup_key == key)) is not None:
            continue
        earlier = session.scalar(select(func.count()).select_from(Alert).where(
            Alert.dedup_key.startswith(prefix, autoescape=True),
            Alert.state.in_((SENT, DRY_RUN, PENDING, SENDING))))
        payload = fmt.format_candidates(exposure, group, products_root=str(cfg.paths.products),
                                        products_url=a.products_url, update=bool(earlier))
        alert = enqueue(session, dedup_key=key, kind=KIND_CANDIDATES, route=route,
                        payload=payload, night=exposure.night,
                        state=SUPPRESSED if a.quiet else PENDING, now=now)
        if alert is not None:
            queued.append(alert)
    return queued


def _common_dir(paths: Sequence[str]) -> str | None:
    paths = [p for p in paths if p]
    if not paths:
        return None
    try:
        return os.path.commonpath(paths)
    except ValueError:
        return None


def exposure_for_alert(exposure: Exposure, product_dirs: Sequence[str] = ()) -> AlertExposure:
    """Describe an exposure row for a message."""
    return AlertExposure(expnum=exposure.expnum, night=exposure.night, field=exposure.field,
                         band=exposure.band, date_obs=exposure.date_obs, path=exposure.path,
                         product_dir=_common_dir(product_dirs))


def queue_exposure_alert_from_db(session: Session, cfg: Config, exposure_id: int, *,
                                 now: datetime | None = None) -> list[Alert]:
    """Queue an exposure's candidate message from its rows (call when all its CCDs are done)."""
    exposure = session.get(Exposure, exposure_id)
    if exposure is None:
        return []
    jobs = session.scalars(select(CcdJob).where(CcdJob.exposure_id == exposure_id,
                                                CcdJob.kind == KIND_CCD)).all()
    items = []
    for job in jobs:
        for c in session.scalars(select(Candidate).where(Candidate.job_id == job.id)).all():
            summary = CandidateSummary(
                kind=c.kind, star_id=c.star_id, ra=c.ra, dec=c.dec, x=c.x, y=c.y,
                t_peak_s=c.t_peak_s, duration_s=c.duration_s, amplitude=c.amplitude,
                significance=c.significance, mag=c.mag, stamp_path=c.stamp_path or c.plot_path)
            items.append(AlertCandidate(job.ccd, summary, job.product_path))
    product_dirs = [j.product_path for j in jobs if j.product_path]
    return queue_exposure_alert(session, cfg, exposure_for_alert(exposure, product_dirs), items,
                                now=now)


# ---------------------------------------------------------------------------------------------
# Operations messages
# ---------------------------------------------------------------------------------------------
def queue_ops(session: Session, cfg: Config, what: str, key: str, payload: fmt.Payload, *,
              night: str | None = None, now: datetime | None = None) -> Alert | None:
    """Queue an operations message (sent even in quiet mode) under ``ops/<what>/<key>``."""
    if not cfg.alerts.enabled:
        return None
    return enqueue(session, dedup_key=f"ops/{what}/{key}"[:255], kind=f"ops:{what}",
                   route=route_for(cfg.alerts, OPS_ROUTE_KEY), payload=payload, night=night,
                   now=now)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def queue_daemon_started(session: Session, cfg: Config, *, version: str,
                         at: datetime | None = None, host: str | None = None,
                         pid: int | None = None) -> Alert | None:
    at, host, pid = at or utcnow(), host or socket.gethostname(), pid or os.getpid()
    payload = fmt.format_daemon_started(host, pid, version, at, [str(w) for w in cfg.paths.watch])
    return queue_ops(session, cfg, "started", f"{host}/{pid}/{at.isoformat()}", payload, now=at)


def queue_daemon_stopped(session: Session, cfg: Config, *, reason: str = "stopped",
                         at: datetime | None = None, host: str | None = None,
                         pid: int | None = None) -> Alert | None:
    at, host, pid = at or utcnow(), host or socket.gethostname(), pid or os.getpid()
    payload = fmt.format_daemon_stopped(host, pid, at, reason)
    return queue_ops(session, cfg, "stopped", f"{host}/{pid}/{at.isoformat()}", payload, now=at)


def queue_exposure_failed(session: Session, cfg: Config, exposure_id: int,
                          error: str | None = None) -> Alert | None:
    """Report once (per file content) that an exposure failed."""
    exposure = session.get(Exposure, exposure_id)
    if exposure is None:
        return None
    states = session.execute(select(CcdJob.state, func.count()).where(
        CcdJob.exposure_id == exposure_id, CcdJob.kind == KIND_CCD).group_by(CcdJob.state)).all()
    counts = dict(states)
    n_ccds = sum(counts.values())
    reason = error or exposure.error
    if not reason:
        last = session.scalar(select(CcdJob.error).where(
            CcdJob.exposure_id == exposure_id, CcdJob.state == FAILED).order_by(CcdJob.id).limit(1))
        reason = f"first CCD error: {last}" if last else "no error recorded"
    payload = fmt.format_exposure_failed(exposure_for_alert(exposure), reason,
                                         counts.get(FAILED, 0), n_ccds)
    return queue_ops(session, cfg, "exposure-failed",
                     f"{exposure.id}/{exposure.checksum or ''}", payload, night=exposure.night)


def queue_file_incomplete(session: Session, cfg: Config, path: str, waited_s: float,
                          size_bytes: int | None = None) -> Alert | None:
    """Report once that a file never completed."""
    payload = fmt.format_file_incomplete(path, waited_s, size_bytes)
    return queue_ops(session, cfg, "incomplete", _short_hash(path), payload)


def night_counts(session: Session, night: str) -> dict[str, int]:
    """Return the night's CCD jobs counted by state."""
    rows = session.execute(
        select(CcdJob.state, func.count()).join(Exposure, CcdJob.exposure_id == Exposure.id)
        .where(Exposure.night == night, CcdJob.kind == KIND_CCD).group_by(CcdJob.state)).all()
    return {state: n for state, n in rows}


def failure_rate_exceeded(n_failed: int, n_finished: int, threshold: float,
                          min_finished: int = 10) -> bool:
    """Decide whether a night's failure rate deserves a message (not on the first few jobs)."""
    return n_finished >= min_finished and n_failed / n_finished > threshold


def queue_failure_rate_if_over(session: Session, cfg: Config, night: str,
                               min_finished: int = 10) -> Alert | None:
    """Report once per night when the fraction of failed CCD jobs passes the threshold."""
    counts = night_counts(session, night)
    n_failed = counts.get(FAILED, 0)
    n_finished = n_failed + counts.get(DONE, 0)
    if not failure_rate_exceeded(n_failed, n_finished, cfg.alerts.failure_rate_threshold,
                                 min_finished):
        return None
    payload = fmt.format_failure_rate(night, n_failed, n_finished,
                                      cfg.alerts.failure_rate_threshold)
    return queue_ops(session, cfg, "failure-rate", night, payload, night=night)


def night_summary(session: Session, night: str) -> NightSummary:
    """Count a night's exposures, CCD jobs, candidates and alerts; median latency."""
    exposures = session.scalars(select(Exposure).where(Exposure.night == night,
                                                       Exposure.role == ROLE_DRIFT)).all()
    counts = night_counts(session, night)
    n_candidates = session.scalar(
        select(func.count()).select_from(Candidate).join(CcdJob, Candidate.job_id == CcdJob.id)
        .join(Exposure, CcdJob.exposure_id == Exposure.id).where(Exposure.night == night)) or 0
    n_alerted = session.scalar(select(func.count()).select_from(Alert).where(
        Alert.night == night, Alert.kind == KIND_CANDIDATES, Alert.state.in_((SENT, DRY_RUN)))) or 0
    latencies = [(e.finished_at - e.arrived_at).total_seconds() for e in exposures
                 if e.finished_at is not None and e.arrived_at is not None]
    return NightSummary(
        night=night, n_exposures=len(exposures), n_ccds_done=counts.get(DONE, 0),
        n_ccds_failed=counts.get(FAILED, 0), n_ccds_skipped=counts.get(SKIPPED, 0),
        n_candidates=n_candidates, n_alerted=n_alerted,
        median_latency_s=statistics.median(latencies) if latencies else None,
        n_exposures_failed=sum(1 for e in exposures if e.state == EXP_FAILED))


def summary_due(now: datetime, summary_time_utc: str, longitude_deg: float,
                window: timedelta = timedelta(hours=12)) -> str | None:
    """Return the night whose summary is due at ``now``, or None outside the summary window.

    The summary of the night that ended before today's ``summary_time_utc`` is due from that
    time for ``window`` (a daemon started later the same day still sends it, not days later).
    The night is the local date (by ``longitude_deg``) at 12 hours before the summary time.
    """
    hh, mm = (int(x) for x in summary_time_utc.split(":"))
    now = now.astimezone(timezone.utc)
    scheduled = datetime.combine(now.date(), time(hh, mm), tzinfo=timezone.utc)
    if now < scheduled:
        scheduled -= timedelta(days=1)
    if now - scheduled >= window:
        return None
    local = scheduled + timedelta(hours=longitude_deg / 15.0) - timedelta(hours=12)
    return local.date().isoformat()


def queue_nightly_summary_if_due(session: Session, cfg: Config,
                                 now: datetime | None = None) -> Alert | None:
    """Queue the nightly summary once, at ``alerts.summary_time_utc`` (call from the main loop)."""
    night = summary_due(now or utcnow(), cfg.alerts.summary_time_utc,
                        cfg.pipeline.observatory_longitude_deg)
    if night is None or not cfg.alerts.enabled:
        return None
    key = f"ops/summary/{night}"
    if session.scalar(select(Alert.id).where(Alert.dedup_key == key)) is not None:
        return None
    summary = night_summary(session, night)
    if summary.n_exposures == 0:
        return None  # no observing that night: no message
    return queue_ops(session, cfg, "summary", night, fmt.format_nightly_summary(summary),
                     night=night, now=now)


def queue_outage_restored(session: Session, cfg: Config, route: str, since: datetime,
                          restored: datetime, n_late: int, last_error: str | None) -> Alert | None:
    payload = fmt.format_outage_restored(route, since, restored, n_late, last_error)
    return queue_ops(session, cfg, "restored", f"{route}/{since.isoformat()}", payload)


# ---------------------------------------------------------------------------------------------
# Inspection and operator actions
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlertRow:
    """A row of ``driftwatch alerts list`` (no payload, never a URL)."""

    id: int
    created_at: datetime
    route: str
    kind: str
    state: str
    attempts: int
    dedup_key: str
    sent_at: datetime | None
    next_attempt_at: datetime | None
    last_error: str | None


def list_alerts(session: Session, *, pending_only: bool = False, limit: int = 200) -> list[AlertRow]:
    """Return the newest ``limit`` rows, oldest first (pending only: pending and sending)."""
    q = select(Alert).order_by(Alert.id.desc()).limit(limit)
    if pending_only:
        q = q.where(Alert.state.in_((PENDING, SENDING)))
    rows = list(session.scalars(q))[::-1]
    return [AlertRow(a.id, a.created_at, a.route, a.kind, a.state, a.attempts, a.dedup_key,
                     a.sent_at, a.next_attempt_at, a.last_error) for a in rows]


def state_counts(session: Session, night: str | None = None) -> dict[str, int]:
    """Count the outbox rows by state (optionally of one night)."""
    q = select(Alert.state, func.count()).group_by(Alert.state)
    if night is not None:
        q = q.where(Alert.night == night)
    return {s: n for s, n in session.execute(q).all()}


def retry_failed(session: Session, ids: Sequence[int] = ()) -> int:
    """Put failed rows (all, or those of ``ids``) back to pending; return how many."""
    q = update(Alert).where(Alert.state == FAILED_STATE)
    if ids:
        q = q.where(Alert.id.in_(list(ids)))
    result = session.execute(q.values(state=PENDING, attempts=0, next_attempt_at=None))
    return int(result.rowcount or 0)


def recover_in_flight(session: Session) -> list[int]:
    """Put rows left ``sending`` by a dead sender back to pending; return their ids."""
    ids = list(session.scalars(select(Alert.id).where(Alert.state == SENDING).order_by(Alert.id)))
    if ids:
        session.execute(update(Alert).where(Alert.id.in_(ids)).values(state=PENDING))
    return ids


# ---------------------------------------------------------------------------------------------
# The dispatcher's hook
# ---------------------------------------------------------------------------------------------
def exposure_done_hook(cfg: Config) -> Callable[[Session, Exposure], None]:
    """Return the dispatcher's ``on_exposure_done(session, exposure)`` hook.

    It runs inside the transaction that records the exposure's last CCD, and queues: the
    exposure's candidate message(s); "exposure failed" when it ended failed; the night's
    failure-rate message when the rate passes the threshold (each once, by key).
    """

    def on_exposure_done(session: Session, exposure: Exposure) -> None:
        queue_exposure_alert_from_db(session, cfg, exposure.id)
        if exposure.state == EXP_FAILED:
            queue_exposure_failed(session, cfg, exposure.id)
        if exposure.night:
            queue_failure_rate_if_over(session, cfg, exposure.night)

    return on_exposure_done
