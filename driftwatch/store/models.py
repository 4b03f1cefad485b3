"""The database tables: exposures, ccd_jobs, candidates, alerts (SQLAlchemy 2 declarative).

These models describe the schema at the newest migration (``driftwatch/store/migrations``).
A database is always created and upgraded by the migrations, never by ``create_all``, so an
existing night's database keeps working after a new release. Changing a column here needs a
new migration beside it.

Times are timezone-aware UTC ``datetime`` values (stored as naive UTC by SQLite; see
:class:`UtcDateTime`).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Job states (ccd_jobs.state). See driftwatch.store.jobs for the transitions.
QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"
JOB_STATES = (QUEUED, RUNNING, DONE, FAILED, SKIPPED)
FINISHED_STATES = (DONE, FAILED, SKIPPED)

# Job kinds (ccd_jobs.kind).
KIND_CCD = "ccd"
KIND_CATALOGUE = "catalogue"

# Exposure roles and states.
ROLE_DRIFT = "drift"
ROLE_POINTED = "pointed"
ROLE_DQMASK = "dqmask"
ROLE_IGNORED = "ignored"
EXP_PLANNED = "planned"      # jobs exist, not all finished
EXP_DONE = "done"            # every job done or skipped
EXP_FAILED = "failed"        # every job finished, at least one failed for good
EXP_IGNORED = "ignored"      # not reduced (reason in exposures.error)
EXP_RECORDED = "recorded"    # pointed images and DQ masks: used by other jobs

# Alert states.
ALERT_PENDING = "pending"
ALERT_SENT = "sent"
ALERT_FAILED = "failed"


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator):
    """A DateTime stored as naive UTC and returned timezone-aware (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use driftwatch.store.models.utcnow()")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class Exposure(Base):
    """One file that arrived: a drift image, a pointed image, a DQ mask, or an ignored file."""

    __tablename__ = "exposures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    night: Mapped[str | None] = mapped_column(String(10), index=True)   # YYYY-MM-DD
    expnum: Mapped[int | None] = mapped_column(Integer, index=True)
    band: Mapped[str | None] = mapped_column(String(16))
    obstype: Mapped[str | None] = mapped_column(String(32))
    prodtype: Mapped[str | None] = mapped_column(String(16))         # image, dqmask, wtmap
    role: Mapped[str] = mapped_column(String(16))                     # drift, pointed, dqmask, ignored
    field: Mapped[str | None] = mapped_column(String(64), index=True)
    date_obs: Mapped[str | None] = mapped_column(String(32))
    mjd_obs: Mapped[float | None] = mapped_column(Float)
    exptime: Mapped[float | None] = mapped_column(Float)
    checksum: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    dq_path: Mapped[str | None] = mapped_column(String(1024))
    # Added by migration 0002: True when the DQ mask is known not to come (reprocessing found
    # none, or the daemon waited watch.dq_wait_s): the CCD jobs go on and flag it.
    dq_missing: Mapped[bool] = mapped_column(default=False, server_default="0")
    state: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)                   # reason when ignored/failed
    arrived_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    planned_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    jobs: Mapped[list[CcdJob]] = relationship(back_populates="exposure",
                                              cascade="all, delete-orphan")

    def __repr__(self) -> str:
        return f"Exposure(id={self.id}, expnum={self.expnum}, role={self.role}, path={self.path!r})"


class CcdJob(Base):
    """One unit of work: reduce one CCD of a drift exposure, or build one field's catalogue."""

    __tablename__ = "ccd_jobs"
    __table_args__ = (
        UniqueConstraint("exposure_id", "kind", "ccd", name="uq_ccd_jobs_exposure_kind_ccd"),
        Index("ix_ccd_jobs_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exposure_id: Mapped[int] = mapped_column(ForeignKey("exposures.id", ondelete="CASCADE"),
                                             index=True)
    kind: Mapped[str] = mapped_column(String(16), default=KIND_CCD)   # ccd, catalogue
    ccd: Mapped[str] = mapped_column(String(16))                      # S4 (or 'catalogue')
    field: Mapped[str | None] = mapped_column(String(64))
    # A CCD job waits until this job (its field's catalogue) is finished.
    depends_on_id: Mapped[int | None] = mapped_column(
        ForeignKey("ccd_jobs.id", ondelete="SET NULL"), index=True)
    inputs: Mapped[str | None] = mapped_column(Text)                  # JSON (catalogue: g/r paths)
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    reason: Mapped[str | None] = mapped_column(Text)                  # why skipped
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)                   # last error
    input_checksum: Mapped[str | None] = mapped_column(String(64))
    pipeline_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    duration_s: Mapped[float | None] = mapped_column(Float)
    product_path: Mapped[str | None] = mapped_column(String(1024))
    n_trails: Mapped[int | None] = mapped_column(Integer)
    n_matched: Mapped[int | None] = mapped_column(Integer)
    n_candidates: Mapped[int | None] = mapped_column(Integer)
    notes: Mapped[str | None] = mapped_column(Text)
    # Added by migration 0002.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # retry backoff
    config_hash: Mapped[str | None] = mapped_column(String(32))

    exposure: Mapped[Exposure] = relationship(back_populates="jobs")
    depends_on: Mapped[CcdJob | None] = relationship(remote_side=[id])
    candidates: Mapped[list[Candidate]] = relationship(back_populates="job",
                                                       cascade="all, delete-orphan")

    def __repr__(self) -> str:
        return f"CcdJob(id={self.id}, {self.kind} {self.ccd}, state={self.state})"


class Candidate(Base):
    """One transient candidate found on one CCD."""

    __tablename__ = "candidates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("ccd_jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    star_id: Mapped[str | None] = mapped_column(String(64))
    ra: Mapped[float] = mapped_column(Float)
    dec: Mapped[float] = mapped_column(Float)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    # Migration 0003: unknown (None) for a flash, which does not drift and so has no time axis.
    t_peak_s: Mapped[float | None] = mapped_column(Float)
    duration_s: Mapped[float | None] = mapped_column(Float)
    amplitude: Mapped[float] = mapped_column(Float)
    significance: Mapped[float] = mapped_column(Float)
    mag: Mapped[float | None] = mapped_column(Float)
    stamp_path: Mapped[str | None] = mapped_column(String(1024))
    plot_path: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    job: Mapped[CcdJob] = relationship(back_populates="candidates")


class Alert(Base):
    """One message in the alerts outbox (sent by driftwatch.alerts, de-duplicated by key)."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_state_next", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(255), unique=True)
    route: Mapped[str] = mapped_column(String(64), default="default")
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)                        # JSON text
    state: Mapped[str] = mapped_column(String(16), default=ALERT_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    candidate_id: Mapped[int | None] = mapped_column(
        ForeignKey("candidates.id", ondelete="SET NULL"), index=True)
    night: Mapped[str | None] = mapped_column(String(10), index=True)
