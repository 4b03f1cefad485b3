"""``driftwatch demo [--keep DIR] [--exposures N]``: the whole system end to end, on simulated data.

In a temporary folder: start a Slack stand-in (a real HTTP server on 127.0.0.1), write and check
a configuration, start the daemon (``driftwatch run``) as a subprocess, simulate a short night
(pointed g and r images, then drift exposures with injected brightenings and flashes), deliver it
into the watched folder in real time as the transfer system does, wait until every exposure is
reduced and its alerts are delivered, print the status table, the candidates and what the
stand-in received, then stop the daemon with SIGTERM. Exit 0 only when all of that worked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from driftwatch.errors import UsageError

NAME = "demo"
HELP = "run the daemon end to end on a simulated night delivered in real time (a temporary folder)"

DEMO_CCDS = ("S4", "N4")
DEMO_SHAPE = (1024, 512)          # a reduced CCD (numpy order) keeps the demo near a minute
DEMO_CADENCE_S = 3.0
READY_TIMEOUT_S = 60.0
REDUCE_TIMEOUT_S = 150.0
ALERT_TIMEOUT_S = 30.0

# The demo's configuration; paths are relative to the folder of the written file.
DEMO_CONFIG = """\
paths:
  watch: [incoming]
  products: products
  state: state
watch:
  observer: inotify
  settle_s: 0.5
  complete_timeout_s: 30
  rescan_interval_s: 5
  dq_wait_s: 5
pipeline:
  ccds: [{ccds}]
  skip_ccds: []
workers:
  count: 2
  retry_backoff_s: 1
  grace_period_s: 20
alerts:
  enabled: true
  rate_per_s: 5
  burst: 5
  retry_backoff_s: 0.5
logging:
  level: INFO
"""


class DemoFailed(Exception):
    """A step of the demo did not work; the message says which."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", type=Path, metavar="DIR", default=None,
                        help="run in DIR (created, must be empty) and keep it afterwards")
    parser.add_argument("--exposures", type=int, default=3,
                        help="VR drift exposures in the simulated night (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="simulation seed (default %(default)s)")


def _wait(cond: Callable[[], bool], timeout_s: float, what: str,
          alive: Callable[[], bool] = lambda: True, period_s: float = 0.25) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if not alive():
            raise DemoFailed(f"the daemon exited while waiting for {what}")
        if time.monotonic() > end:
            raise DemoFailed(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(period_s)


def _stop(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """SIGTERM, wait; kill if it does not go. Return its exit code (None if it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return None


def _report(cfg: Any, night: str) -> dict[str, Any] | None:
    from driftwatch.store.db import Store
    from driftwatch.store.report import night_report

    store = Store.from_config(cfg, migrate=False)
    try:
        with store.session_scope(readonly=True) as s:
            return night_report(s, night)
    finally:
        store.dispose()


def _candidates(cfg: Any, night: str) -> list[tuple]:
    from sqlalchemy import select

    from driftwatch.store.db import Store
    from driftwatch.store.models import Candidate, CcdJob, Exposure

    store = Store.from_config(cfg, migrate=False)
    try:
        with store.session_scope(readonly=True) as s:
            return [tuple(r) for r in s.execute(
                select(Exposure.expnum, Candidate.kind, CcdJob.ccd, Candidate.star_id,
                       Candidate.mag, Candidate.t_peak_s, Candidate.duration_s,
                       Candidate.amplitude, Candidate.significance)
                .join(CcdJob, Candidate.job_id == CcdJob.id)
                .join(Exposure, CcdJob.exposure_id == Exposure.id)
                .where(Exposure.night == night)
                .order_by(Exposure.expnum, CcdJob.ccd, Candidate.t_peak_s)).all()]
    finally:
        store.dispose()


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _print_candidates(rows: list[tuple]) -> None:
    print(f"\n== candidates: {len(rows)}")
    if not rows:
        return
    print(f"  {'expnum':>8} {'kind':<12} {'ccd':<4} {'star':<28} {'mag':>6} {'t_peak/s':>7} "
          f"{'dur/s':>7} {'ampl':>9} {'signif':>7}")
    for expnum, kind, ccd, star, mag, t_peak, dur, amp, sig in rows:
        print(f"  {expnum:>8} {kind:<12} {ccd:<4} {str(star or '-'):<28} {_fmt(mag, '6.2f'):>6} "
              f"{_fmt(t_peak, '6.2f'):>8} {_fmt(dur, '6.3f'):>7} {_fmt(amp, '7.3f'):>9} "
              f"{_fmt(sig, '7.1f'):>7}")


def _demo(root: Path, n_drift: int, seed: int) -> None:
    from driftwatch.alerts.standin import read_record, show
    from driftwatch.commands import status as status_cmd
    from driftwatch.config import check_paths, load_config
    from driftwatch.simulate.deliver import deliver
    from driftwatch.simulate.night import NightSpec, simulate_night

    t_start = time.monotonic()
    incoming, sim = root / "incoming", root / "simulated"
    for d in (incoming, root / "products", root / "state", sim):
        d.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    daemon: subprocess.Popen | None = None
    daemon_log = root / "daemon.log"
    try:
        # 1. the Slack stand-in
        port_file, record = root / "standin.port", root / "standin-received.jsonl"
        standin = subprocess.Popen(
            [sys.executable, "-m", "driftwatch.alerts.standin", "--port", "0",
             "--port-file", str(port_file), "--record", str(record)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(standin)
        _wait(port_file.exists, 20, "the Slack stand-in to listen", lambda: standin.poll() is None)
        port = int(port_file.read_text())
        print(f"Slack stand-in listening on 127.0.0.1:{port}")

        # 2. the configuration, checked like `driftwatch config check`
        cfg_path = root / "driftwatch.yaml"
        cfg_path.write_text(DEMO_CONFIG.format(ccds=", ".join(DEMO_CCDS)))
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        env["DRIFTWATCH_SLACK_WEBHOOK"] = f"http://127.0.0.1:{port}/services/demo/demo/demo"
        cfg = load_config(cfg_path, environ=env)
        problems = check_paths(cfg)
        if problems:
            raise DemoFailed(f"{cfg_path}: " + "; ".join(problems))
        if "default" not in cfg.alerts.webhooks:
            raise DemoFailed(f"{cfg_path}: the webhook credential was not found")
        print(f"configuration {cfg_path}: OK")

        # 3. the daemon, started while the night is being simulated
        with daemon_log.open("ab") as logf:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "driftwatch.cli", "run", "--config", str(cfg_path)],
                env=env, stdout=logf, stderr=subprocess.STDOUT)
        procs.append(daemon)
        print(f"daemon started (pid {daemon.pid}), log {daemon_log}")

        # 4. a short night, simulated, then delivered in real time
        spec = NightSpec(n_drift=n_drift, ccds=DEMO_CCDS, shape=DEMO_SHAPE, stars_per_ccd=150,
                         seed=seed, brightenings_per_ccd=2, flashes_per_ccd=1,
                         streak_probability=0.0)
        spec.validate()
        t0 = time.monotonic()
        truth = simulate_night(sim, spec)
        ex = truth.exposures
        ev = truth.events
        injected = {k: int((ev.kind == k).sum()) for k in ("brightening", "flash")} if len(ev) else {}
        print(f"simulated night {spec.night}: {len(ex)} exposures ({', '.join(ex.band)}), "
              f"{len(DEMO_CCDS)} CCDs of {DEMO_SHAPE[0]}x{DEMO_SHAPE[1]} px, "
              f"injected {injected.get('brightening', 0)} brightenings and "
              f"{injected.get('flash', 0)} flashes, in {time.monotonic() - t0:.1f} s")
        _wait(lambda: b"ready (pid" in daemon_log.read_bytes(), READY_TIMEOUT_S,
              "the daemon to be ready", lambda: daemon.poll() is None)
        print("daemon ready")
        pairs = [(sim / f, sim / d) for f, d in zip(ex.file, ex.dq_file)]
        print(f"delivering {len(pairs)} exposures into {incoming} every {DEMO_CADENCE_S:g} s ...",
              flush=True)
        t0 = time.monotonic()
        deliver(pairs, incoming, DEMO_CADENCE_S, seed=seed, write_seconds=1.0)
        print(f"  delivered {2 * len(pairs)} files in {time.monotonic() - t0:.1f} s")

        # 5. every CCD reduced, every alert delivered
        want = n_drift * len(DEMO_CCDS)
        last: dict[str, Any] = {}

        def reduced() -> bool:
            rep = _report(cfg, spec.night)
            if rep is None:
                return False
            last.update(rep)
            jobs = rep["jobs"]
            if jobs.get("failed"):
                raise DemoFailed(f"CCD jobs failed: {jobs}; see {daemon_log}")
            return rep["n_exposures"] == n_drift and jobs.get("done", 0) == want

        t0 = time.monotonic()
        _wait(reduced, REDUCE_TIMEOUT_S, f"{want} CCD jobs to be done (last: {last.get('jobs')})",
              lambda: daemon.poll() is None, period_s=0.5)
        print(f"all {want} CCD jobs done {time.monotonic() - t0:.1f} s after the last delivery")
        _wait(lambda: not (_report(cfg, spec.night) or {}).get("alerts", {}).get("pending"),
              ALERT_TIMEOUT_S, "the alerts to be delivered", lambda: daemon.poll() is None)

        # 6. what happened
        print(f"\n== driftwatch status {spec.night}")
        status_cmd.run(argparse.Namespace(night=spec.night, config=cfg_path, json=False))
        _print_candidates(_candidates(cfg, spec.night))
        rep = _report(cfg, spec.night) or {}
        n_cand_alerts = rep.get("alerts", {}).get("sent", 0)

        # 7. stop the daemon (its "stopped" message goes out before it exits)
        print("\nstopping the daemon (SIGTERM) ...")
        rc = _stop(daemon, 60)
        if rc != 0:
            raise DemoFailed(f"the daemon exited with {rc} after SIGTERM; see {daemon_log}")
        print("daemon exited 0")
        print()
        show(record)
        received = read_record(record)
        if not received:
            raise DemoFailed("the Slack stand-in received nothing")
        if rep.get("candidates", 0) and not n_cand_alerts:
            raise DemoFailed("candidates were found but no alert was sent")
        print(f"\ndemo OK in {time.monotonic() - t_start:.0f} s: {want} CCD jobs done, "
              f"{rep.get('candidates', 0)} candidates, {len(received)} Slack messages received")
    except BaseException:
        if daemon_log.exists():
            tail = daemon_log.read_text(errors="replace").splitlines()[-25:]
            print("--- last lines of the daemon log:\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        for p in reversed(procs):
            _stop(p, 30)


def run(args: argparse.Namespace) -> int:
    if args.exposures < 1:
        raise UsageError("--exposures must be at least 1")
    if args.keep is not None:
        root = args.keep.resolve()
        if root.exists() and any(root.iterdir()):
            raise UsageError(f"--keep {root}: the folder is not empty")
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="driftwatch-demo-"))
    print(f"demo folder: {root}")
    try:
        _demo(root, args.exposures, args.seed)
    except DemoFailed as exc:
        print(f"driftwatch demo: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
            print(f"removed {root}")
    return 0
