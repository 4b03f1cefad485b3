"""Build a field's reference catalogue from its pointed g and r exposures (the catalogue job).

``build_catalogue(task) -> CatalogueSummary`` is what a worker runs once per field. For every
CCD it reads both images (with their DQ masks when the files carry them: a CCD extension of the
same name in ``<image>`` with ``_ooi_`` -> ``_ood_``, or none), measures the sources of each band,
joins the bands, and writes one catalogue for the field atomically. It never raises for bad data:
a CCD that cannot be read or has no stars is skipped with a note in the provenance; if no CCD
gives a star the summary is ``ok=False`` with the reasons.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from driftwatch import __version__
from driftwatch.errors import DriftwatchError
from driftwatch.tasks import CatalogueSummary, CatalogueTask

log = logging.getLogger(__name__)

#: FWHM (pixels) assumed when a header has none.
DEFAULT_FWHM_PX = 4.5
#: Drift exposure time (s) assumed when sizing the isolation box of reference stars.
NOMINAL_DRIFT_EXPTIME_S = 20.0


def _pipeline_hash(pipeline: object) -> str:
    """Short hash of the pipeline settings (the recipe of ``Config.pipeline_hash``)."""
    import hashlib
    import json

    from driftwatch.config import _to_plain

    blob = json.dumps(_to_plain(pipeline, True), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dq_path_for(image_path: str | Path) -> Path | None:
    """Return the CP data-quality file beside an InstCal image (``_ooi_`` -> ``_ood_``)."""
    p = Path(image_path)
    for a, b in (("_ooi_", "_ood_"), ("-image", "-dqmask")):
        if a in p.name:
            cand = p.with_name(p.name.replace(a, b))
            if cand.is_file():
                return cand
    return None


def _band(path: str, ccd: str, band: str, *, threshold: float) -> tuple[object, object, float]:
    """Read and measure one band of one CCD; return (BandSources, CcdData, saturate)."""
    from driftwatch.io.decam import read_ccd, read_dq
    from driftwatch.science.background import mask_from_dq, measure_background
    from driftwatch.science.catalogue import measure_sources

    data = read_ccd(path, ccd)
    dq_file = dq_path_for(path)
    dq = read_dq(dq_file, ccd) if dq_file is not None else None
    mask = mask_from_dq(dq, data.image, data.saturate)
    sat = data.image >= data.saturate
    if dq is not None:
        sat |= (dq == 3) | (dq == 4)
    bg = measure_background(data.image, mask)
    fwhm = data.fwhm_px if data.fwhm_px and math.isfinite(data.fwhm_px) else DEFAULT_FWHM_PX
    src = measure_sources(data.image, data.wcs, bg, fwhm_px=fwhm, exptime=data.exptime,
                          band=band, mask=mask, sat_mask=sat, magzpt=data.magzpt,
                          gain=data.gain, threshold_sigma=threshold)
    return src, data, data.saturate


def catalogue_for_ccd(g_path: str, r_path: str, ccd: str, field_name: str, *,
                      drift_rate_arcsec_s: float = 0.5, threshold_sigma: float = 5.0):
    """Measure and join the g and r sources of one CCD; return a ``Catalogue``.

    Raises
    ------
    InputError, ScienceError
        The CCD cannot be read or measured.
    """
    from driftwatch.science.catalogue import merge_bands

    g, gdata, gsat = _band(g_path, ccd, "g", threshold=threshold_sigma)
    r, _, rsat = _band(r_path, ccd, "r", threshold=threshold_sigma)
    fwhm_arcsec = max(g.fwhm_px, r.fwhm_px) * 0.2637
    along = abs(drift_rate_arcsec_s) * NOMINAL_DRIFT_EXPTIME_S + 2.0 * fwhm_arcsec
    return merge_bands(g, r, ccd=ccd, field_name=field_name, saturate_adu=min(gsat, rsat),
                       isolation_along_arcsec=along, isolation_across_arcsec=2.0 * fwhm_arcsec)


def build_catalogue(task: CatalogueTask) -> CatalogueSummary:
    """Build and write the reference catalogue of one field (never raises for bad data)."""
    from driftwatch.io.catalogue import write_catalogue
    from driftwatch.io.decam import read_exposure_info
    from driftwatch.science.catalogue import concat_catalogues

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        ccds = tuple(task.ccds)
        if not ccds:
            info_g = read_exposure_info(task.g_path)
            info_r = read_exposure_info(task.r_path)
            ccds = tuple(c for c in info_g.ccds if c in set(info_r.ccds)
                         and c not in task.pipeline.skip_ccds)
    except DriftwatchError as exc:
        return CatalogueSummary(ok=False, error=str(exc), retryable=False,
                                pipeline_version=__version__)
    parts = []
    problems: list[str] = []
    for ccd in ccds:
        t = time.perf_counter()
        try:
            parts.append(catalogue_for_ccd(task.g_path, task.r_path, ccd, task.field,
                                           drift_rate_arcsec_s=task.pipeline.drift_rate_arcsec_s))
        except DriftwatchError as exc:
            problems.append(f"{ccd}: {exc}")
            log.warning("catalogue of field %s, CCD %s skipped: %s", task.field, ccd, exc)
        timings[f"ccd_{ccd}"] = time.perf_counter() - t
    cat = concat_catalogues(parts, task.field)
    if cat.n == 0:
        reason = "; ".join(problems) if problems else "no stars found on any CCD"
        return CatalogueSummary(ok=False, error=f"field {task.field}: no catalogue ({reason})",
                                retryable=False, timings=timings, pipeline_version=__version__)
    provenance = {
        "pipeline_version": __version__, "config_hash": _pipeline_hash(task.pipeline),
        "g_path": str(task.g_path), "r_path": str(task.r_path), "ccds": list(ccds),
        "skipped": problems, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    t = time.perf_counter()
    try:
        out = write_catalogue(cat, task.out_path, provenance)
    except OSError as exc:
        return CatalogueSummary(ok=False, error=f"{task.out_path}: cannot write ({exc})",
                                retryable=True, timings=timings, pipeline_version=__version__)
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return CatalogueSummary(ok=True, out_path=str(out), n_stars=cat.n, timings=timings,
                            pipeline_version=__version__)
