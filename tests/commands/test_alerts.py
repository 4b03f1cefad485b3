"""``driftwatch alerts test | list | retry | send`` through the real command line."""

from __future__ import annotations

import socket

import pytest
import yaml

from driftwatch import cli
from driftwatch.alerts import outbox
from driftwatch.alerts.standin import StandinServer
from driftwatch.store.db import Store
from tests.alerts.conftest import SECRET_PATH, candidate, exposure, make_config


@pytest.fixture
def cfg_path(tmp_path):
    path = tmp_path / "driftwatch.yaml"
    path.write_text(yaml.safe_dump({
        "paths": {"watch": [str(tmp_path / "in")], "products": str(tmp_path / "products"),
                  "state": str(tmp_path / "state")},
        "alerts": {"rate_per_s": 10.0, "burst": 5},
    }))
    return path


@pytest.fixture
def server():
    s = StandinServer().start()
    yield s
    s.stop()


def test_alerts_test_delivers(cfg_path, server, monkeypatch, capsys):
    monkeypatch.setenv("DRIFTWATCH_SLACK_WEBHOOK", server.url(SECRET_PATH))
    assert cli.main(["alerts", "test", "--config", str(cfg_path)]) == 0
    assert "delivered" in capsys.readouterr().out
    assert len(server.received) == 1 and "test message" in server.received[0]["payload"]["text"]


def test_alerts_test_fails_clearly_without_the_url(cfg_path, monkeypatch, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("DRIFTWATCH_SLACK_WEBHOOK", f"http://127.0.0.1:{port}{SECRET_PATH}")
    assert cli.main(["alerts", "test", "--config", str(cfg_path)]) == 1
    err = capsys.readouterr().err
    assert "not delivered" in err and "Connection refused" in err
    assert "sEcReTtOkEn" not in err and "B0TEST" not in err
    monkeypatch.delenv("DRIFTWATCH_SLACK_WEBHOOK")
    assert cli.main(["alerts", "test", "--config", str(cfg_path)]) == 1
    assert "DRIFTWATCH_SLACK_WEBHOOK" in capsys.readouterr().err


def test_list_retry_send(tmp_path, cfg_path, server, monkeypatch, capsys):
    cfg = make_config(tmp_path)
    store = Store(cfg.paths.resolved_database_url)
    with store.session_scope() as s:
        a = outbox.queue_exposure_alert(s, cfg, exposure(1), [candidate(0)])[0]
        outbox.queue_exposure_alert(s, cfg, exposure(2), [candidate(1)])
        a.state, a.last_error = "failed", "HTTP 400: invalid_payload"
    store.dispose()
    args = ["--config", str(cfg_path)]
    assert cli.main(["alerts", "list", "--pending", *args]) == 0
    out = capsys.readouterr().out
    assert "cand/2026-11-21/2/" in out and "cand/2026-11-21/1/" not in out
    assert cli.main(["alerts", "list", *args]) == 0
    assert "invalid_payload" in capsys.readouterr().out
    assert cli.main(["alerts", "retry", *args]) == 0
    assert "1 failed alert(s) re-queued" in capsys.readouterr().out
    assert cli.main(["alerts", "send", *args]) == 1  # no credential: says which, at once
    assert "DRIFTWATCH_SLACK_WEBHOOK" in capsys.readouterr().err
    monkeypatch.setenv("DRIFTWATCH_SLACK_WEBHOOK", server.url(SECRET_PATH))
    assert cli.main(["alerts", "send", *args]) == 0
    assert [e["payload"]["text"].split(" (")[0] for e in server.received] == [
        "1 transient candidate in exposure 1", "1 transient candidate in exposure 2"]
    assert cli.main(["alerts", "list", "--json", *args]) == 0
    assert capsys.readouterr().out.count('"state": "sent"') == 2
