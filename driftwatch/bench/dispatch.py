"""Benchmark of the dispatcher and the worker pool.

1. Dispatcher overhead per job: a trivial task (make the CCD folder, write a few bytes) run
   through (a) an inline executor (no process: only the dispatcher's own work, i.e. the
   database transactions that mark a job running and record its result) and (b) the local
   process pool of 2 workers (adds pickling and inter-process round trips). Target <= 20 ms.
2. Scaling: the real ``reduce_ccd`` on simulated CCDs, 1 worker then 2 workers; the ratio of
   the rates (target >= 1.8 on 2 cores). The field catalogue is built once before timing.
   A run has 48 CCDs: with 2 workers, the last CCD of a run leaves one worker idle for half
   a CCD on average, which costs 1/(2 x CCDs per worker) of the rate (6% with 16 CCDs, 2%
   with 48); a night of 60 CCDs per exposure makes it negligible. ``worker_occupancy`` is
   the fraction of the run during which the workers had a CCD in hand.

Every figure is a median over repeats with min and max: the machine may be shared.
"""

from __future__ import annotations

import os
import statistics
import subprocess
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


def _simulate(folder: Path, n_exposures: int, ccds: tuple[str, ...], shape: str) -> None:
    cmd = [sys.executable, "-m", "driftwatch.cli", "simulate", str(folder), "--exposures",
           str(n_exposures), "--ccds", ",".join(ccds), "--shape", shape, "--seed", "11"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def scaling(n_exposures: int = 12, shape: str = "1024x512", repeats: int = 3) -> dict[str, Any]:
    """CCDs per second of the real reduce_ccd with 1 and 2 worker processes."""
    from driftwatch.io.decam import read_exposure_info
    from driftwatch.pipeline.catalogue import build_catalogue
    from driftwatch.pipeline.ccd import reduce_ccd
    from driftwatch.service.dispatcher import Dispatcher
    from driftwatch.service.executor import LocalExecutor
    from driftwatch.service.planner import iter_candidate_files, mark_missing_masks, plan_file
    from driftwatch.store.db import Store
    from driftwatch.store.models import CcdJob

    ccds = ("S4", "N4", "S5", "N5")
    out: dict[str, Any] = {"task": "driftwatch.pipeline.ccd.reduce_ccd", "ccd_shape": shape}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = _config(root, ccds)
        _simulate(root / "incoming", n_exposures, ccds, shape)
        store = Store.from_config(cfg)
        drift = []
        with store.session_scope() as s:
            for path in sorted(iter_candidate_files(cfg), key=lambda p: "_ood_" in p.name):
                r = plan_file(s, path, read_exposure_info(path), cfg)
                if r.role == "drift":
                    drift.append(r.exposure.id)
            mark_missing_masks(s, drift)
        # The catalogue first, untimed (it is built once per field, not per CCD).
        executor = LocalExecutor(1, 1000, preload=("driftwatch.pipeline.ccd",))
        d = Dispatcher(cfg, store, executor, ccd_fn=reduce_ccd, catalogue_fn=build_catalogue,
                       alerts=False)
        with store.session_scope() as s:
            cat_ids = list(s.scalars(select(CcdJob.id).where(CcdJob.kind == "catalogue")))
            ccd_ids = list(s.scalars(select(CcdJob.id).where(CcdJob.kind == "ccd")))
        d.scope = set(cat_ids)
        d.run_until_idle(poll_s=0.02)
        executor.shutdown(wait=True)
        rates: dict[int, list[float]] = {1: [], 2: []}
        occupancy: dict[int, list[float]] = {1: [], 2: []}
        ccd_s: dict[int, list[float]] = {1: [], 2: []}
        executors = {n: LocalExecutor(n, 1000, preload=("driftwatch.pipeline.ccd",))
                     for n in (1, 2)}
        load_before = os.getloadavg()[0]
        # 1 and 2 workers alternate, so that the load of a shared machine weighs on both alike.
        for i in range(repeats + 1):  # the first round warms the workers up (imports)
            for workers, executor in executors.items():
                _reset_all(store)
                d = Dispatcher(cfg, store, executor, ccd_fn=reduce_ccd, alerts=False,
                               scope=ccd_ids)
                t0 = time.perf_counter()
                d.run_until_idle(poll_s=0.02)
                elapsed = time.perf_counter() - t0
                with store.session_scope() as s:
                    rows = s.execute(select(CcdJob.state, CcdJob.duration_s)
                                     .where(CcdJob.id.in_(ccd_ids))).all()
                if {state for state, _ in rows} != {"done"}:
                    raise RuntimeError(f"reduce_ccd jobs did not all succeed: {rows}")
                if i:
                    rates[workers].append(len(ccd_ids) / elapsed)
                    durations = [d for _, d in rows]
                    # Fraction of the run during which every worker had a CCD in hand: near 1
                    # means the dispatcher kept the pool fed, whatever the machine's load did
                    # to the CCDs' own times.
                    occupancy[workers].append(sum(durations) / (elapsed * workers))
                    ccd_s[workers].extend(durations)
        for executor in executors.values():
            executor.shutdown(wait=True)
        out["load_average_1min_before_after"] = [load_before, os.getloadavg()[0]]
        store.dispose()
    out["ccds_per_run"] = len(ccd_ids)
    out["rate_1_worker_ccd_per_s"] = _spread(rates[1])
    out["rate_2_workers_ccd_per_s"] = _spread(rates[2])
    out["worker_occupancy_1"] = _spread(occupancy[1])
    out["worker_occupancy_2"] = _spread(occupancy[2])
    out["ccd_seconds_1_worker"] = _spread(ccd_s[1])
    out["ccd_seconds_2_workers"] = _spread(ccd_s[2])
    out["speedup_2_vs_1_median"] = (statistics.median(rates[2]) / statistics.median(rates[1]))
    out["cpus"] = os.cpu_count()
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Run both parts; ``quick`` uses fewer jobs, smaller CCDs and fewer repeats."""
    if quick:
        return {"overhead": overhead(n_exposures=4, repeats=2),
                "scaling": scaling(n_exposures=4, shape="1024x512", repeats=1)}
    return {"overhead": overhead(), "scaling": scaling()}


if __name__ == "__main__":
    from driftwatch.bench import flatten

    quick = "--quick" in sys.argv
    for key, value in flatten(run(quick=quick)).items():
        print(f"{key:<55} {value:.4g}" if isinstance(value, float) else f"{key:<55} {value}")
