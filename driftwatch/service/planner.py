"""Planning: turn a complete exposure file into database rows and CCD jobs.

Shared by ``driftwatch reprocess`` and the daemon (:func:`plan_file`). The decisions are pure
functions of header facts and the config (:func:`classify`, :func:`night_of`, :func:`field_of`,
:func:`ccd_plan`); :func:`plan_file` applies them to the database in the caller's session.

- Role: a drift image (band in ``pipeline.drift_bands``), a pointed image (band in
  ``pipeline.pointed_bands``: it feeds its field's reference catalogue), a DQ mask
  (PRODTYPE dqmask), or ignored with a reason (other OBSTYPE or band, weight maps).
- Night: NITE/DTCALDAT, else the local date at the start of the night from DATE-OBS and the
  observatory longitude.
- DQ mask: paired by EXPNUM (image and mask PRODTYPE), else by the CP naming rule
  (``_ooi_`` <-> ``_ood_``, ``-image`` <-> ``-dqmask``), whichever file arrives first.
- Field: OBJECT, else the pointing rounded to 0.1 deg. Its catalogue is ``paths.catalogue`` when
  configured, else a 'catalogue' job built from the field's pointed g and r images, else none
  (the detection-only fallback). CCD jobs of a field wait for its catalogue job.
- One job per CCD of ``pipeline.ccds``: CCDs of ``pipeline.skip_ccds`` and CCDs absent from the
  file are 'skipped' with their reason.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from driftwatch import __version__
from driftwatch.config import Config, PipelineConfig
from driftwatch.errors import InputError
from driftwatch.store import jobs as jobstate
from driftwatch.store.models import (
    DONE, EXP_IGNORED, EXP_PLANNED, EXP_RECORDED, FAILED, KIND_CATALOGUE, KIND_CCD, QUEUED,
    ROLE_DQMASK, ROLE_DRIFT, ROLE_IGNORED, ROLE_POINTED, SKIPPED, CcdJob, Exposure, utcnow,
)

log = logging.getLogger(__name__)

NIGHT_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
CATALOGUE_CCD = "catalogue"


def pipeline_version() -> str:
    """Return the version recorded with every job (a new release means new work)."""
    return __version__


# ---------------------------------------------------------------------------------------------
# Pure decisions
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Classification:
    role: str                  # drift, pointed, dqmask, ignored
    reason: str | None = None  # why ignored


def classify(info, pipeline: PipelineConfig) -> Classification:
    """Classify an exposure by its headers (``info``: driftwatch.io.decam.ExposureInfo)."""
    obstypes = {o.lower() for o in pipeline.obstypes}
    if info.obstype.lower() not in obstypes:
        return Classification(ROLE_IGNORED, f"OBSTYPE {info.obstype!r} is not reduced "
                                            f"(pipeline.obstypes: {', '.join(pipeline.obstypes)})")
    prodtype = (info.prodtype or "image").lower()
    if prodtype == "dqmask":
        return Classification(ROLE_DQMASK)
    if prodtype != "image":
        return Classification(ROLE_IGNORED, f"PRODTYPE {info.prodtype!r} is not used")
    if info.band in pipeline.drift_bands:
        return Classification(ROLE_DRIFT)
    if info.band in pipeline.pointed_bands:
        return Classification(ROLE_POINTED)
    return Classification(ROLE_IGNORED, f"band {info.band!r} is neither a drift band "
                                        f"({', '.join(pipeline.drift_bands)}) nor a pointed band "
                                        f"({', '.join(pipeline.pointed_bands)})")


def night_of(nite: str | None, date_obs: str, longitude_deg: float) -> str:
    """Return the observing night YYYY-MM-DD: NITE where given, else the local date at the
    start of the night (local mean solar time from the longitude, minus 12 h)."""
    if nite:
        return nite
    text = date_obs.strip().replace("Z", "")
    try:
        utc = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"DATE-OBS {date_obs!r} is not an ISO date and time") from None
    local = utc + timedelta(hours=longitude_deg / 15.0)
    return (local - timedelta(hours=12)).date().isoformat()


def validate_night(night: str) -> str:
    """Return ``night`` if it is a real YYYY-MM-DD date; raise ValueError otherwise."""
    if not NIGHT_RE.fullmatch(night):
        raise ValueError(f"night {night!r} is not YYYY-MM-DD")
    try:
        datetime.strptime(night, "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"night {night!r} is not YYYY-MM-DD (no such date)") from None
    return night


def field_of(obj: str, ra_deg: float | None, dec_deg: float | None) -> str | None:
    """Return the field name: OBJECT, else the pointing rounded to 0.1 deg, else None."""
    name = re.sub(r"\s+", " ", obj or "").strip()
    if name:
        return name[:64]
    if ra_deg is None or dec_deg is None:
        return None
    return f"RA{ra_deg % 360:.1f}{dec_deg:+.1f}"


def field_slug(field_name: str) -> str:
    """Return a file-name-safe form of a field name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", field_name).strip("_") or "field"


@dataclass(frozen=True)
class CcdPlan:
    ccd: str
    skip_reason: str | None    # None: reduce it


def ccd_plan(pipeline: PipelineConfig, present: Sequence[str],
             only: Iterable[str] | None = None) -> list[CcdPlan]:
    """Return one plan per configured CCD (restricted to ``only`` when given)."""
    wanted = set(only) if only else None
    out = []
    for ccd in pipeline.ccds:
        if wanted is not None and ccd not in wanted:
            continue
        if ccd in pipeline.skip_ccds:
            out.append(CcdPlan(ccd, "dead or unusable CCD (pipeline.skip_ccds)"))
        elif ccd not in present:
            out.append(CcdPlan(ccd, "CCD not present in the file"))
        else:
            out.append(CcdPlan(ccd, None))
    return out


def dq_name_candidates(image_path: str) -> list[str]:
    """Return the paths the CP naming rules give for an image's DQ mask."""
    p = Path(image_path)
    out = []
    for a, b in (("_ooi_", "_ood_"), ("-image", "-dqmask")):
        if a in p.name:
            out.append(str(p.with_name(p.name.replace(a, b))))
    return out


def image_name_candidates(dq_path: str) -> list[str]:
    """Return the paths the CP naming rules give for a DQ mask's image."""
    p = Path(dq_path)
    out = []
    for a, b in (("_ood_", "_ooi_"), ("-dqmask", "-image")):
        if a in p.name:
            out.append(str(p.with_name(p.name.replace(a, b))))
    return out


def exposure_out_dir(products: Path, night: str, expnum: int) -> Path:
    """Return the folder of one exposure's products (the ``out_dir`` of its CCD tasks)."""
    return products / night / f"{expnum:08d}"


def ccd_out_dir(products: Path, night: str, expnum: int, ccd: str) -> Path:
    """Return the folder of one CCD's products (the worker renames it into place)."""
    return exposure_out_dir(products, night, expnum) / ccd


def catalogue_out_path(products: Path, field_name: str) -> Path:
    """Return the reference catalogue file of a field (shared by every night of the field)."""
    return products / "catalogues" / f"{field_slug(field_name)}.parquet"


def file_checksum(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Return the SHA-256 of a file (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Scanning folders (reprocess)
# ---------------------------------------------------------------------------------------------
def iter_candidate_files(cfg: Config) -> Iterator[Path]:
    """Yield files under the watch folders whose names match watch.patterns (not ignored)."""
    for root in cfg.paths.watch:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in sorted(filenames):
                if any(fnmatch.fnmatch(name, pat) for pat in cfg.watch.ignore_patterns):
                    continue
                if any(fnmatch.fnmatch(name, pat) for pat in cfg.watch.patterns):
                    yield Path(dirpath) / name


_CP_NAME_DATE = re.compile(r"^c4d_(\d{6})_\d{6}_")


def may_be_of_night(name: str, night: str) -> bool:
    """False when a CP file name's UTC date (c4d_YYMMDD_...) is more than a day from ``night``.

    Saves reading the headers of an archive's other nights; names without a date (raw
    DECam_00NNNNNN files, renamed files) are always read.
    """
    m = _CP_NAME_DATE.match(name)
    if not m:
        return True
    try:
        day = datetime.strptime(m.group(1), "%y%m%d").date()
    except ValueError:
        return True
    return abs((day - datetime.strptime(night, "%Y-%m-%d").date()).days) <= 1


def scan_night(cfg: Config, night: str) -> tuple[list, list[str]]:
    """Read the headers of every exposure file of the watch folders; keep those of ``night``.

    Return (infos of the night, problems with unreadable files).
    """
    from driftwatch.io.decam import read_exposure_info

    found, problems = [], []
    for path in iter_candidate_files(cfg):
        if not may_be_of_night(path.name, night):
            continue
        try:
            info = read_exposure_info(path)
            n = night_of(info.nite, info.date_obs, cfg.pipeline.observatory_longitude_deg)
        except InputError as exc:
            problems.append(str(exc))
            continue
        if n == night:
            found.append(info)
    return found, problems


# ---------------------------------------------------------------------------------------------
# Applying a plan to the database
# ---------------------------------------------------------------------------------------------
@dataclass
class PlanResult:
    exposure: Exposure
    role: str
    created: int = 0          # jobs created
    reset: int = 0            # jobs reset for new work
    unchanged: int = 0        # jobs left as they were (done, queued, ...)
    reason: str | None = None
    job_ids: list[int] = field(default_factory=list)  # the CCD jobs of this exposure in scope


def plan_file(session: Session, path: str | os.PathLike[str], info, cfg: Config, *,
              checksum: str | None = None, force: bool = False, retry_failed: bool = False,
              ccds: Iterable[str] | None = None, now: datetime | None = None) -> PlanResult:
    """Record one complete file and create (or reset) its jobs. Idempotent.

    Parameters
    ----------
    session:
        The caller's session (the caller commits).
    path, info:
        The file and its headers (:func:`driftwatch.io.decam.read_exposure_info`).
    checksum:
        SHA-256 of the file if the caller already has it (else computed here).
    force:
        Reset finished jobs too (redo everything).
    retry_failed:
        Give jobs that failed for good a fresh set of tries.
    ccds:
        Plan only these CCDs (reprocess --ccd).
    """
    now = now or utcnow()
    path = str(Path(path).resolve())
    if checksum is None:
        checksum = file_checksum(path)
    role = classify(info, cfg.pipeline)
    night = night_of(info.nite, info.date_obs, cfg.pipeline.observatory_longitude_deg)
    fld = field_of(info.object, info.ra_deg, info.dec_deg)

    exp = session.scalars(select(Exposure).where(Exposure.path == path)).one_or_none()
    if exp is None:
        exp = Exposure(path=path, arrived_at=now, role=role.role, state=EXP_PLANNED)
        session.add(exp)
    exp.night, exp.expnum, exp.band = night, info.expnum, info.band
    exp.obstype, exp.prodtype, exp.role, exp.field = info.obstype, info.prodtype, role.role, fld
    exp.date_obs, exp.mjd_obs, exp.exptime = info.date_obs, info.mjd_obs, info.exptime
    try:
        exp.size_bytes = os.path.getsize(path)
    except OSError:
        pass
    exp.checksum = checksum
    session.flush()

    result = PlanResult(exposure=exp, role=role.role)
    if role.role == ROLE_IGNORED:
        exp.state, exp.error, result.reason = EXP_IGNORED, role.reason, role.reason
        log.info("[%s %s] ignored: %s", night, info.expnum, role.reason)
        return result
    if role.role == ROLE_DQMASK:
        exp.state = EXP_RECORDED
        _attach_mask(session, exp)
        return result
    if role.role == ROLE_POINTED:
        exp.state = EXP_RECORDED
        if fld is not None and cfg.paths.catalogue is None:
            _plan_catalogue(session, fld, cfg, now)
        return result

    # A drift image.
    exp.state, exp.error = EXP_PLANNED, None
    exp.planned_at = exp.planned_at or now
    if exp.dq_path is None:
        exp.dq_path = _find_mask(session, exp)
    catalogue_job = None
    if cfg.paths.catalogue is None and fld is not None:
        catalogue_job = _current_catalogue_job(session, fld) or _plan_catalogue(session, fld, cfg,
                                                                                now)
    version = pipeline_version()
    existing = {j.ccd: j for j in exp.jobs if j.kind == KIND_CCD}
    for plan in ccd_plan(cfg.pipeline, info.ccds, ccds):
        job = existing.get(plan.ccd)
        if job is not None and plan.skip_reason is not None and job.state == SKIPPED:
            result.unchanged += 1
            continue
        decision = jobstate.should_process(job, checksum, version, cfg.workers.max_attempts,
                                           force=force, retry_failed=retry_failed)
        if job is None:
            job = CcdJob(exposure=exp, kind=KIND_CCD, ccd=plan.ccd, field=fld, state=QUEUED,
                         attempts=0, input_checksum=checksum, pipeline_version=version,
                         config_hash=cfg.pipeline_hash(), queued_at=now, created_at=now)
            session.add(job)
            result.created += 1
        elif decision.process and decision.reset:
            jobstate.reset(job, now, checksum=checksum, reason=decision.reason)
            job.pipeline_version, job.config_hash = version, cfg.pipeline_hash()
            result.reset += 1
        elif decision.process and job.state == FAILED:
            # Failed but tries remain (max_attempts was raised): back in the queue.
            job.state, job.queued_at, job.next_attempt_at = QUEUED, now, None
            result.reset += 1
        else:
            result.unchanged += 1
        if job.state == QUEUED:
            job.field = fld
            job.depends_on = catalogue_job
            if plan.skip_reason is not None:
                jobstate.mark_skipped(job, plan.skip_reason, now)
    session.flush()
    refresh_exposure_state(exp, now)
    result.job_ids = [j.id for j in exp.jobs if j.kind == KIND_CCD
                      and (ccds is None or j.ccd in set(ccds))]
    return result


def mark_missing_masks(session: Session, exposure_ids: Iterable[int]) -> int:
    """Flag drift exposures that have no DQ mask as missing it (reprocess: every file is there).

    Their CCD jobs then run at once, flagged, instead of waiting ``watch.dq_wait_s``.
    """
    n = 0
    for exp in session.scalars(select(Exposure).where(Exposure.id.in_(list(exposure_ids)))):
        if exp.role == ROLE_DRIFT and exp.dq_path is None and not exp.dq_missing:
            exp.dq_missing = True
            n += 1
    return n


def _find_mask(session: Session, exp: Exposure) -> str | None:
    if exp.expnum is not None:
        mask = session.scalars(select(Exposure).where(
            Exposure.role == ROLE_DQMASK, Exposure.expnum == exp.expnum)).first()
        if mask is not None:
            return mask.path
    names = dq_name_candidates(exp.path)
    if names:
        mask = session.scalars(select(Exposure).where(
            Exposure.role == ROLE_DQMASK, Exposure.path.in_(names))).first()
        if mask is not None:
            return mask.path
    return None


def _attach_mask(session: Session, mask: Exposure) -> None:
    query = select(Exposure).where(Exposure.role == ROLE_DRIFT,
                                   Exposure.path.in_(image_name_candidates(mask.path)))
    if mask.expnum is not None:
        query = select(Exposure).where(Exposure.role == ROLE_DRIFT,
                                       (Exposure.expnum == mask.expnum)
                                       | Exposure.path.in_(image_name_candidates(mask.path)))
    for img in session.scalars(query):
        if img.dq_path != mask.path:
            img.dq_path = mask.path
            img.dq_missing = False


def _current_catalogue_job(session: Session, fld: str) -> CcdJob | None:
    """The field's newest catalogue job that has not failed for good."""
    return session.scalars(
        select(CcdJob).where(CcdJob.kind == KIND_CATALOGUE, CcdJob.field == fld,
                             CcdJob.state != FAILED).order_by(CcdJob.id.desc())).first()


def _plan_catalogue(session: Session, fld: str, cfg: Config, now: datetime) -> CcdJob | None:
    """Create the field's catalogue job once it has a pointed image in each pointed band."""
    existing = _current_catalogue_job(session, fld)
    if existing is not None:
        return existing
    pointed = session.scalars(select(Exposure).where(
        Exposure.role == ROLE_POINTED, Exposure.field == fld).order_by(Exposure.mjd_obs)).all()
    by_band: dict[str, Exposure] = {}
    for exp in pointed:
        by_band.setdefault(exp.band or "", exp)
    bands = cfg.pipeline.pointed_bands
    if len(bands) < 2 or not all(b in by_band for b in bands[:2]):
        return None
    g, r = by_band[bands[0]], by_band[bands[1]]
    job = CcdJob(exposure=r, kind=KIND_CATALOGUE, ccd=CATALOGUE_CCD, field=fld, state=QUEUED,
                 attempts=0, input_checksum=hashlib.sha256(
                     f"{g.checksum}{r.checksum}".encode()).hexdigest(),
                 pipeline_version=pipeline_version(), config_hash=cfg.pipeline_hash(),
                 inputs=json.dumps({"g_path": g.path, "r_path": r.path}),
                 queued_at=now, created_at=now)
    session.add(job)
    session.flush()
    # Drift jobs of this field planned before its pointed images arrived, not yet started,
    # now wait for the catalogue instead of using the detection-only fallback.
    waiting = session.scalars(select(CcdJob).where(
        CcdJob.kind == KIND_CCD, CcdJob.field == fld, CcdJob.state == QUEUED,
        CcdJob.depends_on_id.is_(None), CcdJob.attempts == 0)).all()
    for j in waiting:
        j.depends_on = job
    log.info("field %s: catalogue job from %s and %s", fld, Path(g.path).name, Path(r.path).name)
    return job


def refresh_exposure_state(exp: Exposure, now: datetime) -> bool:
    """Set a drift exposure's state from its CCD jobs; return True if it just finished."""
    if exp.role != ROLE_DRIFT:
        return False
    states = [j.state for j in exp.jobs if j.kind == KIND_CCD]
    if not states or any(s not in (DONE, SKIPPED, FAILED) for s in states):
        exp.state, exp.finished_at = EXP_PLANNED, None
        return False
    new_state = "failed" if FAILED in states else "done"
    just = exp.state == EXP_PLANNED
    exp.state = new_state
    if just:
        exp.finished_at = now
    return just
