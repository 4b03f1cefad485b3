"""The dispatcher on a real SQLite file with a real process pool and stand-in task functions."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from astropy.table import Table
from sqlalchemy import select

from driftwatch.io.decam import read_exposure_info
from driftwatch.service.dispatcher import Dispatcher
from driftwatch.service.executor import DaskExecutor, LocalExecutor
from driftwatch.service.planner import mark_missing_masks, plan_file
from driftwatch.store.db import Store
from driftwatch.store.models import CcdJob, Exposure
from tests.service import standins
from tests.service.nightdata import make_config, write_night

PRELOAD = ("tests.service.standins",)


def plan_night(cfg, store, paths) -> list[int]:
    ids, drift = [], []
    with store.session_scope() as s:
        for p in paths:
            r = plan_file(s, p, read_exposure_info(p), cfg)
            ids += r.job_ids
            if r.role == "drift":
                drift.append(r.exposure.id)
        mark_missing_masks(s, drift)
        ids += list(s.scalars(select(CcdJob.id).where(CcdJob.kind == "catalogue")))
    return ids


@pytest.fixture
def night(tmp_path):
    cfg = make_config(tmp_path, max_attempts=2)
    paths = write_night(tmp_path / "incoming", n_exposures=2)
    store = Store.from_config(cfg)
    plan_night(cfg, store, paths)
    yield cfg, store
    store.dispose()


def run(cfg, store, executor=None, **kw) -> Dispatcher:
    executor = executor or LocalExecutor(2, 50, preload=PRELOAD)
    kw.setdefault("catalogue_fn", standins.build_catalogue)
    d = Dispatcher(cfg, store, executor, alerts=kw.pop("alerts", False), **kw)
    try:
        d.requeue_running()
        d.run_until_idle(poll_s=0.05)
    finally:
        d.shutdown(grace=5)
    return d


def test_every_finished_task_calls_on_done_and_a_raising_hook_is_harmless(night):
    cfg, store = night
    calls: list[str] = []

    def on_done() -> None:   # called from the executor's thread
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise RuntimeError("a hook that fails must not lose the result")

    run(cfg, store, ccd_fn=standins.reduce_ccd, on_done=on_done)
    states = [v[0] for v in jobs(store).values()] + [v[0] for v in jobs(store, "catalogue").values()]
    assert set(states) == {"done", "skipped"}
    assert len(calls) == states.count("done")   # one per task run (skipped ones never run)


def jobs(store, kind="ccd"):
    with store.session_scope() as s:
        return {(j.exposure.expnum, j.ccd): (j.state, j.attempts, j.error, j.product_path)
                for j in s.scalars(select(CcdJob).where(CcdJob.kind == kind))}


def test_night_runs_to_done_with_catalogue_and_dq(night):
    cfg, store = night
    run(cfg, store, ccd_fn=standins.reduce_ccd)
    cat = jobs(store, "catalogue")
    assert [v[0] for v in cat.values()] == ["done"]
    catalogue_path = next(iter(cat.values()))[3]
    for (expnum, ccd), (state, attempts, error, product) in jobs(store).items():
        if ccd == "N5":
            assert state == "skipped"
            continue
        assert (state, attempts, error) == ("done", 1, None)
        meta = Table.read(Path(product) / standins.PRODUCT).meta
        assert meta["CATALOG"] == catalogue_path and "_ood_" in meta["DQ"]
    with store.session_scope() as s:
        assert {e.state for e in s.scalars(select(Exposure).where(Exposure.role == "drift"))} \
            == {"done"}


def test_stage_that_raises_ends_failed_never_done(night):
    cfg, store = night
    run(cfg, store, ccd_fn=standins.raising_reduce_ccd)
    for (expnum, ccd), (state, attempts, error, product) in jobs(store).items():
        if ccd != "N5":
            assert state == "failed" and attempts == 2 and product is None
            assert error == f"RuntimeError: stage exploded on {ccd}"
    with store.session_scope() as s:
        assert {e.state for e in s.scalars(select(Exposure).where(Exposure.role == "drift"))} \
            == {"failed"}


def test_bad_input_is_not_retried_and_missing_products_are_not_done(night):
    cfg, store = night
    run(cfg, store, ccd_fn=standins.bad_input_reduce_ccd)
    states = {v[:2] for k, v in jobs(store).items() if k[1] != "N5"}
    assert states == {("failed", 1)}
    with store.session_scope() as s:
        for j in s.scalars(select(CcdJob).where(CcdJob.kind == "ccd", CcdJob.state == "failed")):
            from driftwatch.store import jobs as js
            js.reset(j, j.created_at, checksum=None, reason="test")
    run(cfg, store, ccd_fn=standins.lying_reduce_ccd)
    for k, (state, attempts, error, product) in jobs(store).items():
        if k[1] != "N5":
            assert state == "failed" and "not on disk" in error and attempts == 2


def test_worker_killed_fails_only_its_job_which_is_retried(night):
    cfg, store = night
    run(cfg, store, ccd_fn=standins.crash_once_reduce_ccd)
    for k, (state, attempts, error, product) in jobs(store).items():
        if k[1] != "N5":
            assert state == "done", (k, error)
            assert attempts <= 2


def test_poison_job_is_found_and_others_are_not_blamed(night):
    cfg, store = night
    run(cfg, store, ccd_fn=standins.crash_always_reduce_ccd)
    for (expnum, ccd), (state, attempts, error, product) in jobs(store).items():
        if ccd == "N4":
            assert state == "failed" and "worker process died" in error and attempts == 2
        elif ccd != "N5":
            assert state == "done" and attempts == 1, (ccd, error)


def test_running_jobs_go_back_to_queued_at_start(night):
    cfg, store = night
    with store.session_scope() as s:
        job = s.scalars(select(CcdJob).where(CcdJob.kind == "ccd", CcdJob.ccd == "S4")).first()
        job.state, job.attempts = "running", 1
    d = Dispatcher(cfg, store, LocalExecutor(1, preload=PRELOAD), alerts=False)
    try:
        assert d.requeue_running() == 1
    finally:
        d.shutdown(0)
    with store.session_scope() as s:
        assert s.scalars(select(CcdJob).where(CcdJob.state == "running")).first() is None


@pytest.mark.parametrize("alerts", [True, False])
def test_alert_hooks_only_when_alerts(night, alerts):
    cfg, store = night
    seen = {"cands": 0, "exps": 0}

    def on_candidates(session, job, cands):
        assert cands[0].id is not None and cands[0].job_id == job.id
        seen["cands"] += len(cands)

    def on_exposure_done(session, exposure):
        seen["exps"] += 1

    run(cfg, store, ccd_fn=standins.candidate_reduce_ccd, alerts=alerts,
        on_candidates=on_candidates, on_exposure_done=on_exposure_done)
    assert seen == ({"cands": 6, "exps": 2} if alerts else {"cands": 0, "exps": 0})
    with store.session_scope() as s:
        from driftwatch.store.models import Candidate
        assert s.query(Candidate).count() == 6


@pytest.mark.slow
def test_dask_gives_the_same_products_and_survives_a_killed_worker(tmp_path):
    products = {}
    for backend in ("local", "dask"):
        root = tmp_path / backend
        cfg = make_config(root, backend=backend, max_attempts=3)
        paths = write_night(root / "incoming", n_exposures=3)
        store = Store.from_config(cfg)
        plan_night(cfg, store, paths)
        executor = (DaskExecutor("local", n_workers=2) if backend == "dask"
                    else LocalExecutor(2, preload=PRELOAD))
        killer, killed_at = None, []
        if backend == "dask":
            pids = list(executor.worker_pids().values())

            def kill_one() -> None:
                time.sleep(0.7)  # mid-run: 9 CCDs of 0.3 s on 2 workers
                os.kill(pids[0], signal.SIGKILL)
                killed_at.append(time.monotonic())

            killer = threading.Thread(target=kill_one)
            killer.start()
        run(cfg, store, executor, ccd_fn=standins.slow_reduce_ccd)
        ended = time.monotonic()
        if killer is not None:
            killer.join()
            assert killed_at[0] < ended  # the worker died while jobs were still running
        result = jobs(store)
        assert {v[0] for k, v in result.items() if k[1] != "N5"} == {"done"}
        products[backend] = {
            k: Table.read(Path(v[3]) / standins.PRODUCT) for k, v in result.items()
            if v[0] == "done"}
        store.dispose()
    assert products["local"].keys() == products["dask"].keys()
    for k, table in products["local"].items():
        other = products["dask"][k]
        assert list(table["x"]) == list(other["x"]) and list(table["y"]) == list(other["y"])
        assert table.meta["MEDIAN"] == other.meta["MEDIAN"]
