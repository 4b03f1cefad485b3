"""Helpers for the daemon tests: tiny DECam-like files, deliveries like the transfer system's,
and the real daemon as a subprocess.

Files are written the ways transfers write them: in chunks under a temporary name then renamed
into place (rsync), or in place in chunks (scp, ``rsync --inplace``).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

REPO = Path(__file__).resolve().parents[2]
CCDS = ("S1", "S2", "S3", "S4")
#: The stand-in reduction the daemon runs in these tests (see _standin.py).
STANDIN = "tests.service._standin:reduce_standin"


def exposure_bytes(expnum: int, *, ccds: Sequence[str] = CCDS, nextend: int | None = None,
                   band: str = "VR", size: int = 16, seed: int | None = None,
                   obstype: str = "object") -> bytes:
    """Return a small RICE-compressed multi-extension DECam-like file (with CHECKSUMs)."""
    rng = np.random.default_rng(expnum if seed is None else seed)
    primary = fits.PrimaryHDU()
    h = primary.header
    h["EXPNUM"] = expnum
    h["OBSTYPE"] = obstype
    h["FILTER"] = f"{band} DECam c0007 6300.0 2600.0"
    h["OBJECT"] = "drift-field-1"
    h["PRODTYPE"] = "image"
    h["PROCTYPE"] = "InstCal"
    # 45 s per exposure from 01:00 UTC on 2026-11-21 (night 2026-11-20 in Chile).
    t = 3600 + 45 * (expnum % 1000)
    h["DATE-OBS"] = f"2026-11-21T{t // 3600:02d}:{t % 3600 // 60:02d}:{t % 60:02d}.000"
    h["EXPTIME"] = 20.0
    h["NEXTEND"] = len(ccds) if nextend is None else nextend
    hdus = [primary]
    for name in ccds:
        data = rng.normal(1000, 5, (size, size)).astype(np.float32)
        hdus.append(fits.CompImageHDU(data, name=name, compression_type="RICE_1"))
    import io
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf, checksum=True)
    return buf.getvalue()


def exposure_name(expnum: int) -> str:
    return f"DECam_{expnum:08d}.fits.fz"


def deliver_rename(folder: Path, name: str, data: bytes, chunks: int = 4,
                   pause_s: float = 0.0) -> Path:
    """rsync-style: write ``.name.XXXXXX`` in chunks, then rename it to ``name``."""
    tmp = folder / f".{name}.{os.urandom(3).hex()}"
    _write_chunks(tmp, data, chunks, pause_s)
    final = folder / name
    os.rename(tmp, final)
    return final


def deliver_inplace(folder: Path, name: str, data: bytes, chunks: int = 4,
                    pause_s: float = 0.0, upto: int | None = None) -> Path:
    """scp-style: write the final name in place, in chunks (only ``upto`` bytes if given)."""
    path = folder / name
    _write_chunks(path, data[:upto] if upto is not None else data, chunks, pause_s)
    return path


def _write_chunks(path: Path, data: bytes, chunks: int, pause_s: float) -> None:
    step = max(1, -(-len(data) // chunks))
    with path.open("wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i:i + step])
            fh.flush()
            if pause_s:
                time.sleep(pause_s)


def write_config(tmp: Path, *, observer: str = "inotify", settle_s: float = 0.3,
                 complete_timeout_s: float = 2.0, rescan_s: float = 2.0,
                 grace_s: float = 10.0, workers: int = 2, ccds: Sequence[str] = CCDS,
                 alerts: bool = False, trust_rename: bool = True, extra: str = "") -> Path:
    """Write a daemon config for a test folder layout under ``tmp``; return its path."""
    for d in ("incoming", "products", "state"):
        (tmp / d).mkdir(exist_ok=True)
    cfg = tmp / "driftwatch.yaml"
    cfg.write_text(f"""\
paths:
  watch: [incoming]
  products: products
  state: state
watch:
  observer: {observer}
  poll_interval_s: 0.2
  settle_s: {settle_s}
  trust_rename: {"true" if trust_rename else "false"}
  complete_timeout_s: {complete_timeout_s}
  rescan_interval_s: {rescan_s}
  dq_wait_s: 0
pipeline:
  ccds: [{", ".join(ccds)}]
  skip_ccds: []
workers:
  count: {workers}
  max_tasks_per_worker: 1000
  retry_backoff_s: 0
  grace_period_s: {grace_s}
alerts:
  enabled: {"true" if alerts else "false"}
  rate_per_s: 10
  burst: 10
logging:
  level: INFO
{extra}""")
    return cfg


class NotifyListener:
    """A unix datagram socket standing in for systemd's notification socket.

    Like systemd, it reads all the time (a thread), so the sender never finds the queue full.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.sock.recv(65536).decode()
            except (TimeoutError, socket.timeout, BlockingIOError):
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(msg)

    def collect(self) -> list[str]:
        time.sleep(0.05)
        with self._lock:
            return list(self.messages)

    def wait_for(self, line: str, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line in m.split("\n") for m in self.collect()):
                return True
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class Daemon:
    """The real ``driftwatch run`` in a subprocess (killed at the end of the test, always)."""

    def __init__(self, config: Path, log: Path, *, notify: Path | None = None,
                 watchdog_usec: int | None = None, once: bool = False,
                 extra_args: Iterable[str] = (), task_sleep_s: float = 0.05,
                 env_extra: dict[str, str] | None = None, ccd_task: str | None = STANDIN) -> None:
        env = dict(os.environ)
        env.update(env_extra or {})
        env["DRIFTWATCH_STANDIN_SLEEP"] = str(task_sleep_s)
        env["DRIFTWATCH_STANDIN_LOG"] = str(config.parent / "products" / "standin-runs.log")
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        if notify is not None:
            env["NOTIFY_SOCKET"] = str(notify)
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        args = [sys.executable, "-m", "driftwatch.cli", "-v", "run", "--config", str(config),
                *(["--ccd-task", ccd_task] if ccd_task else []), *extra_args]
        if once:
            args.append("--once")
        self.log = log
        self._logf = log.open("ab")
        self.proc = subprocess.Popen(args, cwd=str(REPO), env=env, stdout=self._logf,
                                     stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)
        self._logf.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def db_rows(state: Path, query: str, params: Sequence = ()) -> list[tuple]:
    """Run a read-only query on the daemon's SQLite database."""
    db = state / "driftwatch.sqlite"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(query, params).fetchall()
    except sqlite3.OperationalError:
        return []  # not migrated yet
    finally:
        con.close()


def reductions(products: Path) -> list[str]:
    """Every reduction the stand-in ran ('EXPNUM CCD' per line), from its append-only log."""
    path = products / "standin-runs.log"
    return path.read_text().split("\n")[:-1] if path.exists() else []


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its children (cleanup after a failed test)."""
    try:
        import psutil
        proc = psutil.Process(pid)
        for child in proc.children(recursive=True):
            child.kill()
        proc.kill()
    except Exception:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
