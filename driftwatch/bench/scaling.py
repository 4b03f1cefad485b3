"""Scaling of the real ``reduce_ccd`` with the number of workers: local pool and Dask.

The CCDs are those of the ``exposure`` area's simulated drift exposure (the same cached files
and field catalogue; full mode: full-size CCDs with 1,450 stars, ~1,000 trails each; quick:
1024x512 px with 250 stars).
A run is a batch of CCD jobs (the exposure's CCDs, repeated as distinct exposures, i.e. rows
with their own exposure number pointing at links to the same file) driven to the end by the
real :class:`~driftwatch.service.dispatcher.Dispatcher` on a SQLite job table, with

- the local process pool (:class:`~driftwatch.service.executor.LocalExecutor`) of 1, 2, ..,
  N = ``os.cpu_count()`` workers;
- a Dask ``LocalCluster`` (:class:`~driftwatch.service.executor.DaskExecutor`, one thread per
  worker process) of 1 and 2 workers.

A round is one exposure's CCDs (61 in full mode). The backends are measured one after the
other, each with only its own processes alive.

``cores_used_by_other_processes`` is the CPU the rest of the machine used meanwhile (system busy
time minus this process tree's): on a shared 2-core machine, a speedup below 2 is explained by
it. Every configuration is warmed up first (its workers import the pipeline), then the rounds
alternate between the configurations of a backend so that the load of a shared machine weighs
on them alike.
Figures: CCDs per second (median/min/max over rounds), the ratio of medians against the same
backend's 1 worker (target >= 1.8 for 2 workers), the worker seconds per CCD (timed in the
worker around the task), and the occupancy: sum of worker seconds / (workers x wall time), the
fraction of the time the workers had a CCD in hand.

Cores needed to keep up with DECam (61 CCDs every 45 s), extrapolated from these figures::

    cores_needed = ceil(61 * t1 / (45 s * efficiency))

where ``t1`` is the median worker seconds of one CCD with 1 local worker and ``efficiency`` =
speedup(N) / N measured at the largest N. It assumes the
efficiency measured at N holds for more cores; in quick mode the CCDs are a sixteenth of the
full size, so the figure is not DECam's.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from driftwatch.bench.exposure import _OtherCpu, inputs

__all__ = ["run"]

NIGHT = "2026-11-20"
FULL_EXPOSURE_CCDS = 61
CADENCE_S = 45.0


def _no_alert(session: Any, exposure: Any) -> None:
    """Exposure-done hook that queues nothing: the exposure area measures alerts."""


class _Timing:
    """Wraps an executor; records each task's own seconds in its worker (``TaskOutcome``).

    The job table's ``duration_s`` runs from hand-over to record, which with Dask includes the
    wait in a worker's queue (the dispatcher keeps 2 tasks per Dask thread in flight).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    def submit(self, fn: Any, task: Any) -> Any:
        fut = self.inner.submit(fn, task)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: Any) -> None:
        try:
            self.seconds.append(float(fut.result().seconds))
        except BaseException:  # noqa: BLE001 - a failed task is reported by the job table
            pass


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def _setup(root: Path, inp: Any, copies: int):
    """A config, a job store and ``copies`` exposures of the input's CCDs; return the job ids."""
    from driftwatch.config import config_from_dict
    from driftwatch.store.db import Store
    from driftwatch.store.models import CcdJob, Exposure

    (root / "incoming").mkdir(parents=True)
    cfg = config_from_dict(
        {"paths": {"watch": [str(root / "incoming")], "products": str(root / "products"),
                   "state": str(root / "state"), "catalogue": str(inp.catalogue)},
         "pipeline": {"ccds": list(inp.ccds), "skip_ccds": []},
         "workers": {"retry_backoff_s": 0.0, "max_attempts": 1, "max_tasks_per_worker": 1000}},
        base=root, environ={})
    store = Store.from_config(cfg)
    with store.session_scope() as s:
        for k in range(copies):
            link = root / "incoming" / f"copy{k}" / inp.image.name
            link.parent.mkdir()
            link.symlink_to(inp.image)
            exp = Exposure(path=str(link), night=NIGHT, expnum=inp.expnum + 1000 + k,
                           band="VR", role="drift", state="planned", checksum=f"{k:064d}",
                           dq_path=str(inp.dq), field="bench")
            s.add(exp)
            for ccd in inp.ccds:
                s.add(CcdJob(exposure=exp, kind="ccd", ccd=ccd, state="queued", attempts=0,
                             input_checksum=exp.checksum, pipeline_version="bench"))
        s.flush()
        ids = list(s.scalars(select(CcdJob.id).where(CcdJob.kind == "ccd")))
    return cfg, store, ids


def _round(cfg, store, executor, ids: list[int]) -> tuple[float, list[float]]:
    """Reset the jobs in scope, dispatch them to the end; return (wall s, worker s per CCD)."""
    from driftwatch.pipeline.ccd import reduce_ccd
    from driftwatch.service.dispatcher import Dispatcher
    from driftwatch.store import jobs as jobstate
    from driftwatch.store.models import CcdJob, utcnow

    with store.session_scope() as s:
        for job in s.scalars(select(CcdJob).where(CcdJob.id.in_(ids))):
            jobstate.reset(job, utcnow(), checksum=None, reason="bench")
    timing = _Timing(executor)
    d = Dispatcher(cfg, store, timing, ccd_fn=reduce_ccd, alerts=True,
                   on_exposure_done=_no_alert, scope=ids)
    t0 = time.perf_counter()
    d.run_until_idle(poll_s=0.01)
    elapsed = time.perf_counter() - t0
    with store.session_scope() as s:
        rows = s.execute(select(CcdJob.state, CcdJob.error).where(CcdJob.id.in_(ids))).all()
    bad = [(st, err) for st, err in rows if st != "done"]
    if bad:
        raise RuntimeError(f"{len(bad)} reduce_ccd job(s) did not succeed: {bad[:3]}")
    return elapsed, timing.seconds


def run(quick: bool = False) -> dict[str, Any]:
    """Measure; ``quick``: the small CCDs of the quick exposure, one round."""
    from driftwatch.service.executor import DaskExecutor, LocalExecutor

    inp = inputs(quick)
    n_cpu = os.cpu_count() or 1
    copies = 2 if quick else 1
    # full: a whole exposure per round (the unit of work), so that the last CCDs' tail weighs
    # as it does on a night
    ccds_per_round = len(inp.ccds) * copies
    rounds = 1 if quick else 3
    out: dict[str, Any] = {
        "task": "driftwatch.pipeline.ccd.reduce_ccd through the Dispatcher",
        "ccd_shape": f"{inp.shape[0]}x{inp.shape[1]}", "stars_per_ccd": inp.stars_per_ccd,
        "ccds_per_round": ccds_per_round, "rounds": rounds, "cpus": n_cpu,
    }
    backends = {
        "local": [(f"local_{n}", n, lambda n=n: LocalExecutor(
            n, 1000, preload=("driftwatch.pipeline.ccd",))) for n in range(1, n_cpu + 1)],
        "dask": [(f"dask_{n}", n, lambda n=n: DaskExecutor("local", n_workers=n))
                 for n in (1, 2)],
    }
    rates: dict[str, list[float]] = {}
    ccd_s: dict[str, list[float]] = {}
    occ: dict[str, list[float]] = {}
    others: dict[str, list[float]] = {}
    workers: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="dw-bench-scaling-") as tmp:
        root = Path(tmp)
        cfg, store, ids = _setup(root, inp, copies)
        ids = ids[:ccds_per_round]
        try:
            # One backend at a time: an idle Dask cluster (scheduler, nannies, workers and
            # their periodic callbacks) takes CPU from a local pool measured beside it, and
            # a deployment runs one or the other.
            for specs in backends.values():
                configs: dict[str, Any] = {}
                try:
                    for name, n, make in specs:
                        configs[name] = make()
                        workers[name] = n
                    for name, ex in configs.items():  # warm-up: one CCD per worker, untimed
                        _round(cfg, store, ex, ids[:workers[name]])
                    for _ in range(rounds):  # alternate, so a shared machine's load weighs alike
                        for name, ex in configs.items():
                            probe = _OtherCpu()
                            elapsed, durations = _round(cfg, store, ex, ids)
                            others.setdefault(name, []).append(probe.cores())
                            rates.setdefault(name, []).append(len(ids) / elapsed)
                            ccd_s.setdefault(name, []).extend(durations)
                            occ.setdefault(name, []).append(
                                sum(durations) / (workers[name] * elapsed))
                finally:
                    for ex in configs.values():
                        ex.shutdown(wait=True)
        finally:
            store.dispose()
    for name in rates:
        backend, n = name.rsplit("_", 1)
        base = statistics.median(rates[f"{backend}_1"])
        out[name] = {"workers": int(n), "rate_ccd_per_s": _spread(rates[name]),
                     "speedup_vs_1_worker": statistics.median(rates[name]) / base,
                     "ccd_worker_s": _spread(ccd_s[name]), "occupancy": _spread(occ[name]),
                     "cores_used_by_other_processes": _spread(others[name])}
    out["speedup_2_workers_local"] = out["local_2"]["speedup_vs_1_worker"] if n_cpu >= 2 else None
    out["speedup_2_workers_dask"] = out["dask_2"]["speedup_vs_1_worker"]
    out["meets_target_1_8x_local"] = (out["speedup_2_workers_local"] or 0) >= 1.8
    out["dask_vs_local_rate_2_workers"] = (statistics.median(rates["dask_2"])
                                           / statistics.median(rates["local_2"])
                                           if n_cpu >= 2 else None)
    t1 = out["local_1"]["ccd_worker_s"]["median"]
    top = f"local_{n_cpu}"
    efficiency = out[top]["speedup_vs_1_worker"] / n_cpu
    out["extrapolation"] = {
        "t1_ccd_s": t1, "efficiency_at_n": efficiency, "n": n_cpu,
        "cores_needed_61_ccds_45s": math.ceil(FULL_EXPOSURE_CCDS * t1 / (CADENCE_S * efficiency)),
        "formula": "ceil(61 * t1 / (45 s * speedup(N)/N))",
        "valid_for": ("quick mode: small CCDs, NOT a DECam figure" if quick
                      else f"full-size CCDs with {inp.stars_per_ccd} stars"),
    }
    return out


if __name__ == "__main__":
    from driftwatch.bench import flatten

    res = run(quick="--quick" in sys.argv)
    for key, value in flatten(res).items():
        print(f"{key:<60} {value:.4g}" if isinstance(value, float) else f"{key:<60} {value}")
