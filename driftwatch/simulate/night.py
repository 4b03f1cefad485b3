"""Simulate one observing night of a single field and write it as CP InstCal files.

The night: pointed exposures (g and r by default, no drift) then ``n_drift`` 20 s VR drift
exposures at a ~45 s cadence, all of ONE field (the same stars, IDs and sky positions in every
exposure). Each exposure is an image file and its DQ mask with CP names; the truth tables go to
``OUTDIR/truth/*.parquet`` (columns in TRUTH.md).
"""

from __future__ import annotations

import logging
import math
import dataclasses
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from driftwatch.errors import UsageError
from driftwatch.io.decam import CCDNUM
from driftwatch.simulate.fitsout import ExposureMeta, FitsWriter, ccd_header, cp_file_names, primary_header
from driftwatch.simulate.focalplane import FULL_SHAPE, ccd_wcs, shift_pointing
from driftwatch.simulate.generate import (
    BANDS, StarCatalogue, detector_for, make_atmosphere, random_events, random_stars, seed_for,
)
from driftwatch.simulate.render import render_ccd
from driftwatch.simulate.scene import CcdScene, RenderOptions

__all__ = ["NightSpec", "NightTruth", "ExposurePlan", "plan_night", "simulate_night"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NightSpec:
    """What to simulate. Seeing in arcsec; rates in arcsec/s; times in seconds."""

    night: str = "2026-11-20"
    field: str = "DRIFT-F01"
    ra_deg: float = 52.5
    dec_deg: float = -27.8
    n_drift: int = 6
    ccds: tuple[str, ...] = ("N4", "S4")
    shape: tuple[int, int] = FULL_SHAPE
    stars_per_ccd: int = 1000
    seed: int = 0
    compress: bool = False
    start_expnum: int = 1_100_000
    drift_rate_arcsec_s: float = 0.5
    pointing_error_arcsec: float = 0.0
    drift_band: str = "VR"
    drift_exptime: float = 20.0
    drift_cadence_s: float = 45.0
    pointed_bands: tuple[str, ...] = ("g", "r")
    pointed_exptime: float = 30.0
    seeing_arcsec: float = 1.15
    pixel_scale_arcsec: float = 0.2623
    brightenings_per_ccd: int = 2
    flashes_per_ccd: int = 1
    streak_probability: float = 0.2
    cosmic_rate_cm2_s: float = 0.03
    bad_columns_per_ccd: int = 3
    start_utc: str = "01:30:00"
    propid: str = "2026B-0420"
    options: RenderOptions = dataclasses.field(default_factory=RenderOptions)

    def validate(self) -> None:
        try:
            date.fromisoformat(self.night)
        except ValueError:
            raise UsageError(f"--night {self.night!r} is not YYYY-MM-DD") from None
        bad = [c for c in self.ccds if c not in CCDNUM]
        if bad:
            raise UsageError(f"--ccds: {', '.join(bad)} not DECam science CCD name(s) (S1-S31, N1-N31)")
        if not self.ccds:
            raise UsageError("--ccds: at least one CCD")
        if len(set(self.ccds)) != len(self.ccds):
            raise UsageError("--ccds: a CCD is listed twice")
        ny, nx = self.shape
        if not (32 <= ny <= FULL_SHAPE[0] and 32 <= nx <= FULL_SHAPE[1]):
            raise UsageError(f"--shape {ny}x{nx}: each side must be 32..{FULL_SHAPE[0]}x{FULL_SHAPE[1]}")
        for band in (self.drift_band, *self.pointed_bands):
            if band not in BANDS:
                raise UsageError(f"band {band!r} not simulated (known: {', '.join(BANDS)})")
        if self.n_drift < 0 or self.stars_per_ccd < 0:
            raise UsageError("--exposures and --stars must not be negative")
        if self.drift_exptime <= 0 or self.drift_cadence_s < self.drift_exptime:
            raise UsageError("the drift cadence must be at least the exposure time")


@dataclass(frozen=True)
class ExposurePlan:
    """One planned exposure: its metadata and the header-vs-true pointing offset (arcsec)."""

    meta: ExposureMeta
    drift: bool
    pointing_offset_arcsec: tuple[float, float]   # header minus truth (dRA cos Dec, dDec)
    fwhm_px: float
    transparency: float
    sky_adu: float
    image_name: str
    dq_name: str


@dataclass(frozen=True)
class NightTruth:
    """Truth of a simulated night (DataFrames; columns in TRUTH.md) and the files written."""

    stars: pd.DataFrame
    exposures: pd.DataFrame
    trails: pd.DataFrame
    events: pd.DataFrame
    atmosphere: pd.DataFrame
    files: tuple[Path, ...]


def plan_night(spec: NightSpec) -> list[ExposurePlan]:
    """Times, names, seeing and pointing errors of every exposure of the night."""
    spec.validate()
    rng = np.random.default_rng(seed_for(spec.seed, "plan"))
    start = datetime.combine(date.fromisoformat(spec.night) + timedelta(days=1),
                             datetime.strptime(spec.start_utc, "%H:%M:%S").time())
    plans = []
    t = start
    expnum = spec.start_expnum
    bands = [(b, False) for b in spec.pointed_bands] + [(spec.drift_band, True)] * spec.n_drift
    seeing_phase = rng.uniform(0, 2 * np.pi)
    for i, (band, drift) in enumerate(bands):
        exptime = spec.drift_exptime if drift else spec.pointed_exptime
        # whole-millisecond jitter in the start keeps file names unique yet realistic
        t_open = t + timedelta(milliseconds=int(rng.integers(0, 900)))
        seeing = spec.seeing_arcsec * (1 + 0.08 * math.sin(seeing_phase + i / 8.0)) * rng.uniform(0.97, 1.03)
        if drift and spec.pointing_error_arcsec > 0:
            ang = rng.uniform(0, 2 * np.pi)
            off = (spec.pointing_error_arcsec * math.cos(ang), spec.pointing_error_arcsec * math.sin(ang))
        else:
            off = (0.0, 0.0)
        ra_h, dec_h = shift_pointing(spec.ra_deg, spec.dec_deg, *off)
        meta = ExposureMeta(expnum=expnum, band=band, date_obs=t_open, exptime=exptime,
                            night=spec.night, field=spec.field, propid=spec.propid,
                            ra_deg=ra_h, dec_deg=dec_h, airmass=1.0 + 0.002 * i + 0.05,
                            n_ccds=len(spec.ccds), drift=drift)
        img, dq = cp_file_names(t_open, band, spec.compress)
        plans.append(ExposurePlan(meta=meta, drift=drift, pointing_offset_arcsec=off,
                                  fwhm_px=seeing / spec.pixel_scale_arcsec,
                                  transparency=float(rng.uniform(0.93, 1.0)),
                                  sky_adu=BANDS[band].sky_adu_s * exptime * float(rng.uniform(0.95, 1.1)),
                                  image_name=img, dq_name=dq))
        step = spec.drift_cadence_s if drift else exptime + 25.0
        t = t + timedelta(seconds=step)
        expnum += 1
    names = [p.image_name for p in plans]
    if len(set(names)) != len(names):
        raise UsageError("two exposures share a file name (cadence below one second?)")
    return plans


def make_catalogue(spec: NightSpec) -> tuple[StarCatalogue, dict[str, np.ndarray]]:
    """The field's stars, generated CCD by CCD around the nominal pointing; index per CCD."""
    parts, index = [], {}
    first = 0
    drift_px = abs(spec.drift_rate_arcsec_s) * spec.drift_exptime / spec.pixel_scale_arcsec
    margin = (drift_px + 30.0, 30.0)
    for ccd in spec.ccds:
        rng = np.random.default_rng(seed_for(spec.seed, "stars", ccd))
        wcs = ccd_wcs(ccd, spec.ra_deg, spec.dec_deg, spec.shape)
        cat = random_stars(rng, wcs, spec.shape, spec.stars_per_ccd, first_id=first, margin_px=margin)
        index[ccd] = np.arange(first, first + len(cat))
        first += len(cat)
        parts.append(cat)
    return StarCatalogue.concat(parts), index


def build_scene(spec: NightSpec, plan: ExposurePlan, ccd: str, cat: StarCatalogue) -> CcdScene:
    """The scene of one CCD of one planned exposure (seeded by run seed, expnum and CCD)."""
    meta = plan.meta
    rng = np.random.default_rng(seed_for(spec.seed, meta.expnum, ccd, "scene"))
    wcs = ccd_wcs(ccd, spec.ra_deg, spec.dec_deg, spec.shape)  # the truth
    rate = spec.drift_rate_arcsec_s if plan.drift else 0.0
    det = detector_for(ccd, spec.seed)
    atm = make_atmosphere(rng, meta.exptime, plan.fwhm_px)
    atm = type(atm)(t_s=atm.t_s, transparency=atm.transparency * plan.transparency, fwhm_px=atm.fwhm_px)
    if plan.drift:
        n_streaks = int(rng.uniform() < spec.streak_probability)
        events = random_events(rng, wcs, spec.shape, cat, meta.exptime, rate,
                               spec.brightenings_per_ccd, spec.flashes_per_ccd, n_streaks)
    else:
        events = ((), (), ())
    band = BANDS[meta.band]
    return CcdScene(
        ccd=ccd, shape=spec.shape, wcs=wcs, exptime=meta.exptime, drift_rate_arcsec_s=rate,
        star_id=cat.star_id, ra=cat.ra, dec=cat.dec, flux_adu_s=cat.flux_adu_s(meta.band),
        fwhm_px=plan.fwhm_px, sky_adu=plan.sky_adu,
        gain=det.gain, read_noise_e=det.read_noise, saturate_adu=det.saturate,
        seed=seed_for(spec.seed, meta.expnum, ccd, "render"), atmosphere=atm,
        brightenings=events[0], flashes=events[1], streaks=events[2],
        cosmic_rate_cm2_s=spec.cosmic_rate_cm2_s, n_bad_columns=spec.bad_columns_per_ccd)


def simulate_night(outdir: str | Path, spec: NightSpec) -> NightTruth:
    """Write the night's image and mask files into ``outdir`` and the truth into ``outdir/truth``."""
    spec.validate()
    outdir = Path(outdir)
    (outdir / "truth").mkdir(parents=True, exist_ok=True)
    plans = plan_night(spec)
    cat, index = make_catalogue(spec)
    trails, events, atmos, exposures, files = [], [], [], [], []
    for plan in plans:
        meta = plan.meta
        img_path, dq_path = outdir / plan.image_name, outdir / plan.dq_name
        img_w = FitsWriter(img_path, primary_header(meta, "image"), spec.compress)
        dq_w = FitsWriter(dq_path, primary_header(meta, "dqmask"), spec.compress)
        band = BANDS[meta.band]
        for ccd in spec.ccds:
            sub = cat.select(index[ccd])
            scene = build_scene(spec, plan, ccd, sub)
            res = render_ccd(scene, spec.options)
            det = detector_for(ccd, spec.seed)
            magzpt = band.magzpt + 2.5 * math.log10(plan.transparency)
            kw = dict(meta=meta, ccd=ccd, shape=spec.shape, det=det, fwhm_px=plan.fwhm_px,
                      sky_adu=scene.sky_adu, sky_sigma_adu=res.sky_sigma_adu, magzpt=magzpt,
                      wcs_ra=meta.ra_deg, wcs_dec=meta.dec_deg)
            img_w.add(res.image, ccd_header(image=True, **kw))
            dq_w.add(res.dq, ccd_header(image=False, **kw))
            for df, out in ((res.trails, trails), (res.events, events), (res.atmosphere, atmos)):
                if len(df):
                    df = df.copy()
                    df.insert(0, "ccd", ccd)
                    df.insert(0, "expnum", meta.expnum)
                    out.append(df)
            log.info("%s %s: %d stars, %d events", plan.image_name, ccd, len(res.trails),
                     int((res.events.kind != "cosmic").sum()) if len(res.events) else 0)
        exposures.append({
            "file": plan.image_name, "dq_file": plan.dq_name, "expnum": meta.expnum,
            "band": meta.band, "date_obs": meta.date_obs_str, "mjd_obs": meta.mjd_obs,
            "exptime": meta.exptime, "drift": plan.drift,
            "drift_rate_arcsec_s": spec.drift_rate_arcsec_s if plan.drift else 0.0,
            "fwhm_px": plan.fwhm_px, "sky_adu": plan.sky_adu,
            "transparency": plan.transparency, "magzpt": band.magzpt,
            "pointing_error_ra_arcsec": plan.pointing_offset_arcsec[0],
            "pointing_error_dec_arcsec": plan.pointing_offset_arcsec[1],
            "ra_true_deg": spec.ra_deg, "dec_true_deg": spec.dec_deg,
        })
        files += [img_path, dq_path]
    truth = NightTruth(
        stars=pd.DataFrame({"star_id": cat.star_id, "ra": cat.ra, "dec": cat.dec, "g": cat.g,
                            "r": cat.r, "vr": cat.vr, "flux_adu_s": cat.flux_adu_s(spec.drift_band)}),
        exposures=pd.DataFrame(exposures),
        trails=_concat(trails), events=_concat(events), atmosphere=_concat(atmos), files=tuple(files))
    for name in ("stars", "exposures", "trails", "events", "atmosphere"):
        getattr(truth, name).to_parquet(outdir / "truth" / f"{name}.parquet", index=False)
    return truth


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
