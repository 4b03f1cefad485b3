"""``driftwatch status``: per night and exposure, text and JSON, after a real reprocess."""

from __future__ import annotations

import json

from driftwatch.cli import main
from driftwatch.store.db import Store
from driftwatch.store.models import Alert, CcdJob
from tests.commands.test_reprocess import NIGHT, reprocess
from tests.service.nightdata import make_config, write_night


def test_status_reports_jobs_failures_alerts_and_latency(tmp_path, capsys):
    cfg = make_config(tmp_path)
    cfg_path = tmp_path / "driftwatch.yaml"
    assert main(["status", "--config", str(cfg_path)]) == 0
    assert "no database yet" in capsys.readouterr().out

    write_night(tmp_path / "incoming", n_exposures=2)
    r = reprocess(cfg_path, "--ccd", "S4", "S5",
                  DRIFTWATCH_CCD_FUNCTION="tests.service.standins:reduce_ccd")
    assert r.returncode == 0, r.stderr
    store = Store.from_config(cfg)
    with store.session_scope() as s:  # one failure and one alert to report
        job = s.query(CcdJob).filter_by(ccd="S5").first()
        job.state, job.error, job.attempts = "failed", "boom: no stars", 3
        s.add(Alert(dedup_key="a", kind="flash", payload="{}", night=NIGHT))
        s.add(Alert(dedup_key="b", kind="flash", payload="{}", night=NIGHT, state="sent"))
    store.dispose()

    assert main(["status", NIGHT, "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "2 exposure(s)" in out and "done=3 failed=1" in out
    assert "alerts pending 1 sent 1" in out
    assert "FAILED S5 after 3 attempt(s): boom: no stars" in out
    assert "CCD/min" in out

    assert main(["status", "--json", "--config", str(cfg_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    (night,) = doc["nights"]
    assert night["night"] == NIGHT and night["jobs"] == {"done": 3, "failed": 1}
    assert night["alerts"] == {"pending": 1, "sent": 1}
    assert night["throughput_ccd_per_min"] > 0
    exps = night["exposures"]
    assert [e["expnum"] for e in exps] == [1000, 1001]
    assert all(e["latency_s"] is None or e["latency_s"] >= 0 for e in exps)
    assert exps[1]["latency_s"] is not None and exps[1]["dq"] is True
    assert sum(len(e["failures"]) for e in exps) == 1

    assert main(["status", "2026-99-01", "--config", str(cfg_path)]) == 2
