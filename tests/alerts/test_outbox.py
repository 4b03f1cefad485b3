from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from driftwatch.alerts import outbox
from driftwatch.alerts.sender import AlertSender
from driftwatch.store.models import Alert, Candidate, CcdJob, Exposure
from tests.alerts.conftest import candidate, exposure, make_config


def _alerts(store):
    with store.session_scope() as s:
        return [(a.dedup_key, a.state, a.route, a.kind) for a in s.scalars(select(Alert).order_by(Alert.id))]


def test_one_message_per_exposure_deduplicated(tmp_path, store):
    cfg = make_config(tmp_path)
    items = [candidate(0, ccd="S4"), candidate(1, ccd="N7"), candidate(2, significance=3.0)]
    with store.session_scope() as s:
        assert len(outbox.queue_exposure_alert(s, cfg, exposure(), items)) == 1
    with store.session_scope() as s:  # reprocessing finds the same candidates: nothing new
        assert outbox.queue_exposure_alert(s, cfg, exposure(), items[::-1]) == []
    rows = _alerts(store)
    assert len(rows) == 1 and rows[0][1] == "pending" and rows[0][3] == "candidates"
    with store.session_scope() as s:
        payload = json.loads(s.scalars(select(Alert)).one().payload)
    text = json.dumps(payload)
    assert "S4" in text and "N7" in text and "2 transient candidates" in text


def test_changed_candidates_after_reprocessing_are_an_update(tmp_path, store):
    cfg = make_config(tmp_path)
    with store.session_scope() as s:
        outbox.queue_exposure_alert(s, cfg, exposure(), [candidate(0)])
    with store.session_scope() as s:
        new = outbox.queue_exposure_alert(s, cfg, exposure(), [candidate(0), candidate(5)])
        assert len(new) == 1
        assert json.loads(new[0].payload)["blocks"][0]["text"]["text"].startswith(":telescope: Updated")


def test_routing_quiet_and_disabled(tmp_path, store):
    cfg = make_config(tmp_path, routes={"default": "slack-webhook", "fl": "flash-hook"},
                      kind_routes={"flash": "fl", "ops": "fl"}, quiet=True)
    items = [candidate(0), candidate(1, kind="flash")]
    with store.session_scope() as s:
        outbox.queue_exposure_alert(s, cfg, exposure(), items)
        outbox.queue_file_incomplete(s, cfg, "/in/x.fits.fz", 900.0)
    rows = _alerts(store)
    assert sorted((r[2], r[1]) for r in rows) == [("default", "suppressed"), ("fl", "pending"),
                                                  ("fl", "suppressed")]
    off = make_config(tmp_path, enabled=False)
    with store.session_scope() as s:
        assert outbox.queue_exposure_alert(s, off, exposure(99), items) == []


def test_ops_messages_once(tmp_path, store):
    cfg = make_config(tmp_path)
    with store.session_scope() as s:
        for _ in range(3):
            outbox.queue_file_incomplete(s, cfg, "/in/x.fits.fz", 900.0)
        outbox.queue_daemon_started(s, cfg, version="0.1")
    assert [r[3] for r in _alerts(store)] == ["ops:incomplete", "ops:started"]


def test_summary_due_window():
    lon = -70.81489
    t = datetime(2026, 11, 22, 12, 5, tzinfo=timezone.utc)
    assert outbox.summary_due(t, "12:00", lon) == "2026-11-21"
    assert outbox.summary_due(t - timedelta(minutes=10), "12:00", lon) is None  # yesterday's summary time is over 12 h ago
    assert outbox.summary_due(t + timedelta(hours=13), "12:00", lon) is None


def _night(store, states, n_cands=1):
    now = datetime.now(timezone.utc)
    with store.session_scope() as s:
        e = Exposure(path="/in/DECam_00123456.fits.fz", night="2026-11-21", expnum=123456, band="VR",
                     role="drift", field="F3", state="failed", date_obs="2026-11-22T03:14:15",
                     arrived_at=now - timedelta(seconds=100), finished_at=now)
        s.add(e)
        s.flush()
        for i, st in enumerate(states):
            job = CcdJob(exposure_id=e.id, kind="ccd", ccd=f"S{i + 1}", state=st,
                         product_path=f"/p/2026-11-21/123456/S{i + 1}",
                         error="bad sky" if st == "failed" else None)
            s.add(job)
            s.flush()
            if i < n_cands:
                c = candidate(i).candidate
                s.add(Candidate(job_id=job.id, kind=c.kind, star_id=c.star_id, ra=c.ra, dec=c.dec,
                                x=c.x, y=c.y, t_peak_s=c.t_peak_s, duration_s=c.duration_s,
                                amplitude=c.amplitude, significance=c.significance, mag=c.mag,
                                stamp_path=c.stamp_path))
        return e.id


def test_exposure_done_hook_and_summary(tmp_path, store):
    cfg = make_config(tmp_path)
    exp_id = _night(store, ["done"] * 8 + ["failed"] * 4)
    hook = outbox.exposure_done_hook(cfg)
    for _ in range(2):
        with store.session_scope() as s:
            hook(s, s.get(Exposure, exp_id))
    kinds = [r[3] for r in _alerts(store)]
    assert kinds == ["candidates", "ops:exposure-failed", "ops:failure-rate"]
    with store.session_scope() as s:
        summary = outbox.night_summary(s, "2026-11-21")
        assert (summary.n_exposures, summary.n_ccds_done, summary.n_ccds_failed,
                summary.n_candidates, summary.n_exposures_failed) == (1, 8, 4, 1, 1)
        assert abs(summary.median_latency_s - 100) < 1
        t = datetime(2026, 11, 22, 12, 1, tzinfo=timezone.utc)
        assert outbox.queue_nightly_summary_if_due(s, cfg, t) is not None
        assert outbox.queue_nightly_summary_if_due(s, cfg, t + timedelta(minutes=5)) is None


def test_dry_run_writes_json_and_marks_rows(tmp_path, store):
    cfg = make_config(tmp_path, dry_run=True)
    with store.session_scope() as s:
        outbox.queue_exposure_alert(s, cfg, exposure(), [candidate(0)])
    sender = AlertSender(cfg, store)
    assert sender.run_until_idle(5) == 0
    assert [r[1] for r in _alerts(store)] == ["dry_run"]
    files = list((tmp_path / "products" / "alerts-dry-run").rglob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["blocks"]


def test_retry_failed_and_recover_in_flight(tmp_path, store):
    cfg = make_config(tmp_path)
    with store.session_scope() as s:
        a = outbox.queue_file_incomplete(s, cfg, "/a", 1.0)
        b = outbox.queue_file_incomplete(s, cfg, "/b", 1.0)
        a.state, a.attempts, b.state = "failed", 3, "sending"
    with store.session_scope() as s:
        assert outbox.recover_in_flight(s) == [b.id]
        assert outbox.retry_failed(s) == 1
    assert [r[1] for r in _alerts(store)] == ["pending", "pending"]


def test_flash_with_nan_time_from_the_database(tmp_path, store):
    cfg = make_config(tmp_path)
    exp_id = _night(store, ["done"], n_cands=0)
    with store.session_scope() as s:
        job = s.scalars(select(CcdJob)).one()
        s.add(Candidate(job_id=job.id, kind="flash", star_id=None, ra=10.0, dec=-5.0, x=1.0, y=2.0,
                        t_peak_s=float("nan"), duration_s=0.0, amplitude=900.0, significance=30.0))
    with store.session_scope() as s:
        (alert,) = outbox.queue_exposure_alert_from_db(s, cfg, exp_id)
        assert "not measurable" in alert.payload
