"""Engine, sessions and migrations of the job database.

SQLite (the embedded default) is opened with WAL, foreign keys and a busy timeout, and every
transaction starts with ``BEGIN IMMEDIATE``: a read transaction that later writes would otherwise
fail at once with "database is locked" when another process holds the write lock (busy_timeout
does not cover that upgrade). Any other SQLAlchemy URL (PostgreSQL) is used as it is.

The schema is created and upgraded only by the Alembic migrations in
``driftwatch/store/migrations``, run in code (no alembic.ini).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from driftwatch.errors import StoreError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
READONLY_OPTION = "driftwatch_readonly"
BUSY_TIMEOUT_MS = 30_000


def _sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions start (see "begin" below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # Read-only sessions (status reports) start a deferred transaction: with WAL they
        # neither wait for nor block the writer.
        readonly = conn.get_execution_options().get(READONLY_OPTION, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Create an engine for ``url``; SQLite files get their folder, WAL and write locking."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"not a database URL: {url!r} ({exc})") from None
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            try:
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{db}: cannot create the database folder ({exc.strerror})") \
                    from None
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        _sqlite_hooks(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(engine_or_conn=None) -> AlembicConfig:
    """Build the Alembic configuration in code (script location inside the package)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine_or_conn is not None:
        cfg.attributes["connection"] = engine_or_conn
    return cfg


def head_revision() -> str:
    """Return the newest migration's revision id."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """Return the database's migration revision (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema to ``revision`` (default: the newest migration)."""
    try:
        with engine.connect() as conn:
            sqlite = engine.dialect.name == "sqlite"
            if sqlite:
                # A batch migration copies a table and drops the old one: with foreign keys on,
                # ON DELETE CASCADE would empty the child tables. The pragma only takes effect
                # outside a transaction, so it is set on the driver connection first.
                conn.connection.driver_connection.execute("PRAGMA foreign_keys = OFF")
            try:
                with conn.begin():
                    command.upgrade(alembic_config(conn), revision)
                    if sqlite:
                        bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if bad:
                            raise StoreError(f"{engine.url!r}: migration left broken "
                                             f"foreign keys: {bad[:5]}")
            finally:
                if sqlite:
                    conn.connection.driver_connection.execute("PRAGMA foreign_keys = ON")
    except OperationalError as exc:
        raise StoreError(f"{engine.url!r}: cannot migrate the database: {exc.orig}") from None


class Store:
    """The database of one installation: an engine and its session factory.

    Parameters
    ----------
    url:
        SQLAlchemy URL (``sqlite:////var/lib/driftwatch/driftwatch.sqlite``, ``postgresql+...``).
    migrate:
        Upgrade the schema to the newest migration on opening (the default).
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if migrate:
            upgrade(self.engine)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_config(cls, cfg, *, migrate: bool = True) -> Store:
        """Open the database named by ``cfg.paths`` (driftwatch.config.Config)."""
        return cls(cfg.paths.resolved_database_url, migrate=migrate)

    def session(self) -> Session:
        """Return a new session (the caller commits and closes it)."""
        return self._factory()

    @contextmanager
    def session_scope(self, *, readonly: bool = False) -> Iterator[Session]:
        """Yield a session; commit when the block ends, roll back if it raises.

        Keep write transactions short: on SQLite each one holds the database's write lock
        from its first statement. ``readonly`` sessions (reports) do not take that lock.
        """
        if readonly:
            session = self._factory(bind=self.engine.execution_options(**{READONLY_OPTION: True}))
        else:
            session = self._factory()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise StoreError(f"database error on {self.engine.url!r}: {exc}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def open_store(url: str, *, migrate: bool = True) -> Store:
    """Open (and by default migrate) the database at ``url``."""
    return Store(url, migrate=migrate)


_HELD_LOCKS: dict[str, list[int]] = {}   # lock path -> [fd, holders in this process]


def acquire_writer_lock(state_dir: Path, what: str) -> Path:
    """Take the exclusive lock ``<state>/writer.lock`` (re-entrant within one process).

    The daemon and ``driftwatch reprocess`` both dispatch jobs, and each would put the other's
    running jobs back in the queue at start-up: the second one to start stops with a clear
    message instead. The lock dies with its process (kill -9 included): no stale lock to clean.

    Raises
    ------
    StoreError
        Another process holds the lock (the message names it).
    """
    import fcntl
    import os

    state_dir.mkdir(parents=True, exist_ok=True)
    path = (state_dir / "writer.lock").resolve()
    held = _HELD_LOCKS.get(str(path))
    if held is not None:
        held[1] += 1
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = path.read_text().strip() or "another process"
        raise StoreError(f"{path}: the job database is being written by {holder}; "
                         f"stop it before running {what}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{what} (pid {os.getpid()})".encode())
    _HELD_LOCKS[str(path)] = [fd, 1]
    return path


def release_writer_lock(path: Path) -> None:
    """Release one hold of a lock taken by :func:`acquire_writer_lock`."""
    import os

    held = _HELD_LOCKS.get(str(path))
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD_LOCKS[str(path)]
        os.close(held[0])


@contextmanager
def writer_lock(state_dir: Path, what: str) -> Iterator[None]:
    """Hold the writer lock for the duration of a block (see :func:`acquire_writer_lock`)."""
    path = acquire_writer_lock(state_dir, what)
    try:
        yield
    finally:
        release_writer_lock(path)
