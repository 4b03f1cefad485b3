"""A night with Slack down, then back; a sender killed with kill -9 and restarted.

Both against the stand-in webhook server (a real HTTP server on 127.0.0.1).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from driftwatch.alerts import outbox
from driftwatch.alerts.sender import AlertSender
from driftwatch.alerts.standin import StandinServer, read_record
from driftwatch.store.db import Store
from tests.alerts.conftest import SECRET_PATH, candidate, exposure, make_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _queue(store, cfg, expnums) -> None:
    for n in expnums:
        with store.session_scope() as s:
            outbox.queue_exposure_alert(s, cfg, exposure(n), [candidate(n % 7)])


def _expnums(entries) -> list[int]:
    return [int(e["payload"]["blocks"][0]["text"]["text"].rsplit(" ", 1)[1]) for e in entries
            if "transient" in e["payload"]["text"]]


def test_slack_down_then_back(tmp_path, store, caplog):
    caplog.set_level(logging.INFO, logger="driftwatch")
    port = _free_port()  # nobody listens here yet: connection refused
    cfg = make_config(tmp_path, f"http://127.0.0.1:{port}{SECRET_PATH}",
                      retry_backoff_s=0.05, retry_max_backoff_s=0.3)
    sender = AlertSender(cfg, store, idle_poll_s=0.1, outage_report_min_s=0.5)
    sender.start()
    server = None
    try:
        for n in range(1000, 1004):  # exposures of the night while Slack is down
            _queue(store, cfg, [n])
            sender.wake()
            time.sleep(0.2)
        assert sender.status()["default"]["reachable"] is False
        server = StandinServer(port=port).start()
        assert _wait(lambda: len(server.received) >= 4, 5)
        _queue(store, cfg, range(1004, 1007))
        sender.wake()
        assert _wait(lambda: len(server.received) >= 8, 5)
        time.sleep(0.3)  # nothing else (a duplicate) may follow
    finally:
        sender.stop()
        if server is not None:
            server.stop()
    assert _expnums(server.received) == list(range(1000, 1007))  # all, in order, none twice
    restored = [e for e in server.received if "reachable again" in e["payload"]["text"]]
    assert len(restored) == 1 and "4 messages delivered late" in restored[0]["payload"]["text"]
    assert len(server.received) == 8
    warnings = [r.getMessage() for r in caplog.records if r.name == "driftwatch.alerts.sender"]
    assert sum(m.startswith("Slack route 'default' unreachable since") for m in warnings) == 1
    assert sum("reachable again" in m for m in warnings) == 1
    with store.session_scope() as s:
        assert outbox.state_counts(s) == {"sent": 8}


def _send(cfg_path: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "driftwatch.cli", "-vv", "alerts", "send", "--config",
         str(cfg_path), "--timeout", "30"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def test_sender_killed_with_alerts_pending_then_restarted(tmp_path):
    record = tmp_path / "received.jsonl"
    server = StandinServer(record).start()
    try:
        cfg_path = tmp_path / "driftwatch.yaml"
        cfg_path.write_text(yaml.safe_dump({
            "paths": {"watch": [str(tmp_path / "in")], "products": str(tmp_path / "products"),
                      "state": str(tmp_path / "state")},
            "alerts": {"rate_per_s": 2.0, "burst": 1},
        }))
        cfg = make_config(tmp_path)
        store = Store(cfg.paths.resolved_database_url)
        _queue(store, cfg, range(1000, 1006))
        store.dispose()
        env = {**os.environ, "DRIFTWATCH_SLACK_WEBHOOK": server.url(SECRET_PATH)}

        first = _send(cfg_path, env, tmp_path / "first.log")
        assert _wait(lambda: len(server.received) >= 2, 15)
        time.sleep(0.15)  # between two sends (one every 0.5 s): the last one is recorded
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        n_before = len(server.received)
        assert 2 <= n_before < 6

        second = _send(cfg_path, env, tmp_path / "second.log")
        assert second.wait(30) == 0
    finally:
        server.stop()
    assert _expnums(read_record(record)) == list(range(1000, 1006))  # each once, in order
    store = Store(cfg.paths.resolved_database_url)
    with store.session_scope() as s:
        assert outbox.state_counts(s) == {"sent": 6}
    store.dispose()
    logs = (tmp_path / "first.log").read_text() + (tmp_path / "second.log").read_text()
    assert "alert 1 sent" in logs
    assert "sEcReTtOkEn" not in logs and "B0TEST" not in logs
