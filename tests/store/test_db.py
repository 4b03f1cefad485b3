"""Engine settings, session scope, migrations (oldest -> newest with rows kept), writer lock."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from driftwatch.errors import StoreError
from driftwatch.store.db import Store, current_revision, head_revision, make_engine, upgrade, \
    writer_lock
from driftwatch.store.models import Alert, Candidate, CcdJob, Exposure


def test_sqlite_pragmas(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'sub' / 'db.sqlite'}")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
    assert current_revision(store.engine) == head_revision()
    store.dispose()


def test_session_scope_rolls_back(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with pytest.raises(RuntimeError):
        with store.session_scope() as s:
            s.add(Exposure(path="/a", role="drift", state="planned"))
            s.flush()
            raise RuntimeError("boom")
    with store.session_scope() as s:
        assert s.query(Exposure).count() == 0
    with pytest.raises(StoreError):  # unique dedup key: a database error becomes StoreError
        with store.session_scope() as s:
            s.add_all([Alert(dedup_key="k", kind="x", payload="{}"),
                       Alert(dedup_key="k", kind="x", payload="{}")])
    store.dispose()


def test_write_transactions_take_the_lock_at_begin(tmp_path, monkeypatch):
    """BEGIN IMMEDIATE: a transaction takes the write lock when it starts, so even a read-only
    statement waits for (then fails on) another writer, instead of failing later mid-write."""
    from driftwatch.store import db as dbmod

    path = tmp_path / "db.sqlite"
    Store(f"sqlite:///{path}").dispose()
    other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    monkeypatch.setattr(dbmod, "BUSY_TIMEOUT_MS", 200)
    engine = make_engine(f"sqlite:///{path}")
    try:
        with pytest.raises(Exception, match="locked"):
            with engine.connect() as conn:
                conn.execute(text("SELECT count(*) FROM exposures")).scalar()
        other.execute("ROLLBACK")
        with engine.connect() as conn:  # lock released: the same statement now works
            assert conn.execute(text("SELECT count(*) FROM exposures")).scalar() == 0
    finally:
        other.close()
        engine.dispose()


def test_foreign_keys_enforced(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with pytest.raises(StoreError):
        with store.session_scope() as s:
            s.add(CcdJob(exposure_id=999, ccd="S4"))
    store.dispose()


def test_upgrade_from_oldest_keeps_rows_and_new_columns_work(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = make_engine(url)
    upgrade(engine, "0001")  # the oldest migration
    assert current_revision(engine) == "0001"
    with engine.begin() as conn:
        cols = {r[1] for r in conn.exec_driver_sql("PRAGMA table_info(ccd_jobs)")}
        assert "next_attempt_at" not in cols
        conn.exec_driver_sql(
            "INSERT INTO exposures (id, path, night, expnum, role, state, arrived_at, updated_at)"
            " VALUES (1, '/d/a.fits', '2026-11-20', 42, 'drift', 'done', "
            "'2026-11-21 05:00:00', '2026-11-21 05:00:00')")
        conn.exec_driver_sql(
            "INSERT INTO ccd_jobs (id, exposure_id, kind, ccd, state, attempts, created_at,"
            " product_path, n_trails) VALUES (7, 1, 'ccd', 'S4', 'done', 1,"
            " '2026-11-21 05:01:00', '/p/S4', 123)")
        conn.exec_driver_sql(
            "INSERT INTO candidates (id, job_id, kind, ra, dec, x, y, t_peak_s, duration_s,"
            " amplitude, significance, created_at) VALUES (3, 7, 'brightening', 150.0, -30.0,"
            " 10.0, 20.0, 4.5, 1.0, 0.3, 9.0, '2026-11-21 05:01:30')")
        conn.exec_driver_sql(
            "INSERT INTO alerts (dedup_key, route, kind, payload, state, attempts, created_at,"
            " candidate_id) VALUES ('k1', 'default', 'flash', '{}', 'pending', 0,"
            " '2026-11-21 05:02:00', 3)")
    engine.dispose()

    store = Store(url)  # migrates to head on opening
    assert current_revision(store.engine) == head_revision() != "0001"
    with store.session_scope() as s:
        job = s.get(CcdJob, 7)
        assert (job.ccd, job.state, job.product_path, job.n_trails) == ("S4", "done", "/p/S4", 123)
        assert job.exposure.expnum == 42 and job.exposure.dq_missing is False
        assert job.next_attempt_at is None
        job.next_attempt_at = job.created_at
        job.config_hash = "abcd"
        job.exposure.dq_missing = True
        alert = s.query(Alert).one()
        assert (alert.dedup_key, alert.candidate_id) == ("k1", 3)  # the table copy cascaded nothing
        cand = s.get(Candidate, 3)
        assert (cand.job_id, cand.t_peak_s) == (7, 4.5)
        s.add(Candidate(job_id=7, kind="flash", ra=1.0, dec=2.0, x=0.0, y=0.0, t_peak_s=None,
                        duration_s=None, amplitude=1.0, significance=8.0))  # 0003: may be NULL
    with store.session_scope() as s:
        job = s.get(CcdJob, 7)
        assert job.next_attempt_at == job.created_at and job.config_hash == "abcd"
        assert job.exposure.dq_missing is True
    store.dispose()


def test_writer_lock_excludes_other_processes(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from driftwatch.store.db import writer_lock\n"
            "with writer_lock(Path(sys.argv[1]), 'second'): pass")
    with writer_lock(tmp_path, "first"):
        with writer_lock(tmp_path, "re-entrant in the same process"):
            pass
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode != 0 and "being written by first" in r.stderr
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_readonly_sessions_do_not_wait_for_the_writer(tmp_path, monkeypatch):
    from driftwatch.store import db as dbmod

    path = tmp_path / "db.sqlite"
    Store(f"sqlite:///{path}").dispose()
    monkeypatch.setattr(dbmod, "BUSY_TIMEOUT_MS", 200)
    store = Store(f"sqlite:///{path}", migrate=False)
    other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO exposures (path, role, state, arrived_at, updated_at) "
                  "VALUES ('/x', 'drift', 'planned', '2026-11-21', '2026-11-21')")
    try:
        with store.session_scope(readonly=True) as s:
            assert s.query(Exposure).count() == 0   # the writer's row is not committed yet
        with pytest.raises(StoreError, match="locked"):
            with store.session_scope() as s:
                s.query(Exposure).count()
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.dispose()
