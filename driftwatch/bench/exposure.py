"""A whole simulated DECam exposure end to end through the daemon (``driftwatch run``).

What is measured, per run (median, min and max over the runs):

- ``complete_to_last_ccd_done_s``: from the image file being complete (renamed into the watched
  folder, the way a transfer delivers it) to the last of its CCD jobs done, as the job table
  records it (``ccd_jobs.finished_at``, written by the daemon);
- ``complete_to_alert_s``: from the same moment to the exposure's candidate message received by
  the Slack stand-in (a real HTTP server on 127.0.0.1, run in this process);
- on the way: ``complete_to_planned_s`` (completeness gate, ``watch.settle_s`` included, checksum
  verification and planning), ``reduction_span_s`` (first CCD started to last CCD done), the
  per-CCD worker seconds, the pool's occupancy during the span, and
  ``cores_used_by_other_processes`` from the rename to the last CCD done (the CPU the rest of a
  shared machine took: system busy time minus this process tree's, daemon and workers
  included), and ``daemon_cpu_s``, the CPU seconds of the daemon's own process (watcher, gate,
  dispatcher, database, alerts; its workers not included) over the same interval, which the
  workers compete with for the cores; ``worker_peak_rss_mb``, the largest peak resident size
  (VmHWM) of the daemon's workers by the end of the run (alert stamps drawn included).

Set-up, none of it timed: the inputs are simulated once per process and cached (a full run
renders 61 full-size CCDs with 1,450 stars each for each of the g, r and VR exposures, fixed
seed, which gives ~1,000 detected trails per drift CCD, the per-CCD target's case; ``--quick``
2 CCDs of 1024x512 px with 250 stars, 2.8 times that density); the drift
exposure has 1 injected brightening per CCD (quick: and 1 flash, so that its 2 CCDs surely give
an alert) and a satellite streak on 1 CCD in 10; the field's reference catalogue is built from the pointed g and r images before any clock starts (its build
time is reported as ``catalogue_build_s`` and is NOT included in the exposure figures) and given
to the daemon as ``paths.catalogue``; each run starts a fresh daemon (local process pool, one
worker per core, Slack pointed at the stand-in), waits until it is ready, and warms its workers
up on a 2-CCD exposure of the same field. Then the DQ mask and the image are each written in
chunks under a temporary name and renamed (mask first); the clock starts at the image rename.

Sustained throughput and the cores needed for a cadence (from the same runs)::

    exposures_per_minute = 60 / reduction_span_s   (keeps up with a cadence C if span <= C)
    cores_needed(C)      = ceil(n_ccd * t_ccd / (C * occupancy))

where ``t_ccd`` is the median worker seconds of one CCD measured with ``workers`` workers busy at
once (so the contention of ``workers`` cores is inside it), ``occupancy`` = sum of the CCDs'
worker seconds / (``workers`` x span) (the fraction of the pool kept busy, which covers the
dispatcher's gaps and the last CCDs' tail), and C = 45 s, DECam's drift cadence. It assumes the
per-CCD time stays as measured at ``workers`` cores when more are added; the ``scaling`` area
measures how it changes from 1 to N workers.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from driftwatch.config import DECAM_CCDS

__all__ = ["Inputs", "inputs", "run"]

#: DECam's drift-exposure cadence (s): 20 s exposure plus readout and slew back.
CADENCE_S = 45.0
SEED = 8
FIELD = "DRIFT-F01"
FULL_CCDS = tuple(c for c in DECAM_CCDS if c != "N30")   # N30 is dead (pipeline.skip_ccds)
QUICK_CCDS = ("S4", "N4")
WARMUP_CCDS = ("S4", "N4")
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Inputs:
    """Simulated files of one bench run (all of the same field and night)."""

    quick: bool
    root: Path
    ccds: tuple[str, ...]
    shape: tuple[int, int]
    stars_per_ccd: int
    image: Path               # the measured VR drift exposure
    dq: Path
    expnum: int
    warmup_image: Path        # 2 CCDs of the same field, to warm the workers up
    warmup_dq: Path
    warmup_expnum: int
    catalogue: Path
    catalogue_build_s: float
    render_s: float
    injected: dict[str, int]


_CACHE: dict[bool, Inputs] = {}


def _spec(quick: bool, **kw: Any):
    from driftwatch.simulate.night import NightSpec

    base = dict(night="2026-11-20", field=FIELD, seed=SEED, compress=True,
                ccds=QUICK_CCDS if quick else FULL_CCDS,
                shape=(1024, 512) if quick else (4094, 2046),
                stars_per_ccd=250 if quick else 1450,
                brightenings_per_ccd=1, flashes_per_ccd=1 if quick else 0,
                streak_probability=0.1)
    base.update(kw)
    return NightSpec(**base)


def _simulate(outdir: str, spec) -> dict[str, Any]:
    """Render one night spec (in a pool process); return its exposures table as records."""
    from driftwatch.simulate.night import simulate_night

    truth = simulate_night(outdir, spec)
    ev = truth.events
    kinds = ({k: int((ev.kind == k).sum()) for k in ("brightening", "flash", "streak")}
             if len(ev) else {})
    return {"exposures": truth.exposures.to_dict("records"), "events": kinds}


def inputs(quick: bool) -> Inputs:
    """Simulate (once per process) the pointed g and r images, the measured drift exposure and
    a 2-CCD warm-up exposure, and build the field's catalogue. Cached; removed at exit."""
    if quick in _CACHE:
        return _CACHE[quick]
    from driftwatch.config import PipelineConfig
    from driftwatch.pipeline.catalogue import build_catalogue
    from driftwatch.tasks import CatalogueTask

    root = Path(tempfile.mkdtemp(prefix="dw-bench-exposure-"))
    atexit.register(shutil.rmtree, root, True)
    # Separate specs so that the exposures render in parallel; each has its own expnum and
    # start time (distinct file names), the stars of a CCD depend only on the seed and the CCD.
    specs = {
        "g": _spec(quick, pointed_bands=("g",), n_drift=0, start_expnum=1_100_000,
                   start_utc="01:30:00"),
        "r": _spec(quick, pointed_bands=("r",), n_drift=0, start_expnum=1_100_001,
                   start_utc="01:31:00"),
        "vr": _spec(quick, pointed_bands=(), n_drift=1, start_expnum=1_100_003,
                    start_utc="01:33:00"),
        "warmup": _spec(quick, pointed_bands=(), n_drift=1, ccds=WARMUP_CCDS,
                        start_expnum=1_100_002, start_utc="01:32:00"),
    }
    t0 = time.perf_counter()
    if quick:  # small: starting processes would cost more than it saves
        done = {k: _simulate(str(root / k), s) for k, s in specs.items()}
    else:
        # spawn: leaves the fork server of the service's LocalExecutor (and its preload) alone
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1,
                                 mp_context=get_context("spawn")) as pool:
            futs = {k: pool.submit(_simulate, str(root / k), s) for k, s in specs.items()}
            done = {k: f.result() for k, f in futs.items()}
    render_s = time.perf_counter() - t0

    def files(key: str) -> tuple[Path, Path, int]:
        rec = done[key]["exposures"][0]
        return root / key / rec["file"], root / key / rec["dq_file"], int(rec["expnum"])

    g_img, _, _ = files("g")
    r_img, _, _ = files("r")
    img, dq, expnum = files("vr")
    w_img, w_dq, w_expnum = files("warmup")
    ccds = specs["vr"].ccds
    catalogue = root / "catalogue" / f"{FIELD}.parquet"
    catalogue.parent.mkdir()
    t0 = time.perf_counter()
    summary = build_catalogue(CatalogueTask(g_path=str(g_img), r_path=str(r_img),
                                            out_path=str(catalogue), ccds=ccds,
                                            pipeline=PipelineConfig(), field=FIELD))
    cat_s = time.perf_counter() - t0
    if not summary.ok:
        raise RuntimeError(f"the field catalogue could not be built: {summary}")
    spec = specs["vr"]
    result = Inputs(quick=quick, root=root, ccds=ccds, shape=spec.shape,
                    stars_per_ccd=spec.stars_per_ccd, image=img, dq=dq, expnum=expnum,
                    warmup_image=w_img, warmup_dq=w_dq, warmup_expnum=w_expnum,
                    catalogue=catalogue, catalogue_build_s=cat_s, render_s=render_s,
                    injected=done["vr"]["events"])
    _CACHE[quick] = result
    return result


# ---------------------------------------------------------------------------------------------
# One run: a fresh daemon, a warm-up exposure, then the measured one
# ---------------------------------------------------------------------------------------------
_CONFIG = """\
paths: {{watch: [incoming], products: products, state: state, catalogue: {catalogue}}}
watch: {{observer: inotify, settle_s: {settle_s}, rescan_interval_s: 60, dq_wait_s: 60}}
pipeline: {{ccds: [{ccds}], skip_ccds: []}}
workers: {{count: {workers}, retry_backoff_s: 1, grace_period_s: 30}}
alerts: {{enabled: true, rate_per_s: 5, burst: 5, retry_backoff_s: 0.5}}
logging: {{level: INFO}}
"""


def _deliver(src: Path, dest_dir: Path, chunks: int = 8) -> float:
    """Write ``src`` into ``dest_dir`` in chunks under a temporary name, then rename it.

    Return the wall-clock time (epoch s) of the rename: the moment the file is complete.
    """
    data_size = src.stat().st_size
    tmp = dest_dir / f".{src.name}.part"
    step = -(-data_size // chunks)
    with src.open("rb") as fin, tmp.open("wb") as fout:
        while block := fin.read(step):
            fout.write(block)
            fout.flush()
    os.rename(tmp, dest_dir / src.name)
    return time.time()


def _db_rows(db: Path, expnum: int) -> tuple[dict[str, Any] | None, list[tuple]]:
    """The drift exposure row (planned_at) and its CCD jobs, read-only."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return None, []
    try:
        exp = con.execute("select id, planned_at from exposures where expnum = ? and "
                          "role = 'drift'", (expnum,)).fetchone()
        if exp is None:
            return None, []
        jobs = con.execute("select ccd, state, started_at, finished_at, duration_s, n_trails, "
                           "n_candidates from ccd_jobs where exposure_id = ? and kind = 'ccd'",
                           (exp[0],)).fetchall()
        return {"id": exp[0], "planned_at": exp[1]}, jobs
    except sqlite3.OperationalError:  # tables not there yet (migration running)
        return None, []
    finally:
        con.close()


def _epoch(text: str | None) -> float | None:
    """An SQLite naive-UTC timestamp as epoch seconds."""
    if text is None:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def _wait_exposure(db: Path, expnum: int, n_jobs: int, timeout_s: float,
                   alive) -> tuple[dict[str, Any], list[tuple]]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        exp, jobs = _db_rows(db, expnum)
        finished = [j for j in jobs if j[1] in ("done", "failed", "skipped")]
        if exp is not None and len(jobs) >= n_jobs and len(finished) == len(jobs):
            return exp, jobs
        if not alive():
            raise RuntimeError("the daemon exited during the benchmark")
        time.sleep(0.1)
    raise RuntimeError(f"exposure {expnum}: its {n_jobs} CCD jobs were not all finished "
                       f"after {timeout_s:.0f} s")


def _mentions(msg: dict[str, Any], expnum: int) -> bool:
    return str(expnum) in json.dumps(msg.get("payload", {}))


def _one_run(inp: Inputs, workers: int, settle_s: float, timeout_s: float) -> dict[str, Any]:
    from driftwatch.alerts.standin import StandinServer

    with tempfile.TemporaryDirectory(prefix="dw-bench-run-") as tmp:
        root = Path(tmp)
        incoming = root / "incoming"
        for d in (incoming, root / "products", root / "state"):
            d.mkdir()
        cfg = root / "driftwatch.yaml"
        cfg.write_text(_CONFIG.format(catalogue=json.dumps(str(inp.catalogue)),
                                      settle_s=settle_s, workers=workers,
                                      ccds=", ".join(inp.ccds)))
        standin = StandinServer().start()
        env = dict(os.environ, DRIFTWATCH_SLACK_WEBHOOK=standin.url())
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        log_path = root / "daemon.log"
        with log_path.open("wb") as logf:
            daemon = subprocess.Popen([sys.executable, "-m", "driftwatch.cli", "run",
                                       "--config", str(cfg)],
                                      env=env, stdout=logf, stderr=subprocess.STDOUT)
        alive = lambda: daemon.poll() is None  # noqa: E731
        db = root / "state" / "driftwatch.sqlite"
        try:
            t_start = time.monotonic()
            end = t_start + READY_TIMEOUT_S
            while b"ready (pid" not in log_path.read_bytes():
                if not alive() or time.monotonic() > end:
                    raise RuntimeError("the daemon did not become ready")
                time.sleep(0.1)
            ready_s = time.monotonic() - t_start
            # Warm-up: both workers import the pipeline and reduce a CCD before the clock.
            _deliver(inp.warmup_dq, incoming)
            _deliver(inp.warmup_image, incoming)
            _wait_exposure(db, inp.warmup_expnum, len(WARMUP_CCDS), timeout_s, alive)
            time.sleep(1.0)  # let the warm-up's alert go out
            n_before = len(standin.received)
            _deliver(inp.dq, incoming)
            t_complete = _deliver(inp.image, incoming)
            mono_complete = time.monotonic()
            probe = _OtherCpu()
            daemon_cpu0 = _cpu_s(daemon.pid)
            exp, jobs = _wait_exposure(db, inp.expnum, len(inp.ccds), timeout_s, alive)
            others = probe.cores()
            daemon_cpu = _cpu_s(daemon.pid) - daemon_cpu0
            alert_mono = None
            end = time.monotonic() + 60.0
            while alert_mono is None and time.monotonic() < end and alive():
                for msg in standin.received[n_before:]:
                    if _mentions(msg, inp.expnum):
                        alert_mono = msg["mono"]
                        break
                time.sleep(0.05)
            worker_hwm = _worker_peak_mb(daemon.pid)
        except BaseException:
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            print("--- last lines of the daemon log:\n" + "\n".join(tail), file=sys.stderr)
            raise
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(60)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(10)
            standin.stop()
    states = {j[1] for j in jobs}
    if states != {"done"}:
        raise RuntimeError(f"exposure {inp.expnum}: CCD jobs ended {sorted(states)}")
    started = [_epoch(j[2]) for j in jobs]
    finished = [_epoch(j[3]) for j in jobs]
    durations = [float(j[4]) for j in jobs]
    span = max(finished) - min(started)
    return {
        "complete_to_planned_s": _epoch(exp["planned_at"]) - t_complete,
        "complete_to_first_ccd_start_s": min(started) - t_complete,
        "complete_to_last_ccd_done_s": max(finished) - t_complete,
        "complete_to_alert_s": None if alert_mono is None else alert_mono - mono_complete,
        "reduction_span_s": span,
        "ccd_worker_s_median": statistics.median(durations),
        "ccd_worker_s_sum": sum(durations),
        "occupancy": sum(durations) / (workers * span),
        "trails": sum(int(j[5] or 0) for j in jobs),
        "candidates": sum(int(j[6] or 0) for j in jobs),
        "cores_used_by_other_processes": others,
        "daemon_start_to_ready_s": ready_s,
        "daemon_cpu_s": daemon_cpu,
        "worker_peak_rss_mb": worker_hwm,
    }


def _worker_peak_mb(pid: int) -> float:
    """Largest peak resident size (VmHWM, MB) among the processes under the daemon ``pid``:
    its workers, after the warm-up and the measured exposure (stamps for alerts included)."""
    import psutil

    peak = 0.0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            with open(f"/proc/{child.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:  # gone, or no /proc (not Linux)
            continue
    return peak


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of one process, its children not included."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


class _OtherCpu:
    """CPU used by processes outside this benchmark's process tree (the machine is shared)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = self._busy()
        self.ours0 = self._ours()

    @staticmethod
    def _busy() -> float:
        import psutil

        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    @staticmethod
    def _ours() -> dict[int, float]:
        import psutil

        me = psutil.Process()
        out = {}
        for p in [me, *me.children(recursive=True)]:
            try:
                c = p.cpu_times()
                out[p.pid] = c.user + c.system
            except psutil.Error:
                pass
        return out

    def cores(self) -> float:
        """Mean number of cores the other processes kept busy since this probe was made."""
        busy = self._busy() - self.busy0
        ours1 = self._ours()
        ours = sum(v - self.ours0.get(pid, 0.0) for pid, v in ours1.items())
        return max(busy - ours, 0.0) / (time.monotonic() - self.t0)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def run(quick: bool = False) -> dict[str, Any]:
    """Simulate (cached), then time ``runs`` exposures through fresh daemons; see the module doc."""
    runs = 1 if quick else 3
    workers = os.cpu_count() or 1
    settle_s = 1.0
    inp = inputs(quick)
    results = [_one_run(inp, workers, settle_s, timeout_s=120 if quick else 900)
               for _ in range(runs)]
    n_ccd = len(inp.ccds)
    out: dict[str, Any] = {
        "mode": (f"{'quick' if quick else 'full'}: {n_ccd} CCDs of {inp.shape[0]}x{inp.shape[1]}"
                 f" px, {inp.stars_per_ccd} stars each"),
        "ccds": n_ccd, "ccd_shape": f"{inp.shape[0]}x{inp.shape[1]}",
        "stars_per_ccd": inp.stars_per_ccd, "seed": SEED, "runs": runs, "workers": workers,
        "executor": "local process pool", "settle_s": settle_s,
        "delivery": "DQ mask then image, each written in 8 chunks under a temporary name and "
                    "renamed; the clock starts at the image rename",
        "catalogue_included": False,
        "catalogue_build_s": round(inp.catalogue_build_s, 2),
        "render_inputs_s": round(inp.render_s, 2),
        "injected": inp.injected,
        "image_mb": round(inp.image.stat().st_size / 1e6, 1),
    }
    for key in ("complete_to_planned_s", "complete_to_first_ccd_start_s",
                "complete_to_last_ccd_done_s", "reduction_span_s", "ccd_worker_s_median",
                "occupancy", "cores_used_by_other_processes", "daemon_start_to_ready_s",
                "daemon_cpu_s", "worker_peak_rss_mb"):
        out[key] = _spread([r[key] for r in results])
    alerts = [r["complete_to_alert_s"] for r in results if r["complete_to_alert_s"] is not None]
    out["complete_to_alert_s"] = _spread(alerts) if alerts else None
    out["alerts_received"] = f"{len(alerts)}/{runs}"
    out["candidates"] = _spread([float(r["candidates"]) for r in results])
    out["trails"] = _spread([float(r["trails"]) for r in results])
    out["trails_per_ccd"] = out["trails"]["median"] / n_ccd
    span = out["reduction_span_s"]["median"]
    t_ccd = out["ccd_worker_s_median"]["median"]
    occ = out["occupancy"]["median"]
    out["throughput"] = {
        "exposures_per_minute": 60.0 / span,
        "keeps_up_with_45s_cadence": span <= CADENCE_S,
        "cores_needed_45s_cadence_for_this_exposure": math.ceil(n_ccd * t_ccd
                                                                / (CADENCE_S * occ)),
        "formula": "ceil(ccds * ccd_worker_s_median / (45 s * occupancy))",
    }
    if quick:
        out["throughput"]["note"] = (f"quick mode: for {n_ccd} CCDs of a sixteenth of a full "
                                     "CCD's area, not a DECam exposure")
    out["load_average_1min"] = os.getloadavg()[0]
    return out


if __name__ == "__main__":
    from driftwatch.bench import flatten

    res = run(quick="--quick" in sys.argv)
    for key, value in flatten(res).items():
        print(f"{key:<60} {value:.4g}" if isinstance(value, float) else f"{key:<60} {value}")
