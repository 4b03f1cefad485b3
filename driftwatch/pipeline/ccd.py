"""Reduce one CCD of a drift exposure: read, run Science I and II, write products, summarise.

``reduce_ccd(task) -> CcdSummary`` is what a worker runs. It never raises for bad data: a file
that cannot be read, a CCD without stars or a failed stage gives ``ok=False`` with a message
naming the file, the CCD and the problem, and no product folder (products are written to a
temporary folder and renamed into place only when complete). Each stage is timed.

Stages: ``read`` (pixels, WCS, DQ) -> ``background`` -> ``detect`` (trails) -> ``classify``
(all sources; streaks masked, flash candidates) -> ``sky`` -> ``extract`` (light curves) ->
``normalise`` -> ``events`` -> ``write`` (tables, WCS, provenance, PNGs).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np

from driftwatch import __version__
from driftwatch.errors import DriftwatchError, InputError
from driftwatch.tasks import CandidateSummary, CcdSummary, CcdTask

log = logging.getLogger(__name__)

_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: FWHM (pixels) assumed when the header has none (DECam median seeing ~1.1" at 0.263"/px).
DEFAULT_FWHM_PX = 4.5
#: Significance of light beyond a trail's end above which it is a collinear neighbour's.
_COLLINEAR_Z = 6.0
#: Kept clear of a collinear neighbour's end when searching the rest of a trail, in FWHM.
_COLLINEAR_MARGIN_FWHM = 1.0
#: Samples kept clear of a satellite streak's masked core on a trail it crosses, in FWHM.
_STREAK_MARGIN_FWHM = 2.0
#: A point source this close to a satellite streak's line, in FWHM, is a glint of it (the
#: streak's light, the line's error included): no flash. The same zone in classification
#: and in the candidates (it was 2 FWHM there but 2 FWHM + 2 px here, losing the flashes
#: between, which classification had kept as points).
_GLINT_FWHM = 2.0
#: Samples kept clear of a masked cosmic ray's pixels, in FWHM.
_CR_MARGIN_FWHM = 0.5
#: A trail with a collinear neighbour or crossed by a streak is searched if this many usable
#: samples are clear of it.
_MIN_CLEAR_SAMPLES = 10


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def pipeline_hash(pipeline: Any) -> str:
    """Return the short hash of a PipelineConfig (same recipe as ``Config.pipeline_hash``)."""
    import hashlib
    import json

    from driftwatch.config import _to_plain

    blob = json.dumps(_to_plain(pipeline, True), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class CcdResult:
    """Everything computed for one CCD, in memory (what the products are written from)."""

    summary_notes: tuple[str, ...]
    tables: dict[str, dict[str, np.ndarray]]
    candidates: tuple[CandidateSummary, ...]
    wcs_header: Any
    stamps: tuple[dict[str, Any], ...]
    n_trails: int
    n_matched: int


def _libc() -> Any:
    """glibc, or False where there is none (then the heap tuning below does nothing)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim, _LIBC.mallopt  # noqa: B018 - both must exist
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


_LIBC: Any = None
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_TUNED = False


def _keep_heap_during_ccd() -> None:
    """Let glibc reuse freed pages within a CCD instead of returning and faulting them again.

    A CCD's reduction allocates and frees many 1-30 MB temporaries. By default glibc serves
    them by mmap (above its adaptive threshold) or trims the heap top after a free, so each
    new temporary is fresh pages the kernel zeroes on first touch (~0.06-0.1 s of system
    time per CCD). With a fixed 32 MB mmap threshold and no automatic trimming they come
    from the heap already resident; :func:`_return_freed_memory` still trims once per CCD.
    Set once per process.
    """
    global _HEAP_TUNED
    libc = _libc()
    if libc and not _HEAP_TUNED:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    _HEAP_TUNED = True


#: Free heap kept at its top after a CCD for the next one (glibc ``malloc_trim`` pad): a
#: CCD's temporaries span ~230 MB, so the next CCD reuses resident pages instead of having
#: the kernel zero fresh ones (~40 ms of system time per CCD). The worker then rests at
#: ~430 MB between CCDs (trimming everything: ~300 MB); its peak is the same either way.
_HEAP_KEEP = 256 * 1024 * 1024


def _return_freed_memory() -> None:
    """Free this CCD's arrays now, and give the C heap's freed pages back to the system,
    but for ``_HEAP_KEEP`` at its top.

    Exceptions that libraries raise and catch (astropy's date parsing during a module's first
    import, for one) can stay in reference cycles whose frames reach, through ``f_back``, the
    frame of :func:`_reduce` and all its full-size arrays (~85 MB); only the cyclic garbage
    collector frees them, so a full collection runs here, after which the survivors (modules,
    caches) are frozen out of later collections (each then costs ~1 ms, not ~30). Without
    it a worker's second CCD peaked ~100 MB higher than its first (VmHWM 555-600 MB).
    Then glibc ``malloc_trim``: glibc keeps the pages of the arrays freed at the end of a CCD
    (they grow its heap when a large block is freed, see ``mallopt`` M_MMAP_THRESHOLD), so
    without it the worker's resident size would ratchet up with fragmentation; free pages
    inside the heap are returned, and its top beyond ``_HEAP_KEEP``. Elsewhere (no glibc)
    the trim does nothing.
    """
    import gc

    gc.collect()
    gc.freeze()
    libc = _libc()
    if libc:
        libc.malloc_trim(_HEAP_KEEP)


def reduce_ccd(task: CcdTask) -> CcdSummary:
    """Reduce one CCD and write its products; never raises for bad input.

    Returns
    -------
    CcdSummary
        ``ok`` with the product folder, counts, candidates and per-stage timings, or
        ``ok=False`` with ``error`` and ``retryable`` (True only for transient trouble such as
        a full disk).
    """
    timer = _Timer()
    where = f"{task.image_path} [{task.ccd}]"
    _keep_heap_during_ccd()
    try:
        result = _reduce(task, timer)
        with timer.stage("write"):
            product_dir, cands = _write(task, result)
        _return_freed_memory()
    except (InputError, DriftwatchError) as exc:
        log.warning("%s: %s", where, exc)
        return CcdSummary(ccd=task.ccd, ok=False, error=f"{where}: {exc}", retryable=False,
                          timings=timer.timings, pipeline_version=__version__)
    except OSError as exc:  # disk full, NFS hiccup: worth another try
        log.warning("%s: %s", where, exc)
        return CcdSummary(ccd=task.ccd, ok=False, error=f"{where}: {exc}", retryable=True,
                          timings=timer.timings, pipeline_version=__version__)
    except Exception as exc:  # noqa: BLE001 - bad data must not crash the caller
        log.exception("%s: reduction failed", where)
        return CcdSummary(ccd=task.ccd, ok=False,
                          error=f"{where}: reduction failed: {type(exc).__name__}: {exc}",
                          retryable=False, timings=timer.timings, pipeline_version=__version__)
    return CcdSummary(ccd=task.ccd, ok=True, product_dir=product_dir, n_trails=result.n_trails,
                      n_matched=result.n_matched, n_candidates=len(cands), candidates=cands,
                      timings=timer.timings, notes=result.summary_notes,
                      pipeline_version=__version__)


def _reduce(task: CcdTask, timer: _Timer) -> CcdResult:
    from driftwatch.io.decam import read_ccd, read_dq
    from driftwatch.io.catalogue import read_catalogue_cached
    from driftwatch.science.astrometry import match_trails
    from driftwatch.science.background import dq_in, mask_from_dq, measure_background
    from driftwatch.science.classify import (
        bin2x2, classify_sources, find_streaks, line_pixels,
    )
    from driftwatch.science.events import (
        clear_of_flagged, clear_of_neighbours, duration_grid, search_events,
    )
    from driftwatch.science.geometry import drift_geometry
    from driftwatch.science.normalise import misfit_samples, normalise, select_references
    from driftwatch.science.photometry import (
        FLAG_OUTLIER, FLAG_SATURATED, end_excess, extract_trails, footprint_owners,
    )
    from driftwatch.science._stats import row_nanmedian
    from driftwatch.science.sky import local_sky
    from driftwatch.science.trails import detect_trails

    p = task.pipeline
    notes: list[str] = []
    with timer.stage("read"):
        ccd = read_ccd(task.image_path, task.ccd)
        dq = None
        if task.dq_path:
            dq = read_dq(task.dq_path, task.ccd)
            if dq.shape != ccd.image.shape:
                raise InputError(f"{task.dq_path} [{task.ccd}]: DQ shape {dq.shape} differs "
                                 f"from the image's {ccd.image.shape}")
        else:
            notes.append("no DQ mask")
        image = ccd.image
        # (a coarse sample finds a finite pixel at once in any real CCD; the full test runs
        # only when it does not)
        if not (np.isfinite(image[::61, ::59]).any() or np.isfinite(image).any()):
            raise InputError(f"{task.image_path} [{task.ccd}]: no finite pixel")
    with timer.stage("background"):
        geom = drift_geometry(ccd.wcs, p.drift_rate_arcsec_s, ccd.exptime)
        sat_mask = np.empty(image.shape, dtype=bool)      # image >= saturate
        mask = mask_from_dq(dq, image, ccd.saturate, saturated=sat_mask)
        if dq is not None:
            sat_mask |= dq_in(dq, (3, 4))  # saturated, bleed trail
        bg = measure_background(image, mask)
    fwhm = ccd.fwhm_px if ccd.fwhm_px and ccd.fwhm_px > 0 else DEFAULT_FWHM_PX
    if not ccd.fwhm_px:
        notes.append(f"no FWHM in the header: {DEFAULT_FWHM_PX} px assumed")
    with timer.stage("detect"):
        det = detect_trails(image, geom, bg, fwhm_px=fwhm, mask=mask, sat_mask=sat_mask,
                            threshold_sigma=p.detect_threshold_sigma, gain=ccd.gain)
    n = det.n
    star_id = np.full(n, None, dtype=object)
    mag = np.full(n, np.nan)
    separation = np.full(n, np.nan)
    wcs = ccd.wcs
    refined = None
    if task.catalogue_path is None:
        notes.append("no reference catalogue: trails have no star IDs")
    else:
        with timer.stage("match"):
            cat = read_catalogue_cached(task.catalogue_path)
            match = match_trails(det, cat, ccd.wcs, p.drift_rate_arcsec_s, image.shape,
                                 match_radius_px=p.match_radius_px,
                                 pointing_tolerance_arcsec=p.pointing_tolerance_arcsec)
        star_id = np.array([None if v is None else str(v) for v in match.star_id], dtype=object)
        mag = np.asarray(match.mag_ref, float)
        separation = np.asarray(match.separation_px, float)
        notes.extend(match.notes)
        if match.refined:
            wcs = refined = match.wcs
            notes.append(f"WCS refined: residual {match.residual_px:.3f} px, "
                         f"{match.n_matched} matched")
    sigma0 = fwhm / _FWHM
    radius = max(3.0 * sigma0, 2.0)
    with timer.stage("classify"):
        # one label image: a trail's index + 1, or a sentinel where several trails overlap
        labels = footprint_owners(det.x0, det.y0, geom, radius, image.shape)
        covered = labels > 0
        # streaks (code 8) stay visible: they are classified, then masked along their line
        cls_mask = mask if dq is None else mask & (dq != 5)
        # the sky of each 2 x 2 block (the sky map's sample at or below it): the sky is
        # subtracted on the binned detection image, never at full resolution
        ny2, nx2 = image.shape[0] // 2, image.shape[1] // 2
        sky2 = (bg.back[:ny2, :nx2] if bg.step == 2 else
                bg.back[(2 * np.arange(ny2)) // bg.step][:, (2 * np.arange(nx2)) // bg.step])
        binned = bin2x2(image, cls_mask, sky2)  # the detection image, reused by find_streaks
        src = classify_sources(image, bg.global_rms, geom, psf_sigma=sigma0,
                               trail_x=det.xc, trail_y=det.yc, mask=cls_mask,
                               saturated=sat_mask, gain=ccd.gain, binned=binned, sky2=sky2,
                               glint_fwhm=_GLINT_FWHM, dq=dq)
        seg_lines = (src.cls == "streak") & np.isfinite(src.line_theta)
        # the full-size masks are dead once the sources are classified: freed before the
        # streak search, where a CCD's reduction peaks in memory
        ignore = covered | mask
        del mask, sat_mask, cls_mask
        lines = find_streaks(image, bg.global_rms, ignore, drift_angle=geom.angle_rad,
                             binned2=binned,
                             known=(src.line_theta[seg_lines], src.line_rho[seg_lines]))
        del binned, sky2, ignore
        # a "trail" whose source is a round point (a flash the detector took for a short
        # trail) is not a star: no light curve search, its flash comes from classification
        trail_class = np.full(n, "trail", dtype=object)
        has = src.trail >= 0
        trail_class[src.trail[has]] = np.where(src.cls[has] == "point", "point", "trail")
        # the pixels near every streak's line (the segments' and the Hough lines'), as
        # flat indices: a few thousand pixels, not a full-size mask
        on_streak = line_pixels(image.shape,
                                np.concatenate([src.line_theta[seg_lines], lines.theta]),
                                np.concatenate([src.line_rho[seg_lines], lines.rho]),
                                half_width=1.5 * fwhm)
        if on_streak.size:
            # samples crossed by a satellite streak are flagged (CP code 8) and never searched
            dq = np.zeros(image.shape, np.uint8) if dq is None else dq.copy()
            flat_dq = dq.reshape(-1)
            flat_dq[on_streak[flat_dq[on_streak] == 0]] = 8
            notes.append(f"{len(lines.theta) + int(seg_lines.sum())} streak(s) masked")
        del on_streak
    with timer.stage("sky"):
        sky = local_sky(image, det.x0, det.y0, geom, inner=radius, outer=radius + 6.0,
                        covered=covered, dq=dq, fallback=bg.back_at(det.xc, det.yc))
        sky_level = np.where(np.isfinite(sky.level), sky.level, bg.back_at(det.xc, det.yc))
        del covered, bg
    with timer.stage("extract"):
        lc, profile, contamination = extract_trails(
            image, det.x0, det.y0, geom, fwhm_guess=fwhm, flux_guess=det.flux, sky=sky_level,
            gain=ccd.gain, read_noise=ccd.read_noise, saturate=ccd.saturate, dq=dq,
            labels=labels, usable=~det.saturated & ~det.edge)
        del labels
        sigma = profile.sigma
        # light of another shape across the trail than the star's (a cosmic ray the DQ mask
        # missed, crossing several pixels of a sample) fits the profile far worse than the
        # star's other samples: such samples are outliers, not the star's light (the seeing's
        # changes along the exposure, shared by all stars, allowed for)
        misfit = misfit_samples(lc.chi2, lc.good)
        if misfit.any():
            lc = replace(lc, good=lc.good & ~misfit,
                         flags=lc.flags | np.where(misfit, FLAG_OUTLIER, 0).astype(np.uint16))
        # a collinear neighbour merged into the trail shows beyond its ends
        # (the wing beyond each end from the star's light next to that end: a brightening
        # near an end raises its wing, which is no neighbour)
        first4 = lc.good & (np.cumsum(lc.good, axis=1) <= 4)
        last4 = lc.good & (np.cumsum(lc.good[:, ::-1], axis=1)[:, ::-1] <= 4)
        with np.errstate(invalid="ignore"):
            ends = np.stack([row_nanmedian(np.where(first4, lc.flux, np.nan)),
                             row_nanmedian(np.where(last4, lc.flux, np.nan))], axis=1)
        end_light = end_excess(
            image, det.x0, det.y0, geom, profile=profile, sky=sky_level, gain=ccd.gain,
            read_noise=ccd.read_noise,
            baseline=np.nan_to_num(row_nanmedian(np.where(lc.good, lc.flux, np.nan))), dq=dq,
            end_levels=ends, per_end=True)
        collinear = end_light.z.max(axis=1) > _COLLINEAR_Z
    with timer.stage("normalise"):
        refs = select_references(lc.flux, lc.err, lc.good) & ~det.saturated & ~det.edge & \
            (contamination.fraction < 0.05) & ~collinear
        nm = normalise(lc.flux, lc.err, lc.good, refs)
        if nm.is_reference.sum() < 3:
            notes.append(f"only {int(nm.is_reference.sum())} reference stars: not normalised")
    with timer.stage("events"):
        # a trail dominated by a neighbour's modelled light cannot be trusted to show events
        # and a "trail" whose steady light is not detected is no star (a flash or a
        # cosmic ray the detector took for a short trail): its peak would read as a
        # brightening of thousands of percent, double-reporting the flash
        with np.errstate(invalid="ignore"):
            typical_err = row_nanmedian(np.where(lc.good, lc.err, np.nan))
            baseline_snr = nm.baseline * np.sqrt(lc.good.sum(axis=1)) / typical_err
        # a trail that runs into a saturated star's core or bleed (samples flagged so) also
        # carries that star's halo on the samples next to the masked ones, which no model
        # here removes: not searched; one that a satellite streak crosses carries the
        # streak's wings beside its masked core: searched away from it
        sat_bits = (1 << 3) | (1 << 4) | FLAG_SATURATED
        touches_saturation = ((lc.flags & sat_bits) != 0).any(axis=1)
        crossed = (lc.flags & (1 << 8)) != 0
        beside_streak = crossed.any(axis=1)
        # a collinear neighbour adds a step where its trail overlaps: only the part of the
        # trail its light does not reach is searched (a whole clean stretch, or nothing)
        clear = clear_of_neighbours(lc.s, geom.length_px, end_light.z, end_light.start_px,
                                    end_light.reach_px, end_light.level,
                                    threshold=_COLLINEAR_Z,
                                    margin_px=_COLLINEAR_MARGIN_FWHM * fwhm)
        if beside_streak.any():
            clear &= clear_of_flagged(crossed, int(np.ceil(_STREAK_MARGIN_FWHM * fwhm)))
        # a cosmic ray's masked pixels (CP code 5) leave its charge in the pixels around them
        # unmasked: the samples beside them are not searched (a cosmic ray is never an event)
        hit_by_cr = (lc.flags & (1 << 5)) != 0
        if hit_by_cr.any():
            clear &= clear_of_flagged(hit_by_cr, int(np.ceil(_CR_MARGIN_FWHM * fwhm)))
        search_good = nm.good & clear
        searchable = (nm.baseline > 0) & ~det.saturated & ~det.edge & \
            (contamination.fraction < 0.3) & (trail_class == "trail") & \
            (~(collinear | beside_streak) |
             (search_good.sum(axis=1) >= _MIN_CLEAR_SAMPLES)) & \
            ~touches_saturation & (np.nan_to_num(baseline_snr) >= p.detect_threshold_sigma)
        bl = np.where(nm.baseline > 0, nm.baseline, np.inf)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            shift_rel, shift_err_rel = lc.shift / bl, lc.shift_err / bl
        ev = search_events(nm.flux, nm.err, search_good, lc.t, seconds_per_px=geom.seconds_per_px,
                           smear_sigma_s=sigma * geom.seconds_per_px,
                           smear_kernel=lambda t: profile.pixel(t / geom.seconds_per_px),
                           durations=duration_grid(p.event_min_duration_s,
                                                   p.event_max_duration_s),
                           threshold=p.event_threshold_sigma,
                           searchable=searchable, shift=shift_rel, shift_err=shift_err_rel)
    # --- tables -------------------------------------------------------------------------
    trail_ids = np.array([f"{ccd.expnum}-{task.ccd}-{i:04d}" for i in range(n)], dtype=object)
    ra0, dec0 = (wcs.all_pix2world(det.x0, det.y0, 0) if n else (np.zeros(0), np.zeros(0)))
    trails = {
        "trail_id": trail_ids, "star_id": star_id, "class": trail_class,
        "x0": det.x0, "y0": det.y0, "xc": det.xc, "yc": det.yc, "ra0": ra0, "dec0": dec0,
        "snr": det.snr.astype(float), "flux": det.flux.astype(float),
        "flux_err": det.flux_err.astype(float), "saturated": det.saturated, "edge": det.edge,
        "sky": sky_level, "sky_sigma": sky.sigma, "baseline": nm.baseline,
        "is_reference": nm.is_reference, "scatter": nm.scatter, "expected_noise": nm.expected,
        "scatter_ratio": nm.chi, "n_good": nm.good.sum(axis=1), "mag": mag,
        "contamination": contamination.fraction, "collinear_blend": collinear,
        "searched": searchable,
        "match_separation_px": separation,
    }
    m = lc.shape[1]
    t = lc.t
    lightcurves = {
        "trail_id": np.repeat(trail_ids, m), "star_id": np.repeat(star_id, m),
        "sample": np.tile(np.arange(m, dtype=np.int32), n),
        "t_s": t.ravel(), "mjd": ccd.mjd_obs + t.ravel() / 86400.0,
        "x": lc.x.ravel(), "y": lc.y.ravel(),
        "flux": lc.flux.ravel(), "flux_err": lc.err.ravel(),
        "norm_flux": nm.flux.ravel(), "norm_flux_err": nm.err.ravel(),
        "flags": (lc.flags | nm.flags).ravel(), "good": nm.good.ravel(),
    }
    cands: list[CandidateSummary] = []
    stamps: list[dict[str, Any]] = []
    # flashes: point sources off the satellite streaks' cores (a glint there is the
    # satellite's); a flash beside a streak, clear of its core, is still a flash
    is_line = (src.cls == "streak") & np.isfinite(src.line_theta)
    off_streak = np.ones(len(src), bool)
    for th, rho in zip(np.concatenate([src.line_theta[is_line], lines.theta]),
                       np.concatenate([src.line_rho[is_line], lines.rho])):
        off_streak &= np.abs(src.x * np.cos(th) + src.y * np.sin(th) - rho) > _GLINT_FWHM * fwhm
    points = np.flatnonzero((src.cls == "point") & (src.snr >= p.event_threshold_sigma) &
                            off_streak)
    ux, uy = geom.unit
    ex = lc.x[ev.star, ev.sample] - uy * ev.offset_px
    ey = lc.y[ev.star, ev.sample] + ux * ev.offset_px
    crs = np.flatnonzero(src.cls == "cosmic_ray")
    if len(ev) and (points.size or crs.size):
        # an event at a point source is the same light (a flash beside a trail's line, or far
        # brighter than the star under it): the point source describes it, once; an event at
        # a cosmic ray (one the DQ mask missed, on a trail) is the cosmic ray
        from dataclasses import replace as _replace
        same = (np.hypot(ex[:, None] - src.x[points][None, :],
                         ey[:, None] - src.y[points][None, :]) <= 2.0 * fwhm).any(axis=1)
        same |= (np.hypot(ex[:, None] - src.x[crs][None, :],
                          ey[:, None] - src.y[crs][None, :]) <= fwhm).any(axis=1)
        if same.any():
            ev = _replace(ev, **{f: getattr(ev, f)[~same] for f in (
                "star", "kind", "sample", "t_peak_s", "duration_s", "amplitude",
                "smeared_amplitude", "fluence", "significance", "false_alarm", "offset_px")})
            ex, ey = ex[~same], ey[~same]
    cx = np.concatenate([ex, src.x[points]])
    cy = np.concatenate([ey, src.y[points]])
    cra, cdec = (wcs.all_pix2world(cx, cy, 0) if cx.size else (np.zeros(0), np.zeros(0)))
    for k in range(len(ev)):
        i = int(ev.star[k])
        if ev.kind[k] == "flash":  # a flash on the trail: not the star's, time unknown
            cands.append(CandidateSummary(
                kind="flash", star_id=None, ra=float(cra[k]), dec=float(cdec[k]),
                x=float(cx[k]), y=float(cy[k]), t_peak_s=float("nan"), duration_s=0.0,
                amplitude=float(ev.fluence[k] * nm.baseline[i] / geom.seconds_per_px),
                significance=float(ev.significance[k])))
        else:
            cands.append(CandidateSummary(
                kind=str(ev.kind[k]), star_id=star_id[i], ra=float(cra[k]),
                dec=float(cdec[k]), x=float(cx[k]), y=float(cy[k]),
                t_peak_s=float(ev.t_peak_s[k]), duration_s=float(ev.duration_s[k]),
                amplitude=float(ev.amplitude[k]), significance=float(ev.significance[k]),
                mag=None if not np.isfinite(mag[i]) else float(mag[i])))
        stamps.append({"trail": i, "k": k})
    for q, j in enumerate(points, start=len(ev)):
        # a flash does not drift: its time within the exposure is not measurable (NaN)
        cands.append(CandidateSummary(
            kind="flash", star_id=None, ra=float(cra[q]), dec=float(cdec[q]),
            x=float(cx[q]), y=float(cy[q]), t_peak_s=float("nan"), duration_s=0.0,
            amplitude=float(src.psf_flux[j]), significance=float(src.snr[j])))
        stamps.append({"source": int(j)})
    candidates = {
        "kind": np.array([c.kind for c in cands], dtype=object),
        "star_id": np.array([c.star_id for c in cands], dtype=object),
        "trail_id": np.array([trail_ids[s["trail"]] if "trail" in s else None for s in stamps],
                             dtype=object),
        "ra": np.array([c.ra for c in cands], float), "dec": np.array([c.dec for c in cands], float),
        "x": np.array([c.x for c in cands], float), "y": np.array([c.y for c in cands], float),
        "t_peak_s": np.array([c.t_peak_s for c in cands], float),
        "mjd_peak": ccd.mjd_obs + np.array([c.t_peak_s for c in cands], float) / 86400.0,
        "duration_s": np.array([c.duration_s for c in cands], float),
        "amplitude": np.array([c.amplitude for c in cands], float),
        "significance": np.array([c.significance for c in cands], float),
        "fluence": np.concatenate([ev.fluence, np.full(points.size, np.nan)]),
        "smeared_amplitude": np.concatenate([ev.smeared_amplitude, np.full(points.size, np.nan)]),
        "false_alarm": np.concatenate([ev.false_alarm, np.full(points.size, np.nan)]),
    }
    # sources: sep's, then the Hough streak lines (a streak crossing star trails merges with
    # them in sep's segmentation; the line is what identifies it)
    nl = len(lines.theta)
    sources = {
        "x": np.concatenate([src.x, lines.x]), "y": np.concatenate([src.y, lines.y]),
        "a": np.concatenate([src.a, lines.length / np.sqrt(12.0)]),
        "b": np.concatenate([src.b, np.full(nl, np.nan)]),
        "theta": np.concatenate([src.theta, lines.theta + np.pi / 2]),
        "length": np.concatenate([src.length, lines.length]),
        "npix": np.concatenate([src.npix, lines.votes]),
        "flux": np.concatenate([src.flux, np.full(nl, np.nan)]),
        "snr": np.concatenate([src.snr, np.full(nl, np.nan)]),
        "extension": np.concatenate([src.extension, np.zeros(nl)]),
        "psf_flux": np.concatenate([src.psf_flux, np.full(nl, np.nan)]),
        "class": np.concatenate([src.cls.astype(object), np.full(nl, "streak", dtype=object)]),
        "trail_id": np.array([trail_ids[i] if i >= 0 else None for i in src.trail] + [None] * nl,
                             dtype=object),
    }
    hdr = _wcs_cards(ccd.header, refined)
    stamp_data = []
    if task.alerts_enabled and p.stamps:
        for c, s in zip(cands, stamps):
            h = int(np.ceil(geom.length_px / 2 + 3 * fwhm))
            xi, yi = int(round(c.x)), int(round(c.y))
            sl = (slice(max(yi - h, 0), yi + h + 1), slice(max(xi - h, 0), xi + h + 1))
            entry = {"stamp": np.array(image[sl], dtype=np.float32), "cand": c}
            if "trail" in s:
                i = s["trail"]
                entry.update(t=lc.t[i], flux=nm.flux[i], err=nm.err[i])
            stamp_data.append(entry)
    return CcdResult(summary_notes=tuple(notes),
                     tables={"trails": trails, "lightcurves": lightcurves,
                             "candidates": candidates, "sources": sources},
                     candidates=tuple(cands), wcs_header=hdr, stamps=tuple(stamp_data),
                     n_trails=n, n_matched=int(sum(v is not None for v in star_id)))


def _wcs_cards(header: Any, refined: Any = None) -> Any:
    """Return the WCS cards of a CCD header (TPV distortion terms included) as a new header.

    astropy's ``WCS.to_header`` writes TPV back as TAN without its PV terms, so the cards are
    copied instead; a ``refined`` WCS (the header's with an affine correction folded into CD
    and CRPIX, distortion unchanged) replaces those cards.
    """
    import re

    from astropy.io import fits

    keep = re.compile(r"^(WCSAXES|CTYPE\d|CUNIT\d|CRVAL\d|CRPIX\d|CD\d_\d|CDELT\d|PC\d_\d|"
                      r"PV\d_\d+|RADESYS|EQUINOX|LONPOLE|LATPOLE)$")
    out = fits.Header()
    for card in header.cards:
        if keep.match(card.keyword):
            out[card.keyword] = (card.value, card.comment)
    if refined is not None:
        w = refined.wcs
        cd = w.cd if w.has_cd() else w.get_pc() * w.cdelt[:, None]
        for i in range(2):
            out[f"CRPIX{i + 1}"] = float(w.crpix[i])
            out[f"CRVAL{i + 1}"] = float(w.crval[i])
            for j in range(2):
                out[f"CD{i + 1}_{j + 1}"] = float(cd[i][j])
        out["DWREFINE"] = (True, "WCS refined on the reference catalogue")
    return out


def _write(task: CcdTask, result: CcdResult) -> tuple[str, tuple[CandidateSummary, ...]]:
    from dataclasses import replace

    from driftwatch.io.products import candidate_png, product_writer

    provenance = {
        "pipeline_version": __version__, "config_hash": pipeline_hash(task.pipeline),
        "input_path": task.image_path, "input_checksum": task.input_checksum,
        "dq_path": task.dq_path, "catalogue_path": task.catalogue_path,
        "expnum": task.expnum, "ccd": task.ccd, "notes": list(result.summary_notes),
    }
    cands = list(result.candidates)
    with product_writer(task.out_dir, task.ccd, provenance) as w:
        for name, cols in result.tables.items():
            w.table(name, cols)
        w.header("wcs", result.wcs_header)
        for k, entry in enumerate(result.stamps):
            c = entry["cand"]
            rel = f"stamps/{task.expnum}-{task.ccd}-{k:03d}-{c.kind}.png"
            t = entry.get("t", np.zeros(0))
            candidate_png(w.path(rel), entry["stamp"], t, entry.get("flux", np.zeros(0)),
                          entry.get("err", np.zeros(0)), c.t_peak_s, c.duration_s,
                          f"{task.expnum} {task.ccd} {c.kind} {c.significance:.1f} sigma")
            cands[k] = replace(c, stamp_path=str(w.final_path(rel)))
    return str(w.final), tuple(cands)
