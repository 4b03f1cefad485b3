"""Science I for one drift CCD in one call: mask, background, trails, star IDs, refined WCS.

Pure: arrays, a WCS and a catalogue in, a :class:`Located` out. ``reduce_ccd`` (Science II) and
the benchmark call it after reading the CCD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

from driftwatch.errors import ScienceError
from driftwatch.science.astrometry import MatchResult, identify_by_position, match_trails
from driftwatch.science.background import Background, mask_from_dq, measure_background
from driftwatch.science.catalogue import Catalogue
from driftwatch.science.geometry import drift_geometry
from driftwatch.science.trails import TrailDetections, detect_trails

__all__ = ["Located", "locate_trails"]


@dataclass(frozen=True)
class Located:
    """Where the trails of one CCD are and which star made each.

    Attributes
    ----------
    background : Background
        Sky and noise (``box`` 128 px mesh on every second pixel).
    mask : ndarray of bool, shape (ny, nx)
        Zero-weight pixels (DQ 1-5, >= SATURATE, non-finite).
    sat_mask : ndarray of bool, shape (ny, nx)
        Saturated or bleed pixels (DQ 3/4 or >= SATURATE).
    detections : TrailDetections
    match : MatchResult
        ``mode`` says whether IDs come from the catalogue or from positions.
    """

    background: Background
    mask: np.ndarray
    sat_mask: np.ndarray
    detections: TrailDetections
    match: MatchResult


def locate_trails(image: np.ndarray, wcs: WCS, *, exptime: float, fwhm_px: float,
                  saturate: float | None, dq: np.ndarray | None, catalogue: Catalogue | None,
                  field_name: str, drift_rate_arcsec_s: float, threshold_sigma: float = 5.0,
                  match_radius_px: float = 2.0, pointing_tolerance_arcsec: float = 5.0,
                  gain: float | None = None) -> Located:
    """Find the trails of a drift CCD and identify them.

    Parameters
    ----------
    image : ndarray, float32, shape (ny, nx)
        Pixels, ADU, sky kept.
    wcs : astropy.wcs.WCS
        Header WCS at shutter open.
    exptime, fwhm_px, saturate, gain :
        EXPTIME (s), PSF FWHM (px), SATURATE (ADU, or None) and gain (e-/ADU).
    dq : ndarray of uint8 or None
        CP DQ codes; None when the mask is missing (only saturation and NaN are masked).
    catalogue : Catalogue or None
        Reference catalogue of the field; None: detection only, IDs by position.
    field_name : str
        Field (prefix of position IDs).
    drift_rate_arcsec_s, threshold_sigma, match_radius_px, pointing_tolerance_arcsec :
        The ``pipeline`` config values of the same names.

    Raises
    ------
    ScienceError
        No usable pixels, a WCS that cannot be evaluated, or impossible geometry.
    """
    mask = mask_from_dq(dq, image, saturate)
    sat = np.zeros(image.shape, dtype=bool) if saturate is None else image >= saturate
    if dq is not None:
        sat |= (dq == 3) | (dq == 4)
    bg = measure_background(image, mask, box=128, step=2)
    try:
        geom = drift_geometry(wcs, drift_rate_arcsec_s, exptime)
    except Exception as exc:  # noqa: BLE001 - wcslib raises many types for a broken WCS
        raise ScienceError(f"the WCS gives no drift geometry: {exc}") from exc
    if not (np.isfinite(geom.dx_dt) and np.isfinite(geom.dy_dt)):
        raise ScienceError("the WCS gives a non-finite drift geometry")
    det = detect_trails(image, geom, bg, fwhm_px=fwhm_px, mask=mask, sat_mask=sat,
                        threshold_sigma=threshold_sigma, gain=gain)
    if catalogue is None:
        match = identify_by_position(det, wcs, field_name)
    else:
        match = match_trails(det, catalogue, wcs, drift_rate_arcsec_s, image.shape,
                             match_radius_px=match_radius_px,
                             pointing_tolerance_arcsec=pointing_tolerance_arcsec)
    return Located(background=bg, mask=mask, sat_mask=sat, detections=det, match=match)
