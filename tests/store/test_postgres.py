"""The job store on a real PostgreSQL server (issue 5: any SQLAlchemy URL, PostgreSQL included).

A throw-away cluster is made with ``initdb`` and run with ``pg_ctl`` on a free 127.0.0.1 port,
as an operator would; it is stopped at the end of the module. The module is skipped, with the
reason, when the PostgreSQL server programs or the psycopg driver are not installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text

from driftwatch.store.db import Store, current_revision, head_revision, make_engine, upgrade
from driftwatch.store.models import Alert, Candidate, CcdJob, Exposure

pytestmark = pytest.mark.slow

TABLES = {"exposures", "ccd_jobs", "candidates", "alerts"}


def _find_server_bin() -> Path | None:
    """Folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/*/bin."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


BIN = _find_server_bin()
if BIN is None:
    pytest.skip("PostgreSQL server programs initdb and pg_ctl not found (neither on PATH nor in "
                "/usr/lib/postgresql/*/bin); install the 'postgresql' package",
                allow_module_level=True)
pytest.importorskip("psycopg", reason="the psycopg driver is not installed "
                    "(pip install 'driftwatch[postgres]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run its programs as the 'postgres' account then.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _let_server_user_in(path: Path) -> None:
    """As root, hand ``path`` to 'postgres' and let it traverse pytest's private parent folders."""
    if os.geteuid() != 0:
        return
    import pwd

    pw = pwd.getpwnam("postgres")
    os.chown(path, pw.pw_uid, pw.pw_gid)
    for parent in path.parents:
        if parent == Path("/tmp") or parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o001)


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory) -> Iterator[str]:
    """Start a PostgreSQL cluster; yield the URL of its 'driftwatch' database; stop it."""
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root and 'runuser' is missing: cannot start PostgreSQL")
    root = tmp_path_factory.mktemp("pg")
    _let_server_user_in(root)
    data, sock = root / "data", root / "sock"
    for d in (data, sock):
        d.mkdir()
        _let_server_user_in(d)
    run = dict(check=True, capture_output=True, text=True, timeout=60)
    subprocess.run(_as_server_user([str(BIN / "initdb"), "-D", str(data), "-U", "postgres",
                                    "--auth=trust", "-E", "UTF8", "--no-sync"]), **run)
    port = _free_port()
    opts = f"-h 127.0.0.1 -p {port} -k {sock} -c fsync=off"
    subprocess.run(_as_server_user([str(BIN / "pg_ctl"), "-D", str(data), "-o", opts,
                                    "-l", str(root / "server.log"), "-w", "-t", "30", "start"]),
                   **run)
    try:
        admin = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",
                              isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql("CREATE DATABASE driftwatch")
        admin.dispose()
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/driftwatch"
    finally:
        subprocess.run(_as_server_user([str(BIN / "pg_ctl"), "-D", str(data), "-m", "fast",
                                        "-w", "stop"]), **run)


@pytest.fixture
def pg_url(pg_server, request) -> str:
    """A fresh, empty database on the module's server for one test."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:50]
    admin = create_engine(pg_server.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return pg_server.rsplit("/", 1)[0] + "/" + name


def test_store_migrates_a_fresh_postgres_database_to_head(pg_server):
    store = Store(pg_server)
    try:
        assert store.engine.dialect.name == "postgresql"
        assert current_revision(store.engine) == head_revision()
        assert TABLES <= set(inspect(store.engine).get_table_names())
        with store.session_scope() as s:
            version = s.execute(text("SHOW server_version")).scalar()
            exp = Exposure(path="/d/a.fits", night="2026-11-20", expnum=1, role="drift",
                           state="planned")
            s.add(exp)
            s.flush()
            s.add(CcdJob(exposure_id=exp.id, ccd="S4"))
        with store.session_scope(readonly=True) as s:
            job = s.scalars(select(CcdJob)).one()
            assert (job.state, job.attempts, job.exposure.dq_missing) == ("queued", 0, False)
            assert job.created_at.tzinfo is not None
        Store(pg_server).dispose()  # opening again at head is a no-op
        assert current_revision(store.engine) == head_revision()
    finally:
        store.dispose()
    print(f"PostgreSQL server_version {version}")


def test_upgrade_from_oldest_revision_keeps_rows(pg_url):
    engine = make_engine(pg_url)
    upgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    cols = {c["name"] for c in inspect(engine).get_columns("ccd_jobs")}
    assert "next_attempt_at" not in cols
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO exposures (path, night, expnum, role, state, arrived_at, updated_at)"
            " VALUES ('/d/a.fits', '2026-11-20', 42, 'drift', 'done',"
            " '2026-11-21 05:00:00', '2026-11-21 05:00:00') RETURNING id")
        exp_id = conn.exec_driver_sql("SELECT id FROM exposures").scalar()
        job_id = conn.exec_driver_sql(
            "INSERT INTO ccd_jobs (exposure_id, kind, ccd, state, attempts, created_at,"
            f" product_path, n_trails) VALUES ({exp_id}, 'ccd', 'S4', 'done', 1,"
            " '2026-11-21 05:01:00', '/p/S4', 123) RETURNING id").scalar()
        cand_id = conn.exec_driver_sql(
            "INSERT INTO candidates (job_id, kind, ra, dec, x, y, t_peak_s, duration_s,"
            f" amplitude, significance, created_at) VALUES ({job_id}, 'brightening', 150.0,"
            " -30.0, 10.0, 20.0, 4.5, 1.0, 0.3, 9.0, '2026-11-21 05:01:30') RETURNING id").scalar()
        conn.exec_driver_sql(
            "INSERT INTO alerts (dedup_key, route, kind, payload, state, attempts, created_at,"
            f" candidate_id) VALUES ('k1', 'default', 'flash', '{{}}', 'pending', 0,"
            f" '2026-11-21 05:02:00', {cand_id})")
    engine.dispose()

    store = Store(pg_url)  # migrates to head on opening
    try:
        assert current_revision(store.engine) == head_revision() != "0001"
        with store.session_scope() as s:
            job = s.get(CcdJob, job_id)
            assert (job.ccd, job.state, job.product_path, job.n_trails) == \
                ("S4", "done", "/p/S4", 123)
            assert job.exposure.expnum == 42 and job.exposure.dq_missing is False
            assert job.next_attempt_at is None
            job.next_attempt_at = job.created_at
            job.config_hash = "abcd"
            job.exposure.dq_missing = True
            alert = s.query(Alert).one()
            assert (alert.dedup_key, alert.candidate_id) == ("k1", cand_id)
            assert s.get(Candidate, cand_id).t_peak_s == 4.5
            s.add(Candidate(job_id=job_id, kind="flash", ra=1.0, dec=2.0, x=0.0, y=0.0,
                            t_peak_s=None, duration_s=None, amplitude=1.0,
                            significance=8.0))  # 0003: times may be NULL
        with store.session_scope() as s:
            job = s.get(CcdJob, job_id)
            assert job.next_attempt_at == job.created_at and job.config_hash == "abcd"
            assert job.exposure.dq_missing is True
            assert s.query(Candidate).count() == 2
    finally:
        store.dispose()


def test_small_night_through_the_dispatcher(pg_url, tmp_path):
    from driftwatch.service.dispatcher import Dispatcher
    from driftwatch.service.executor import LocalExecutor
    from tests.service import standins
    from tests.service.nightdata import make_config, write_night
    from tests.service.test_dispatcher import plan_night

    cfg = make_config(tmp_path, max_attempts=2)
    paths = write_night(tmp_path / "incoming", n_exposures=2)
    store = Store(pg_url)
    try:
        planned = plan_night(cfg, store, paths)
        assert planned
        d = Dispatcher(cfg, store, LocalExecutor(2, 50, preload=("tests.service.standins",)),
                       alerts=False, ccd_fn=standins.candidate_reduce_ccd,
                       catalogue_fn=standins.build_catalogue)
        try:
            d.requeue_running()
            d.run_until_idle(poll_s=0.05)
        finally:
            d.shutdown(grace=5)
        with store.session_scope(readonly=True) as s:
            jobs = s.scalars(select(CcdJob)).all()
            by_state = {}
            for j in jobs:
                by_state.setdefault(j.state, []).append(j)
            assert set(by_state) == {"done", "skipped"}, {j.ccd: (j.state, j.error) for j in jobs}
            assert {j.ccd for j in by_state["skipped"]} == {"N5"}
            done_ccd = [j for j in by_state["done"] if j.kind == "ccd"]
            assert len(done_ccd) == 2 * 3  # 2 exposures x (S4, S5, N4)
            assert all(j.attempts == 1 and j.error is None for j in by_state["done"])
            assert all(Path(j.product_path).exists() for j in done_ccd)
            assert [j.kind for j in by_state["done"]].count("catalogue") == 1
            cands = s.scalars(select(Candidate)).all()
            assert sorted(c.job_id for c in cands) == sorted(j.id for j in done_ccd)
            assert {(c.kind, c.t_peak_s) for c in cands} == {("flash", 3.0)}
            drift = s.scalars(select(Exposure).where(Exposure.role == "drift")).all()
            assert {e.state for e in drift} == {"done"}
    finally:
        store.dispose()
