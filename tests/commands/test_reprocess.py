"""``driftwatch reprocess`` as an operator runs it: real subprocesses, a real SQLite file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from astropy.table import Table

from tests.service.nightdata import CCDS, make_config, write_night

REPO = Path(__file__).resolve().parents[2]
DRIFTWATCH = [sys.executable, "-m", "driftwatch.cli"]
NIGHT = "2026-11-20"


def env(**extra) -> dict[str, str]:
    e = dict(os.environ)
    e.update(PYTHONPATH=str(REPO), DRIFTWATCH_CCD_FUNCTION="tests.service.standins:reduce_ccd",
             DRIFTWATCH_CATALOGUE_FUNCTION="tests.service.standins:build_catalogue")
    e.pop("DRIFTWATCH_CONFIG", None)
    e.update(extra)
    return e


def reprocess(cfg_path: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*DRIFTWATCH, "reprocess", NIGHT, "--config", str(cfg_path), *args],
                          env=env(**kw), cwd=REPO, capture_output=True, text=True, timeout=120)


def products(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (root / "products" / NIGHT).rglob("*.fits")}


def job_rows(root: Path) -> list[tuple]:
    with sqlite3.connect(root / "state" / "driftwatch.sqlite") as db:
        return db.execute("SELECT e.expnum, j.ccd, j.state FROM ccd_jobs j JOIN exposures e "
                          "ON e.id = j.exposure_id WHERE j.kind = 'ccd'").fetchall()


@pytest.fixture
def night(tmp_path):
    make_config(tmp_path, skip=())
    write_night(tmp_path / "incoming", n_exposures=5)
    return tmp_path, tmp_path / "driftwatch.yaml"


def test_reprocess_all_done_then_nothing_redone_then_force(night):
    root, cfg = night
    r = reprocess(cfg)
    assert r.returncode == 0, r.stderr
    rows = job_rows(root)
    assert len(rows) == 20 and {s for *_, s in rows} == {"done"}
    assert "jobs: 21 done" in r.stdout  # 20 CCDs + the field's catalogue
    first = products(root)
    assert len(first) == 20

    r = reprocess(cfg)
    assert r.returncode == 0, r.stderr
    assert "0 job(s) run" in r.stdout
    assert products(root) == first

    r = reprocess(cfg, "--force", "--workers", "1")
    assert r.returncode == 0, r.stderr
    again = products(root)
    assert again.keys() == first.keys()
    assert all(again[p] != first[p] for p in first)
    assert len(job_rows(root)) == 20


def test_reprocess_subset_and_failures_exit_1(night):
    root, cfg = night
    r = reprocess(cfg, "--ccd", "S4", "--expnum", "1001", "1002")
    assert r.returncode == 0, r.stderr
    assert sorted(job_rows(root)) == [(1001, "S4", "done"), (1002, "S4", "done")]
    r = reprocess(cfg, "--ccd", "N4",
                  DRIFTWATCH_CCD_FUNCTION="tests.service.standins:bad_input_reduce_ccd")
    assert r.returncode == 1
    assert "FAILED 1000 N4" in r.stdout and "no stars" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["2026-13-40"], "not YYYY-MM-DD"),
    (["tonight"], "not YYYY-MM-DD"),
    ([NIGHT, "--ccd", "S99"], "not a DECam science CCD"),
    ([NIGHT, "--ccd", "S10"], "not in pipeline.ccds"),
    ([NIGHT, "--workers", "0"], "at least 1"),
])
def test_bad_arguments_exit_2(night, args, message, capsys):
    from driftwatch.cli import main

    root, cfg = night
    assert main(["reprocess", *args, "--config", str(cfg)]) == 2
    assert message in capsys.readouterr().err


def test_missing_folders_and_config_exit_2(tmp_path, capsys, monkeypatch):
    from driftwatch.cli import main

    make_config(tmp_path)  # incoming/ never created
    assert main(["reprocess", NIGHT, "--config", str(tmp_path / "driftwatch.yaml")]) == 2
    err = capsys.readouterr().err
    assert "do not exist" in err and "incoming" in err
    assert main(["reprocess", NIGHT, "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    monkeypatch.setenv("DRIFTWATCH_CONFIG", str(tmp_path / "env.yaml"))  # the default
    assert main(["reprocess", NIGHT]) == 2
    assert "env.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_9_mid_night_then_rerun(night):
    root, cfg = night
    proc = subprocess.Popen([*DRIFTWATCH, "reprocess", NIGHT, "--config", str(cfg)],
                            env=env(DRIFTWATCH_CCD_FUNCTION="tests.service.standins:slow_reduce_ccd",
                                    DRIFTWATCH_TEST_DELAY="0.3"),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                done = [r for r in job_rows(root) if r[2] == "done"]
            except sqlite3.OperationalError:  # not created yet
                done = []
            if len(done) >= 4:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        rows = job_rows(root)
        assert 4 <= sum(r[2] == "done" for r in rows) < 20, rows  # really mid-night
        assert any(r[2] == "running" for r in rows)
        time.sleep(0.5)  # let orphaned workers finish their CCD (they only rename into place)
        before = products(root)
        done_before = {(e, c) for e, c, s in rows if s == "done"}

        r = reprocess(cfg)
        assert r.returncode == 0, r.stderr
        rows = job_rows(root)
        assert len(rows) == 20 and len(set((e, c) for e, c, _ in rows)) == 20
        assert {s for *_, s in rows} == {"done"}
        after = products(root)
        assert len(after) == 20
        for p in after:
            table = Table.read(p)  # complete, readable
            assert table.meta["CCD"] in CCDS
            key = (int(table.meta["EXPNUM"]), table.meta["CCD"])
            if key in done_before:
                assert after[p] == before[p]  # done before the kill: not redone
        leftovers = [p for p in (root / "products").rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == []
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_operator_script_logs_to_a_file(night):
    root, cfg = night
    logs = root / "logs"
    r = subprocess.run([str(REPO / "scripts" / "reprocess-night"), NIGHT, "--ccd", "S4"],
                       env=env(DRIFTWATCH_CONFIG=str(cfg), DRIFTWATCH_LOG_DIR=str(logs)),
                       cwd=root, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    text = (logs / f"reprocess-{NIGHT}.log").read_text()
    assert "jobs: " in text and "exit 0" in text
    r = subprocess.run([str(REPO / "scripts" / "reprocess-night"), "bad-night"],
                       env=env(DRIFTWATCH_CONFIG=str(cfg), DRIFTWATCH_LOG_DIR=str(logs)),
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "reprocess-bad-night.log" in r.stderr


def test_second_dispatching_process_is_refused(night):
    from driftwatch.store.db import writer_lock

    root, cfg = night
    with writer_lock(root / "state", "driftwatch run (test)"):
        r = reprocess(cfg)
    assert r.returncode == 1 and "being written by driftwatch run (test)" in r.stderr
    assert reprocess(cfg).returncode == 0


def test_alerts_only_with_the_flag(night):
    root, cfg = night
    cands = "tests.service.standins:candidate_reduce_ccd"

    def alerts() -> int:
        with sqlite3.connect(root / "state" / "driftwatch.sqlite") as db:
            return db.execute("SELECT count(*) FROM alerts WHERE kind NOT LIKE 'ops%'").fetchone()[0]

    r = reprocess(cfg, "--ccd", "S4", DRIFTWATCH_CCD_FUNCTION=cands)
    assert r.returncode == 0, r.stderr
    assert alerts() == 0
    with sqlite3.connect(root / "state" / "driftwatch.sqlite") as db:
        assert db.execute("SELECT count(*) FROM candidates").fetchone()[0] == 5
    r = reprocess(cfg, "--ccd", "S4", "--force", "--alerts", DRIFTWATCH_CCD_FUNCTION=cands)
    assert r.returncode == 0, r.stderr
    assert alerts() == 5  # one message per exposure with candidates
    with sqlite3.connect(root / "state" / "driftwatch.sqlite") as db:  # replaced, not added
        assert db.execute("SELECT count(*) FROM candidates").fetchone()[0] == 5


@pytest.mark.slow
def test_simulated_night_through_the_real_pipeline(tmp_path):
    """5 exposures x 4 CCDs from ``driftwatch simulate``, reduced by the real reduce_ccd."""
    sim = subprocess.run([*DRIFTWATCH, "simulate", str(tmp_path / "incoming"), "--exposures", "5",
                          "--ccds", "S4,N4,S5,N5", "--shape", "512x256", "--stars", "120",
                          "--seed", "5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0, sim.stderr
    make_config(tmp_path, ccds=("S4", "N4", "S5", "N5"), skip=())
    cfg = tmp_path / "driftwatch.yaml"
    real = {"DRIFTWATCH_CCD_FUNCTION": "", "DRIFTWATCH_CATALOGUE_FUNCTION": ""}
    r = reprocess(cfg, **real)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = job_rows(root := tmp_path)
    assert len(rows) == 20 and {s for *_, s in rows} == {"done"}
    first = products(root)
    assert len({p.parent for p in first}) == 20  # one product folder per CCD
    r = reprocess(cfg, **real)
    assert r.returncode == 0 and "0 job(s) run" in r.stdout
    assert products(root) == first
    r = reprocess(cfg, "--force", **real)
    assert r.returncode == 0, r.stdout + r.stderr
    again = products(root)
    assert again.keys() == first.keys() and all(again[p] != first[p] for p in first)
