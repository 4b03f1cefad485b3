"""Benchmark of the dispatcher's overhead per job.

A trivial task (make the CCD folder, write a few bytes) run through (a) an inline executor (no
process: only the dispatcher's own work, i.e. the database transactions that mark a job running
and record its result) and (b) the local process pool of 2 workers (adds pickling and
inter-process round trips). Target <= 20 ms.

The scaling of the real ``reduce_ccd`` with the number of workers (local pool and Dask) is
the ``scaling`` area (driftwatch/bench/scaling.py).

Every figure is a median over repeats with min and max: the machine may be shared.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sqlalchemy import select

from driftwatch.config import Config, config_from_dict
from driftwatch.tasks import CcdSummary, CcdTask

NIGHT = "2026-11-20"


def trivial_task(task: CcdTask) -> CcdSummary:
    """The least a real task does: create its product folder and write a file."""
    out = Path(task.out_dir) / task.ccd
    out.mkdir(parents=True, exist_ok=True)
    (out / "done.txt").write_text(task.input_checksum)
    return CcdSummary(ccd=task.ccd, ok=True, product_dir=str(out))


class InlineExecutor:
    """Runs each task at once in this process (measures the dispatcher alone)."""

    name = "inline"
    capacity = 2

    def submit(self, fn, task) -> Future:
        from driftwatch.service.executor import run_task

        fut: Future = Future()
        fut.set_result(run_task(fn, task))
        return fut

    def is_lost_worker(self, exc: BaseException) -> bool:
        return False

    def needs_restart(self) -> bool:
        return False

    def restart(self) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:
        pass


def _config(root: Path, ccds: tuple[str, ...]) -> Config:
    (root / "incoming").mkdir(parents=True, exist_ok=True)
    data = {"paths": {"watch": [str(root / "incoming")], "products": str(root / "products"),
                      "state": str(root / "state")},
            "pipeline": {"ccds": list(ccds), "skip_ccds": []},
            "workers": {"retry_backoff_s": 0.0, "max_attempts": 1}}
    return config_from_dict(data, base=root, environ={})


def _fill(store, n_exposures: int, ccds: tuple[str, ...]) -> list[int]:
    from driftwatch.store.models import CcdJob, Exposure

    ids = []
    with store.session_scope() as s:
        for k in range(n_exposures):
            exp = Exposure(path=f"/bench/{k}.fits", night=NIGHT, expnum=k + 1, role="drift",
                           state="planned", checksum=f"{k:064d}", dq_missing=True)
            s.add(exp)
            for ccd in ccds:
                s.add(CcdJob(exposure=exp, kind="ccd", ccd=ccd, state="queued", attempts=0,
                             input_checksum=exp.checksum, pipeline_version="bench"))
        s.flush()
        ids = list(s.scalars(select(CcdJob.id)))
    return ids


def _reset_all(store) -> None:
    from driftwatch.store import jobs as jobstate
    from driftwatch.store.models import CcdJob, utcnow

    with store.session_scope() as s:
        for job in s.scalars(select(CcdJob).where(CcdJob.kind == "ccd")):
            jobstate.reset(job, utcnow(), checksum=None, reason="bench")


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def overhead(n_exposures: int = 10, repeats: int = 3) -> dict[str, Any]:
    """Per-job wall time of a night of trivial jobs (inline, then the 2-process pool)."""
    from driftwatch.config import DECAM_CCDS
    from driftwatch.service.dispatcher import Dispatcher
    from driftwatch.service.executor import LocalExecutor
    from driftwatch.store.db import Store

    ccds = DECAM_CCDS[:20]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(Path(tmp), ccds)
        store = Store.from_config(cfg)
        ids = _fill(store, n_exposures, ccds)
        n = len(ids)
        for label, make in (("inline", InlineExecutor),
                            ("local_pool_2", lambda: LocalExecutor(
                                2, 1000, preload=("driftwatch.bench.dispatch",)))):
            executor = make()
            per_job = []
            for _ in range(repeats + 1):  # the first run warms the pool up
                _reset_all(store)
                d = Dispatcher(cfg, store, executor, ccd_fn=trivial_task, alerts=False,
                               scope=ids)
                t0 = time.perf_counter()
                d.run_until_idle(poll_s=0.01)
                per_job.append((time.perf_counter() - t0) / n)
            executor.shutdown(wait=True)
            out[f"{label}_ms_per_job"] = {k: (v * 1e3 if k != "n" else v)
                                          for k, v in _spread(per_job[1:]).items()}
        store.dispose()
    out["jobs_per_run"] = n
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Dispatcher overhead; ``quick`` uses fewer jobs and repeats. (Scaling: the scaling area.)"""
    if quick:
        return {"overhead": overhead(n_exposures=4, repeats=2)}
    return {"overhead": overhead()}


if __name__ == "__main__":
    from driftwatch.bench import flatten

    quick = "--quick" in sys.argv
    for key, value in flatten(run(quick=quick)).items():
        print(f"{key:<55} {value:.4g}" if isinstance(value, float) else f"{key:<55} {value}")
