"""The real daemon (``python -m driftwatch.cli run``) in a subprocess, fed like the transfer system.

Each test starts the daemon on a temporary folder, delivers small RICE-compressed DECam-like
files (rsync-style temp name then rename, scp-style in place in chunks, truncated, corrupt,
with a missing CCD) and checks, from the stand-in's append-only run log and the database, that
every complete exposure was reduced exactly once and nothing else was.
"""

from __future__ import annotations

import collections
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from driftwatch.alerts.standin import StandinServer

from tests.service._delivery import (
    CCDS, Daemon, NotifyListener, db_rows, deliver_inplace, deliver_rename, exposure_bytes,
    exposure_name, kill_tree, reductions, wait_until, write_config,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def daemons():
    """Start daemons through this; whatever is still alive at the end is killed."""
    started: list[Daemon] = []

    def _start(*args, **kwargs) -> Daemon:
        d = Daemon(*args, **kwargs)
        started.append(d)
        return d

    yield _start
    for d in started:
        if d.alive():
            kill_tree(d.pid)
        d.kill()


def _counts(products: Path) -> collections.Counter:
    return collections.Counter(reductions(products))


def _expect(expnums, ccds=CCDS) -> collections.Counter:
    return collections.Counter(f"{e} {c}" for e in expnums for c in ccds)


def _job_states(state: Path) -> dict[str, int]:
    return dict(db_rows(state, "select state, count(*) from ccd_jobs group by state"))


def test_a_night_delivered_every_way(tmp_path, daemons):
    """Files before start-up, renamed, written in place, truncated, corrupt, missing a CCD."""
    cfg = write_config(tmp_path, complete_timeout_s=2.0, rescan_s=1.0, alerts=True)
    inc, products, state = tmp_path / "incoming", tmp_path / "products", tmp_path / "state"
    night = inc / "20261120"
    night.mkdir()
    for e in (1, 2):                                               # present before start-up
        deliver_rename(night, exposure_name(e), exposure_bytes(e))
    listener = NotifyListener(tmp_path / "notify.sock")
    slack = StandinServer().start()                                # a real HTTP server
    d = daemons(cfg, tmp_path / "daemon.log", notify=listener.path, watchdog_usec=400_000,
                env_extra={"DRIFTWATCH_SLACK_WEBHOOK": slack.url()})
    try:
        assert listener.wait_for("READY=1", 30), d.text()
        for e in (3, 4):                                           # rsync: temp name, rename
            deliver_rename(night, exposure_name(e), exposure_bytes(e), chunks=5, pause_s=0.05)
        deliver_inplace(night, exposure_name(5), exposure_bytes(5),  # scp: in place, slowly
                        chunks=6, pause_s=0.1)
        whole = exposure_bytes(6)
        deliver_inplace(night, exposure_name(6), whole, upto=len(whole) - 2880)  # never ends
        bad = bytearray(exposure_bytes(7))
        bad[-3000] ^= 0x55                                         # a flipped bit: corrupt
        deliver_rename(night, exposure_name(7), bytes(bad))
        deliver_rename(night, exposure_name(8),                    # NEXTEND=4, 3 CCDs present
                       exposure_bytes(8, ccds=CCDS[:3], nextend=4))
        deliver_rename(night, exposure_name(9),                    # a CCD absent, consistently
                       exposure_bytes(9, ccds=CCDS[:3]))
        d.signal(signal.SIGHUP)                                    # reload mid-night
        want = _expect((1, 2, 3, 4, 5)) + _expect((9,), CCDS[:3])
        assert wait_until(lambda: _counts(products) == want, 40), (_counts(products), d.text())
        # The stuck files are reported once each, then left alone by the next scans.
        assert wait_until(lambda: d.text().count("not complete after") >= 2, 20), d.text()
        time.sleep(2.5)                                            # two more rescans
        assert d.alive()
        assert listener.wait_for("WATCHDOG=1", 5)
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0
    finally:
        listener.collect()
        listener.close()
        slack.stop()
    log = d.text()
    sent = [json.dumps(m) for m in slack.received]
    assert sum("never completed" in m for m in sent) == 2, sent    # one message per stuck file
    assert sum(exposure_name(7) in m for m in sent) == 1, sent     # the corrupt file, once
    assert any("started" in m for m in sent) and any("stopped" in m for m in sent), sent
    assert _counts(products) == want                               # exactly once, nothing else
    assert log.count("not complete after") == 2, log
    assert f"{exposure_name(6)}: not complete" in log and f"{exposure_name(8)}: not complete" in log
    assert "3 of NEXTEND=4 extensions present" in log
    assert "configuration reloaded" in log
    rows = dict(db_rows(state, "select path, state from exposures"))
    assert rows[str((night / exposure_name(7)).resolve())] == "failed"
    assert str((night / exposure_name(6)).resolve()) not in rows
    skipped = db_rows(state, "select e.expnum, j.ccd, j.reason from ccd_jobs j join exposures e "
                             "on e.id = j.exposure_id where j.state = 'skipped'")
    assert [(e, c) for e, c, _ in skipped] == [(9, "S4")]
    assert _job_states(state) == {"done": 23, "skipped": 1}
    lines = [m for msg in listener.messages for m in msg.split("\n")]
    assert lines[0] == "STATUS=starting" and "READY=1" in lines and "STOPPING=1" in lines
    assert lines.index("READY=1") < lines.index("WATCHDOG=1") < lines.index("STOPPING=1")
    assert "RELOADING=1" in lines


@pytest.mark.parametrize("trust_rename", [True, False])
def test_a_renamed_file_skips_the_settle_wait(tmp_path, daemons, trust_rename):
    """Renamed into place: reduced at once; written in place: only after settle_s."""
    settle = 4.0
    cfg = write_config(tmp_path, settle_s=settle, complete_timeout_s=60, rescan_s=60,
                       trust_rename=trust_rename)
    inc, products = tmp_path / "incoming", tmp_path / "products"
    d = daemons(cfg, tmp_path / "daemon.log")
    assert wait_until(lambda: "ready (pid" in d.text(), 30), d.text()
    t0 = time.monotonic()
    deliver_rename(inc, exposure_name(1), exposure_bytes(1), chunks=4)
    deliver_inplace(inc, exposure_name(2), exposure_bytes(2), chunks=4)
    renamed_done = lambda: _counts(products) >= _expect((1,))  # noqa: E731
    if trust_rename:
        assert wait_until(renamed_done, settle - 1.5), (_counts(products), d.text())
        assert _counts(products) == _expect((1,))   # the one written in place still settles
    else:
        assert not wait_until(renamed_done, settle - 1.0)
    assert wait_until(lambda: _counts(products) == _expect((1, 2)), 20), d.text()
    assert time.monotonic() - t0 >= settle
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0


def test_sigterm_mid_night_restart_and_files_arriving_while_stopped(tmp_path, daemons):
    cfg = write_config(tmp_path, grace_s=10.0)
    inc, products, state = tmp_path / "incoming", tmp_path / "products", tmp_path / "state"
    for e in range(1, 7):
        deliver_rename(inc, exposure_name(e), exposure_bytes(e))
    d = daemons(cfg, tmp_path / "daemon1.log", task_sleep_s=0.4)
    assert wait_until(lambda: len(reductions(products)) >= 4, 40), d.text()
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    stop_s = time.monotonic() - t0
    assert stop_s < 10.0                                           # within the grace period
    states = _job_states(state)
    assert "running" not in states and states.get("queued", 0) > 0, states
    done_first = len(reductions(products))
    assert states["done"] == done_first                            # no CCD lost or unrecorded
    for e in (7, 8):                                               # arrive while it is down
        deliver_rename(inc, exposure_name(e), exposure_bytes(e))
    d2 = daemons(cfg, tmp_path / "daemon2.log", task_sleep_s=0.05)
    want = _expect(range(1, 9))
    assert wait_until(lambda: _counts(products) == want, 60), (_counts(products), d2.text())
    assert wait_until(lambda: _job_states(state) == {"done": 32}, 10), _job_states(state)
    d2.signal(signal.SIGTERM)
    assert d2.wait(15) == 0
    assert _counts(products) == want                               # each CCD exactly once


@pytest.mark.parametrize("how", ["second_signal", "grace_expires"])
def test_ccds_longer_than_the_stop_are_handed_back_and_done_once(tmp_path, daemons, how):
    """A second SIGTERM exits at once; a grace period shorter than the CCDs ends the wait.
    Either way the running CCDs go back to 'queued' and the next start does them once."""
    grace = 60.0 if how == "second_signal" else 1.0
    cfg = write_config(tmp_path, grace_s=grace)
    inc, products, state = tmp_path / "incoming", tmp_path / "products", tmp_path / "state"
    for e in (1, 2):
        deliver_rename(inc, exposure_name(e), exposure_bytes(e))
    d = daemons(cfg, tmp_path / "daemon1.log", task_sleep_s=6.0)
    assert wait_until(lambda: _job_states(state).get("running", 0) == 2, 30), d.text()
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    if how == "second_signal":
        time.sleep(0.5)
        assert d.alive()                                           # draining: within grace
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
    assert d.wait(10) == 0
    limit = grace + 2.5 if how == "grace_expires" else 3.0
    assert time.monotonic() - t0 < limit, d.text()                 # not after the 6 s CCDs
    assert _job_states(state) == {"queued": 8}                     # consistent: none running
    assert reductions(products) == []
    d2 = daemons(cfg, tmp_path / "daemon2.log", task_sleep_s=0.02, once=True)
    assert d2.wait(60) == 0, d2.text()
    assert _counts(products) == _expect((1, 2))


def test_200_files_at_once_with_the_polling_observer(tmp_path, daemons):
    cfg = write_config(tmp_path, observer="polling", ccds=("S1",), rescan_s=600.0)
    inc, products, state = tmp_path / "incoming", tmp_path / "products", tmp_path / "state"
    staging = tmp_path / "staging"
    staging.mkdir()
    data = {e: exposure_bytes(e, ccds=("S1",), size=8) for e in range(1, 201)}
    for e, blob in data.items():
        (staging / f".{exposure_name(e)}.tmp").write_bytes(blob)
    listener = NotifyListener(tmp_path / "notify.sock")
    d = daemons(cfg, tmp_path / "daemon.log", notify=listener.path, task_sleep_s=0.0)
    try:
        assert listener.wait_for("READY=1", 30), d.text()
        for e in data:                                             # all land at once
            shutil.move(staging / f".{exposure_name(e)}.tmp", inc / exposure_name(e))
        want = _expect(range(1, 201), ("S1",))
        assert wait_until(lambda: _counts(products) == want, 90), d.text()[-3000:]
        assert d.alive()
        d.signal(signal.SIGTERM)
        assert d.wait(20) == 0
    finally:
        listener.close()
    assert _counts(products) == want
    assert "polling observer" in d.text()


def test_bad_config_exits_2(tmp_path):
    cfg = write_config(tmp_path)
    shutil.rmtree(tmp_path / "incoming")
    proc = subprocess.run([".venv/bin/python", "-m", "driftwatch.cli", "run", "--config",
                           str(cfg)], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "paths.watch" in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    unit = (repo / "systemd" / "driftwatch.service").read_text()
    # verify checks that ExecStart exists: point it at this checkout's entry point.
    unit = unit.replace("/opt/driftwatch/.venv/bin/driftwatch", str(repo / ".venv/bin/driftwatch"))
    (tmp_path / "driftwatch.service").write_text(unit)
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "driftwatch.service")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "driftwatch.service" not in proc.stderr, proc.stderr
    for key in ("Type=notify", "WatchdogSec=", "NotifyAccess=main", "KillMode=mixed",
                "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                "LoadCredential=slack-webhook:", "User=driftwatch"):
        assert key in unit


def test_simulated_night_through_the_real_pipeline(tmp_path, daemons):
    """The default worker function (the real reduce_ccd and catalogue builder) on a small
    simulated night delivered in real time by the simulator (temp names, renames, chunks)."""
    from driftwatch.simulate.deliver import deliver
    from driftwatch.simulate.night import NightSpec, simulate_night

    sim = tmp_path / "sim"
    spec = NightSpec(n_drift=2, ccds=("N4", "S4"), shape=(384, 192), stars_per_ccd=60,
                     seed=11, compress=True, flashes_per_ccd=0, streak_probability=0.0)
    simulate_night(sim, spec)
    cfg = write_config(tmp_path, alerts=True)
    text = cfg.read_text().replace("ccds: [S1, S2, S3, S4]", "ccds: [N4, S4]")
    text = text.replace("dq_wait_s: 0", "dq_wait_s: 30").replace("enabled: true",
                                                                  "enabled: true\n  dry_run: true")
    cfg.write_text(text)
    inc, state = tmp_path / "incoming", tmp_path / "state"
    d = daemons(cfg, tmp_path / "daemon.log", ccd_task=None)      # the default: the real one
    assert wait_until(lambda: "ready (pid" in d.text(), 30), d.text()
    images = sorted(sim.glob("*_ooi_*.fits.fz"))
    pairs = [(p, p.with_name(p.name.replace("_ooi_", "_ood_"))) for p in images]
    deliver(pairs, inc, cadence_s=1.0, seed=2, write_seconds=0.5)

    def finished() -> bool:
        states = _job_states(state)
        return bool(states) and not states.get("queued") and not states.get("running")

    assert wait_until(finished, 90, interval=0.5), (_job_states(state), d.text()[-4000:])
    rows = db_rows(state, "select e.expnum, j.kind, j.ccd, j.state, j.attempts, j.error "
                          "from ccd_jobs j join exposures e on e.id = j.exposure_id")
    assert sorted((k, c, st, a) for _, k, c, st, a, _ in rows) == [
        ("catalogue", "catalogue", "done", 1)] + [("ccd", c, "done", 1)
                                                  for c in ("N4", "N4", "S4", "S4")], rows
    dq = db_rows(state, "select count(*) from exposures where role = 'drift' and dq_path is null")
    assert dq == [(0,)]                                            # every image got its mask
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0


def test_watchdog_pings_only_while_the_database_answers(tmp_path):
    """In-process: the health check gates WATCHDOG=1 (real SQLite, real socket, real pool)."""
    import socket as socketmod

    from driftwatch.config import load_config
    from driftwatch.service.daemon import Daemon
    from driftwatch.service.dispatcher import Dispatcher
    from driftwatch.service.executor import LocalExecutor
    from driftwatch.service.sdnotify import Notifier
    from driftwatch.store.db import Store

    cfg = load_config(write_config(tmp_path))
    sock = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_DGRAM)
    sock.bind(str(tmp_path / "n.sock"))
    sock.settimeout(0.2)
    d = Daemon(cfg, notifier=Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock"),
                                       "WATCHDOG_USEC": "2"}))    # a ping due at every turn
    d.store = Store.from_config(cfg)
    d.executor = LocalExecutor(1)
    d.dispatcher = Dispatcher(cfg, d.store, d.executor)
    d.watcher = d._make_watcher(cfg)
    d.watcher.start()

    def pinged() -> bool:
        d._health()
        try:
            return b"WATCHDOG=1" in sock.recv(4096).split(b"\n")
        except (TimeoutError, socketmod.timeout):
            return False

    try:
        assert pinged()
        d.store.dispose()
        shutil.rmtree(cfg.paths.state)                              # the database is gone
        (tmp_path / "state").write_text("not a folder")             # and cannot come back
        assert not pinged() and not d._healthy
        (tmp_path / "state").unlink()
        (tmp_path / "state").mkdir()
        assert pinged() and d._healthy                              # restored
    finally:
        d.watcher.stop()
        d.executor.shutdown(wait=True)
        d.store.dispose()
        d.notifier.close()
        sock.close()
