"""Benchmarks of the daemon (``driftwatch run`` as a real subprocess).

- latency: from the last byte of an exposure written into the watched folder to its CCD jobs
  being in the database (queued), with inotify. The target is <= ``watch.settle_s`` + 1 s.
- idle: CPU (fraction of one core) and memory (RSS of the daemon and of its worker processes)
  while it watches an idle folder. Targets: < 1% of a core, < 200 MB.

The CCD task is a no-op here (:func:`noop_reduce`): these figures are about the service, not
the science. Run ``python -m driftwatch.bench.daemon`` for a table.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from driftwatch import __version__
from driftwatch.tasks import CcdSummary, CcdTask

CCDS = ("S1", "S2", "S3", "S4")


def noop_reduce(task: CcdTask) -> CcdSummary:
    """A CCD 'reduction' that only writes a one-line product (measures the service alone)."""
    out = Path(task.out_dir) / task.ccd
    out.mkdir(parents=True, exist_ok=True)
    (out / "product.txt").write_text(task.ccd)
    return CcdSummary(ccd=task.ccd, ok=True, product_dir=str(out), pipeline_version=__version__)


def _exposure(expnum: int) -> bytes:
    from astropy.io import fits

    rng = np.random.default_rng(expnum)
    primary = fits.PrimaryHDU()
    for key, value in (("EXPNUM", expnum), ("OBSTYPE", "object"), ("OBJECT", "bench"),
                       ("FILTER", "VR DECam c0007 6300.0 2600.0"), ("PRODTYPE", "image"),
                       ("DATE-OBS", f"2026-11-21T03:{expnum % 60:02d}:00.0"),
                       ("EXPTIME", 20.0), ("NEXTEND", len(CCDS))):
        primary.header[key] = value
    hdus = [primary] + [fits.CompImageHDU(rng.normal(1000, 5, (64, 64)).astype(np.float32),
                                          name=c, compression_type="RICE_1") for c in CCDS]
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf, checksum=True)
    return buf.getvalue()


def _config(root: Path, settle_s: float) -> Path:
    for d in ("incoming", "products", "state"):
        (root / d).mkdir(exist_ok=True)
    cfg = root / "driftwatch.yaml"
    cfg.write_text(f"""\
paths: {{watch: [incoming], products: products, state: state}}
watch: {{observer: inotify, settle_s: {settle_s}, rescan_interval_s: 60, dq_wait_s: 0}}
pipeline: {{ccds: [{", ".join(CCDS)}], skip_ccds: []}}
workers: {{count: 2, grace_period_s: 10}}
alerts: {{enabled: false}}
logging: {{level: WARNING}}
""")
    return cfg


#: Start the daemon importing only the ``run`` command (not every command, as driftwatch.cli
#: does): separates the daemon's own footprint from what other commands' imports add.
_RUN_ONLY = ("import argparse, sys; from driftwatch.commands import run as c; "
             "p = argparse.ArgumentParser(); p.add_argument('-v', dest='verbose', "
             "action='count', default=0); c.add_arguments(p); "
             "sys.exit(c.run(p.parse_args(sys.argv[1:])))")


class _Daemon:
    def __init__(self, cfg: Path, root: Path, launcher: str = "cli") -> None:
        self.notify = root / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify))
        self.sock.settimeout(0.2)
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify))
        self.log = (root / "daemon.log").open("wb")
        entry = (["-m", "driftwatch.cli", "run"] if launcher == "cli" else ["-c", _RUN_ONLY])
        self.proc = subprocess.Popen(
            [sys.executable, *entry, "--config", str(cfg),
             "--ccd-task", "driftwatch.bench.daemon:noop_reduce"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if b"READY=1" in self.sock.recv(65536).split(b"\n"):
                    return
            except (TimeoutError, socket.timeout):
                if self.proc.poll() is not None:
                    break
        raise RuntimeError("the daemon did not become ready")

    def drain(self) -> None:
        try:
            while True:
                self.sock.recv(65536)
        except (TimeoutError, socket.timeout, BlockingIOError):
            pass

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self.sock.close()
        self.log.close()
        return rc


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def bench_latency(n: int = 7, settle_s: float = 1.0) -> dict[str, Any]:
    """Seconds from the last byte written to the exposure's jobs in the database."""
    with tempfile.TemporaryDirectory(prefix="dw-bench-") as tmp:
        root = Path(tmp)
        cfg = _config(root, settle_s)
        daemon = _Daemon(cfg, root)
        latencies: dict[str, list[float]] = {"rename": [], "in_place": []}
        try:
            daemon.wait_ready()
            db = root / "state" / "driftwatch.sqlite"
            for i in range(n):
                for mode in ("rename", "in_place"):
                    expnum = 1000 + 2 * i + (mode == "in_place")
                    data = _exposure(expnum)
                    name = f"DECam_{expnum:08d}.fits.fz"
                    target = root / "incoming" / (f".{name}.tmp" if mode == "rename" else name)
                    step = -(-len(data) // 4)
                    with target.open("wb") as fh:
                        for k in range(0, len(data), step):
                            fh.write(data[k:k + step])
                            fh.flush()
                            time.sleep(0.05)
                    if mode == "rename":
                        os.rename(target, root / "incoming" / name)
                    t0 = time.monotonic()  # the file is whole under its final name from here
                    latencies[mode].append(_wait_jobs(db, expnum, t0) - t0)
                    daemon.drain()
        finally:
            rc = daemon.stop()
    both = latencies["rename"] + latencies["in_place"]
    return {"settle_s": settle_s, "target_s": settle_s + 1.0,
            "rename_s": _spread(latencies["rename"]), "in_place_s": _spread(latencies["in_place"]),
            "all_s": _spread(both), "meets_target": statistics.median(both) <= settle_s + 1.0,
            "exit_code": rc}


def _wait_jobs(db: Path, expnum: int, t0: float, timeout: float = 30.0) -> float:
    while time.monotonic() - t0 < timeout:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                n = con.execute("select count(*) from ccd_jobs j join exposures e on "
                                "e.id = j.exposure_id where e.expnum = ?", (expnum,)).fetchone()[0]
            finally:
                con.close()
        except sqlite3.OperationalError:
            n = 0
        if n >= len(CCDS):
            return time.monotonic()
        time.sleep(0.01)
    raise RuntimeError(f"jobs of exposure {expnum} never appeared")


def bench_idle(seconds: float = 30.0, launcher: str = "cli") -> dict[str, Any]:
    """CPU and memory of the daemon (and its workers) watching an idle folder.

    ``launcher``: 'cli' (``python -m driftwatch.cli run``, what systemd runs) or 'run_only'
    (only the run command's modules imported).
    """
    import psutil

    with tempfile.TemporaryDirectory(prefix="dw-bench-") as tmp:
        root = Path(tmp)
        cfg = _config(root, 3.0)
        daemon = _Daemon(cfg, root, launcher)
        try:
            daemon.wait_ready()
            time.sleep(2.0)  # let start-up work (imports, scan, worker start) finish
            main = psutil.Process(daemon.proc.pid)

            def cpu() -> float:
                procs = [main, *main.children(recursive=True)]
                total = 0.0
                for p in procs:
                    try:
                        t = p.cpu_times()
                        total += t.user + t.system
                    except psutil.Error:
                        pass
                return total

            c0, t0 = cpu(), time.monotonic()
            rss_main, rss_total = [], []
            while time.monotonic() - t0 < seconds:
                time.sleep(min(1.0, seconds / 10))
                daemon.drain()
                procs = [main, *main.children(recursive=True)]
                sizes = []
                for p in procs:
                    try:
                        sizes.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                rss_main.append(main.memory_info().rss / 2**20)
                rss_total.append(sum(sizes) / 2**20)
            c1, t1 = cpu(), time.monotonic()
            n_procs = len(procs)
        finally:
            rc = daemon.stop()
    core_fraction = (c1 - c0) / (t1 - t0)
    return {"seconds": round(t1 - t0, 1), "cpu_percent_of_one_core": 100 * core_fraction,
            "rss_main_mb": max(rss_main), "rss_total_mb": max(rss_total),
            "processes": n_procs, "meets_target": core_fraction < 0.01 and max(rss_main) < 200,
            "exit_code": rc}


def run(quick: bool = False) -> dict[str, Any]:
    seconds = 10.0 if quick else 30.0
    return {"latency": bench_latency(n=3 if quick else 7), "idle": bench_idle(seconds),
            "idle_run_only": bench_idle(seconds, launcher="run_only")}


if __name__ == "__main__":
    import json

    result = run(quick="--quick" in sys.argv)
    lat = result["latency"]
    print(f"{'measure':44s} {'median':>8s} {'min':>8s} {'max':>8s}")
    for key in ("rename_s", "in_place_s", "all_s"):
        s = lat[key]
        print(f"latency last byte -> jobs queued, {key[:-2]:9s} "
              f"{s['median']:8.3f} {s['min']:8.3f} {s['max']:8.3f}  (n={s['n']})")
    print(f"target: <= settle {lat['settle_s']} s + 1 s: {'yes' if lat['meets_target'] else 'NO'}")
    for key in ("idle", "idle_run_only"):
        idle = result[key]
        print(f"{key} over {idle['seconds']} s: {idle['cpu_percent_of_one_core']:.2f}% of a core,"
              f" RSS main {idle['rss_main_mb']:.0f} MB, all {idle['processes']} processes "
              f"{idle['rss_total_mb']:.0f} MB: {'meets' if idle['meets_target'] else 'MISSES'} "
              "target")
    print(json.dumps(result, indent=1))
