"""``driftwatch reprocess NIGHT``: reduce (again) every exposure of one observing night.

Finds the night's files by scanning the watch folders (and the exposures the database already
has for that night), plans them exactly as the daemon does, runs every ready job to the end
with a progress bar, and prints a summary table. Re-running is safe: work already done with the
same input checksum and pipeline version is not redone unless ``--force``; jobs that failed for
good get a fresh set of tries. Exit 0 only if every job ends done or skipped.

For tests and site-specific reductions, ``DRIFTWATCH_CCD_FUNCTION`` and
``DRIFTWATCH_CATALOGUE_FUNCTION`` (``package.module:function``) replace the task functions.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import select

from driftwatch.commands._common import add_config_option, load_from_args
from driftwatch.config import DECAM_CCDS, Config
from driftwatch.errors import ConfigError, DriftwatchError, UsageError
from driftwatch.store.models import (
    DONE, FAILED, KIND_CATALOGUE, KIND_CCD, ROLE_DRIFT, ROLE_POINTED, SKIPPED,
    CcdJob, Exposure,
)

NAME = "reprocess"
HELP = "reduce (again) every exposure of one observing night, then print a summary"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("night", metavar="NIGHT",
                        help="observing night, YYYY-MM-DD (the local date at the start of the night)")
    add_config_option(parser)
    parser.add_argument("--ccd", nargs="+", metavar="CCD", help="only these CCDs (e.g. S4 N4)")
    parser.add_argument("--expnum", nargs="+", type=int, metavar="N",
                        help="only these exposure numbers")
    parser.add_argument("--force", action="store_true",
                        help="redo work already done (products are replaced atomically)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="worker processes (default: workers.count)")
    parser.add_argument("--alerts", action="store_true",
                        help="queue alerts for the candidates found (default: none)")


def _load_callable(spec: str, env: str):
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UsageError(f"${env}={spec!r}: cannot load it ({exc})") from None


def _check_args(args: argparse.Namespace, cfg: Config) -> None:
    from driftwatch.service.planner import validate_night

    try:
        validate_night(args.night)
    except ValueError as exc:
        raise UsageError(f"{exc} (expected e.g. 2026-11-20)") from None
    for ccd in args.ccd or ():
        if ccd not in DECAM_CCDS:
            raise UsageError(f"--ccd {ccd}: not a DECam science CCD (S1-S31, N1-N31)")
        if ccd not in cfg.pipeline.ccds:
            raise UsageError(f"--ccd {ccd}: not in pipeline.ccds of {cfg.source}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    missing = [str(p) for p in cfg.paths.watch if not p.is_dir()]
    if missing:
        raise ConfigError(f"{cfg.source}: paths.watch: folder(s) do not exist: "
                          f"{', '.join(missing)}")


def _plan(cfg: Config, store, args: argparse.Namespace) -> tuple[list[int], list[str]]:
    """Plan the night's files; return (job ids in scope, problems with unreadable files)."""
    from driftwatch.io.decam import read_exposure_info
    from driftwatch.service.planner import (
        file_checksum, mark_missing_masks, plan_file, scan_night,
    )

    infos, problems = scan_night(cfg, args.night)
    seen = {str(Path(i.path).resolve()) for i in infos}
    with store.session_scope() as s:
        known = s.scalars(select(Exposure.path).where(Exposure.night == args.night)).all()
    for path in known:
        if path not in seen and Path(path).is_file():
            try:
                infos.append(read_exposure_info(path))
            except DriftwatchError as exc:
                problems.append(str(exc))
    if not infos:
        return [], problems
    order = {"pointed": 0, "mask": 1, "drift": 2}

    def rank(info) -> tuple[int, float]:
        kind = ("mask" if info.prodtype.lower() == "dqmask"
                else "pointed" if info.band in cfg.pipeline.pointed_bands else "drift")
        return order[kind], info.mjd_obs

    wanted = set(args.expnum or ())
    scope: list[int] = []
    drift_ids = []
    for info in sorted(infos, key=rank):
        is_image = info.prodtype.lower() == "image"
        if (wanted and info.expnum not in wanted and is_image
                and info.band not in cfg.pipeline.pointed_bands):
            continue
        checksum = file_checksum(info.path)  # outside the transaction: it reads the whole file
        with store.session_scope() as s:  # one short write transaction per file
            res = plan_file(s, info.path, info, cfg, checksum=checksum, force=args.force,
                            retry_failed=True, ccds=args.ccd)
            if res.role == ROLE_POINTED and args.force:
                _reset_catalogue(s, res.exposure, cfg)
            if res.role == ROLE_DRIFT:
                scope.extend(res.job_ids)
                drift_ids.append(res.exposure.id)
    with store.session_scope() as s:
        mark_missing_masks(s, drift_ids)
        deps = s.scalars(select(CcdJob.depends_on_id).where(
            CcdJob.id.in_(scope), CcdJob.depends_on_id.is_not(None))).all()
        scope.extend(sorted(set(deps)))
    return scope, problems


def _reset_catalogue(s, pointed: Exposure, cfg: Config) -> None:
    """--force: rebuild the catalogue job made from this pointed exposure (once)."""
    from driftwatch.service.planner import pipeline_version
    from driftwatch.store import jobs as jobstate
    from driftwatch.store.models import QUEUED, utcnow

    for job in s.scalars(select(CcdJob).where(CcdJob.kind == KIND_CATALOGUE,
                                              CcdJob.exposure_id == pointed.id)):
        if job.state != QUEUED:
            jobstate.reset(job, utcnow(), checksum=None, reason="forced")
            job.pipeline_version = pipeline_version()


def _summary(store, scope: list[int]) -> tuple[list[dict[str, Any]], list[str], Counter]:
    rows: dict[int, dict[str, Any]] = {}
    failures: list[str] = []
    totals: Counter = Counter()
    with store.session_scope() as s:
        jobs = s.scalars(select(CcdJob).where(CcdJob.id.in_(scope))
                         .order_by(CcdJob.exposure_id, CcdJob.id)).all()
        for job in jobs:
            exp = job.exposure
            totals[job.state] += 1
            if job.state == FAILED:
                failures.append(f"{exp.expnum} {job.ccd}: {job.error} "
                                f"(after {job.attempts} attempt(s))")
            if job.kind == KIND_CATALOGUE:
                continue
            row = rows.setdefault(exp.id, {
                "expnum": exp.expnum, "file": Path(exp.path).name, "done": 0, "failed": 0,
                "skipped": 0, "other": 0, "candidates": 0, "dq": "yes" if exp.dq_path else "no"})
            key = job.state if job.state in (DONE, FAILED, SKIPPED) else "other"
            row[key] += 1
            row["candidates"] += job.n_candidates or 0
    return list(rows.values()), failures, totals


def _print_summary(night: str, rows, failures, totals, elapsed: float, redone: int) -> None:
    print(f"\nnight {night}: {len(rows)} exposure(s), {redone} job(s) run in {elapsed:.1f} s")
    header = f"{'EXPNUM':>8}  {'done':>4} {'fail':>4} {'skip':>4} {'cand':>4} {'DQ':>3}  file"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['expnum']:>8}  {r['done']:>4} {r['failed']:>4} {r['skipped']:>4} "
              f"{r['candidates']:>4} {r['dq']:>3}  {r['file']}")
    print("-" * len(header))
    print("jobs: " + ", ".join(f"{n} {state}" for state, n in sorted(totals.items())))
    for line in failures:
        print(f"FAILED {line}")


class _Terminated(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    from driftwatch.service.dispatcher import Dispatcher
    from driftwatch.service.executor import make_executor
    from driftwatch.store.db import Store, writer_lock

    cfg = load_from_args(args)
    _check_args(args, cfg)
    ccd_fn = cat_fn = None
    if os.environ.get("DRIFTWATCH_CCD_FUNCTION"):
        ccd_fn = _load_callable(os.environ["DRIFTWATCH_CCD_FUNCTION"], "DRIFTWATCH_CCD_FUNCTION")
    if os.environ.get("DRIFTWATCH_CATALOGUE_FUNCTION"):
        cat_fn = _load_callable(os.environ["DRIFTWATCH_CATALOGUE_FUNCTION"],
                                "DRIFTWATCH_CATALOGUE_FUNCTION")
    store = Store.from_config(cfg)
    with writer_lock(cfg.paths.state, f"driftwatch reprocess {args.night}"):
        t0 = time.monotonic()
        scope, problems = _plan(cfg, store, args)
        for p in problems:
            log.warning("unreadable file skipped: %s", p)
        if not scope:
            folders = ", ".join(map(str, cfg.paths.watch))
            print(f"driftwatch: no drift exposures of night {args.night} found under {folders}"
                  + (f" ({len(problems)} unreadable file(s))" if problems else ""),
                  file=sys.stderr)
            return 1
        preload = tuple(f.__module__ for f in (ccd_fn, cat_fn) if f is not None)
        executor = make_executor(cfg.workers, count=args.workers, preload=preload)
        dispatcher = Dispatcher(cfg, store, executor, ccd_fn=ccd_fn, catalogue_fn=cat_fn,
                                alerts=bool(args.alerts and cfg.alerts.enabled), scope=scope)
        dispatcher.requeue_running()
        ran = _drive(dispatcher, store, scope, args.night)
        rows, failures, totals = _summary(store, scope)
    _print_summary(args.night, rows, failures, totals, time.monotonic() - t0, ran)
    store.dispose()
    return 0 if set(totals) <= {DONE, SKIPPED} else 1


def _drive(dispatcher, store, scope: list[int], night: str) -> int:
    """Run every job in scope to the end with a progress bar; return how many tasks ran."""
    from tqdm import tqdm

    with store.session_scope() as s:
        jobs = s.scalars(select(CcdJob).where(CcdJob.id.in_(scope),
                                              CcdJob.kind == KIND_CCD)).all()
        total = sum(1 for j in jobs if j.state != SKIPPED)
        already = sum(1 for j in jobs if j.state in (DONE, FAILED))
        per_exp: dict[int, int] = Counter(j.exposure_id for j in jobs
                                          if j.state not in (DONE, FAILED, SKIPPED))
    n_exp = len({j.exposure_id for j in jobs})
    exp_done = n_exp - len(per_exp)
    ran = 0
    bar = tqdm(total=total, initial=already, unit="CCD", desc=f"night {night}",
               disable=None, file=sys.stderr, dynamic_ncols=True)
    bar.set_postfix_str(f"exposures {exp_done}/{n_exp}")

    def on_result(res) -> None:
        nonlocal ran, exp_done
        ran += 1
        if res.kind != KIND_CCD or res.state not in (DONE, FAILED):
            return
        bar.update(1)
        if res.exposure_finished:
            exp_done += 1
            bar.set_postfix_str(f"exposures {exp_done}/{n_exp}")
            log.info("exposure %d/%d finished", exp_done, n_exp)

    def on_term(signum, _frame) -> None:
        raise _Terminated()

    old = signal.signal(signal.SIGTERM, on_term)
    interrupted = False
    try:
        dispatcher.run_until_idle(on_result)
    except (_Terminated, KeyboardInterrupt):
        interrupted = True
        raise DriftwatchError(f"reprocess of {night} stopped; running CCDs were handed back to "
                              "the queue: run it again to finish") from None
    finally:
        signal.signal(signal.SIGTERM, old)
        bar.close()
        dispatcher.shutdown(grace=dispatcher.cfg.workers.grace_period_s if interrupted else 0)
    return ran
