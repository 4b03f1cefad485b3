"""Read-only reports of the job database: per night and exposure (``driftwatch status``)."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from driftwatch.store.models import (
    FAILED, KIND_CCD, ROLE_DRIFT, Alert, Candidate, CcdJob, Exposure,
)


def nights(session: Session) -> list[str]:
    """Return the nights that have drift exposures, newest first."""
    rows = session.scalars(select(Exposure.night).where(Exposure.role == ROLE_DRIFT,
                                                        Exposure.night.is_not(None))
                           .distinct().order_by(Exposure.night.desc()))
    return list(rows)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def night_report(session: Session, night: str) -> dict[str, Any]:
    """Return one night: totals, throughput, latency, and one entry per drift exposure."""
    exposures = session.scalars(select(Exposure).where(Exposure.night == night,
                                                       Exposure.role == ROLE_DRIFT)
                                .order_by(Exposure.expnum, Exposure.id)).all()
    exp_ids = [e.id for e in exposures]
    jobs = session.scalars(select(CcdJob).where(CcdJob.exposure_id.in_(exp_ids),
                                                CcdJob.kind == KIND_CCD)).all()
    cand_counts = dict(session.execute(
        select(CcdJob.exposure_id, func.count(Candidate.id))
        .join(Candidate, Candidate.job_id == CcdJob.id)
        .where(CcdJob.exposure_id.in_(exp_ids)).group_by(CcdJob.exposure_id)).all())
    alert_rows = session.execute(
        select(Alert.state, func.count()).where(Alert.night == night).group_by(Alert.state)).all()
    by_exp: dict[int, list[CcdJob]] = defaultdict(list)
    for job in jobs:
        by_exp[job.exposure_id].append(job)

    out_exposures = []
    latencies = []
    for exp in exposures:
        ejobs = by_exp.get(exp.id, [])
        counts = Counter(j.state for j in ejobs)
        latency = ((exp.finished_at - exp.arrived_at).total_seconds()
                   if exp.finished_at and exp.arrived_at else None)
        if latency is not None:
            latencies.append(latency)
        out_exposures.append({
            "expnum": exp.expnum, "path": exp.path, "state": exp.state, "field": exp.field,
            "dq": exp.dq_path is not None, "jobs": dict(sorted(counts.items())),
            "candidates": int(cand_counts.get(exp.id, 0)), "latency_s": latency,
            "failures": [{"ccd": j.ccd, "attempts": j.attempts, "error": j.error}
                         for j in ejobs if j.state == FAILED],
            "skipped": sorted({j.reason for j in ejobs if j.reason}),
        })
    finished = [j for j in jobs if j.finished_at is not None and j.state != "skipped"]
    started = [j.started_at for j in jobs if j.started_at is not None]
    throughput = None
    if finished and started:
        span = (max(j.finished_at for j in finished) - min(started)).total_seconds()
        done = sum(1 for j in finished if j.state == "done")
        throughput = done / span * 60.0 if span > 0 else None
    durations = [j.duration_s for j in jobs if j.state == "done" and j.duration_s is not None]
    return {
        "night": night,
        "exposures": out_exposures,
        "n_exposures": len(exposures),
        "jobs": dict(sorted(Counter(j.state for j in jobs).items())),
        "candidates": int(sum(cand_counts.values())),
        "alerts": {state: n for state, n in alert_rows},
        "throughput_ccd_per_min": throughput,
        "ccd_duration_s_median": _median(durations),
        "latency_s_median": _median(latencies),
        "latency_s_max": max(latencies) if latencies else None,
    }
