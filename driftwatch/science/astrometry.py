"""Tie detected trails to catalogue stars, and refine the CCD's WCS.

1. Prediction. Each catalogue star near the CCD is placed at its t = 0 trail end with
   :func:`~driftwatch.science.geometry.drift_positions` and the header WCS.
2. Global offset. All detection - prediction offsets shorter than the pointing tolerance (plus
   the match radius) go into a 2-D histogram of 1 px bins; the true offset is the bin where the
   pairs pile up, while chance pairs of a crowded field spread evenly. The offset is refined as
   the median of the pairs near the peak. This is independent of the number of trails (it works
   with one) and of crowding.
3. Transformation. With the offset applied, pairs within three match radii give a first
   transformation ``det = A @ pred + t`` (shift for < 3 pairs, shift + rotation + scale for
   < 20, full affine beyond), fitted with 3-sigma clipping; the final match is then made with it.
4. One-to-one match. Candidates lie inside an ellipse of semi-axes ``max(match_radius, 3 sigma)``
   along and across the trail (a faint trail's position along the trail is uncertain by
   ~0.3 L / S/N). Their cost adds the brightness mismatch: the detection's flux against the
   catalogue magnitude through a zero point fitted on the unambiguous pairs; a pair off by more
   than a factor ``max_flux_ratio`` is refused unless the trail is saturated. Pairs are taken in
   order of increasing cost, each detection and star at most once. Unmatched detections get
   ``star_id`` None.
5. Refined WCS. The affine fit on the final matches is folded into the WCS exactly: with
   1-based pixels ``q = A p + t``, ``CD' = CD A^-1`` and ``CRPIX' = A CRPIX + t``. The TPV
   distortion acts on intermediate coordinates after CD and is kept unchanged; a pointing error
   (a CRVAL shift) and a small rotation are absorbed to well below 0.01 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from driftwatch.errors import ScienceError
from driftwatch.science.catalogue import Catalogue, sky_to_unit, star_ids
from driftwatch.science.geometry import drift_positions
from driftwatch.science.trails import TrailDetections

#: Position error floor (pixels) of a pair: catalogue positions and trail model mismatch.
_POS_FLOOR_PX = 0.05

__all__ = ["MatchResult", "match_trails", "identify_by_position", "pixel_scale_arcsec",
           "apply_affine_to_wcs"]


@dataclass(frozen=True)
class MatchResult:
    """Which star made each detected trail, and the refined WCS.

    Arrays have shape (n,), one entry per detection, in the order of the ``TrailDetections``.

    Attributes
    ----------
    star_id : ndarray of object
        Catalogue star ID, or None (``unmatched``). In ``"detection-only"`` mode: an ID made
        from the sky position of the trail's t = 0 end (see :func:`identify_by_position`).
    cat_index : ndarray, int64
        Row of the star in the catalogue given to :func:`match_trails`, -1 when unmatched.
    separation_px : ndarray, float32
        Distance between the detected t = 0 end and the star's prediction through the refined
        WCS, pixels (NaN when unmatched).
    x_pred, y_pred : ndarray, float64
        Predicted t = 0 end of the matched star through the refined WCS (NaN when unmatched).
    mag_ref : ndarray, float32
        Catalogue magnitude (r, else g) of the matched star (NaN when unmatched).
    reference : ndarray, bool
        The matched star is a photometric reference in the catalogue.
    wcs : astropy.wcs.WCS
        Refined WCS valid at shutter open (the header WCS when it could not be refined).
    refined : bool
        True when ``wcs`` was fitted.
    offset_px : tuple of float
        Global (dx, dy) from the header prediction to the detections, pixels.
    rotation_deg : float
        Rotation of the fitted transformation, degrees (0 when not fitted).
    residual_px : float
        Median distance of the matched, fitted trails to their refined prediction, pixels
        (NaN with no match).
    n_matched : int
        Detections that carry a catalogue ID.
    n_predicted : int
        Catalogue stars predicted on the CCD.
    flux_zp : float
        Fitted log10(flux ADU) + 0.4 * mag of the matched stars (NaN when not fitted).
    mode : str
        ``"catalogue"`` or ``"detection-only"``.
    notes : tuple of str
        Human-readable remarks (why the WCS was not refined, few matches, ...).
    """

    star_id: np.ndarray
    cat_index: np.ndarray
    separation_px: np.ndarray
    x_pred: np.ndarray
    y_pred: np.ndarray
    mag_ref: np.ndarray
    reference: np.ndarray
    wcs: WCS
    refined: bool
    offset_px: tuple[float, float]
    rotation_deg: float
    residual_px: float
    n_matched: int
    n_predicted: int
    flux_zp: float
    mode: str
    notes: tuple[str, ...] = ()


def pixel_scale_arcsec(wcs: WCS) -> float:
    """Return the mean pixel scale of a celestial WCS at its reference point, arcsec/px."""
    try:
        scales = wcs.proj_plane_pixel_scales()
        return float(np.mean([s.to_value("deg") if hasattr(s, "to_value") else s
                              for s in scales])) * 3600.0
    except Exception as exc:  # noqa: BLE001 - astropy raises several types here
        raise ScienceError(f"the WCS has no usable pixel scale: {exc}") from exc


def apply_affine_to_wcs(wcs: WCS, a: np.ndarray, t: np.ndarray) -> WCS:
    """Return a copy of ``wcs`` whose pixels are ``q = a @ p + t`` of the old ones (1-based).

    The distortion (TPV, on intermediate coordinates) is kept; CD and CRPIX absorb the map.
    """
    new = wcs.deepcopy()
    w = new.wcs
    cd = np.array(w.cd if w.has_cd() else w.get_pc() * w.cdelt[:, None], dtype=float)
    w.cd = cd @ np.linalg.inv(a)
    w.crpix = a @ np.asarray(w.crpix, dtype=float) + t
    if not w.has_cd():  # pragma: no cover - setting cd switches the WCS to CD form
        w.cdelt = [1.0, 1.0]
    w.set()
    return new


def _empty_result(n: int, wcs: WCS, mode: str, notes: tuple[str, ...], n_pred: int = 0,
                  star_id: np.ndarray | None = None) -> MatchResult:
    nanf = np.full(n, np.nan)
    return MatchResult(
        star_id=np.full(n, None, dtype=object) if star_id is None else star_id,
        cat_index=np.full(n, -1, dtype=np.int64), separation_px=nanf.astype(np.float32),
        x_pred=nanf.copy(), y_pred=nanf.copy(), mag_ref=nanf.astype(np.float32),
        reference=np.zeros(n, dtype=bool), wcs=wcs, refined=False, offset_px=(0.0, 0.0),
        rotation_deg=0.0, residual_px=math.nan, n_matched=0, n_predicted=n_pred,
        flux_zp=math.nan, mode=mode, notes=notes)


def _fit_transform(p: np.ndarray, q: np.ndarray, sx: np.ndarray, sy: np.ndarray,
                   nclip: int = 3, clip: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``q = a @ p + t`` by weighted least squares with sigma clipping.

    The model depends on the number of pairs: a shift (< 3), shift + rotation + scale (< 20),
    full affine. ``sx, sy`` are the position errors of each pair in x and y (pixels): a faint
    trail is uncertain by ~1 px along its length and ~0.1 px across, and weighting keeps the
    bright, precise trails in charge of the fit. Returns ``a`` (2, 2), ``t`` (2,) and the mask
    of the pairs kept.
    """
    n = p.shape[0]
    keep = np.ones(n, dtype=bool)
    a, t = np.eye(2), np.zeros(2)
    wx, wy = 1.0 / sx**2, 1.0 / sy**2
    for _ in range(nclip + 1):
        pk, qk = p[keep], q[keep]
        wxk, wyk = wx[keep], wy[keep]
        m = pk.shape[0]
        if m == 0:
            break
        if m < 3:
            a = np.eye(2)
            d = qk - pk
            t = np.array([np.sum(wxk * d[:, 0]) / np.sum(wxk), np.sum(wyk * d[:, 1]) / np.sum(wyk)])
        elif m < 20:
            # Similarity about the weighted centroid: q - qc = [[s, -r], [r, s]] (p - c)
            w = 2.0 / (1.0 / wxk + 1.0 / wyk)
            c = np.sum(w[:, None] * pk, axis=0) / np.sum(w)
            qc = np.sum(w[:, None] * qk, axis=0) / np.sum(w)
            dp, dq = pk - c, qk - qc
            den = float(np.sum(w[:, None] * dp**2))
            if den > 0:
                sc = float(np.sum(w[:, None] * dp * dq)) / den
                r = float(np.sum(w * (dp[:, 0] * dq[:, 1] - dp[:, 1] * dq[:, 0]))) / den
            else:
                sc, r = 1.0, 0.0
            a = np.array([[sc, -r], [r, sc]])
            t = qc - a @ c
        else:
            c = pk.mean(axis=0)
            design = np.column_stack([pk - c, np.ones(m)])
            rows = []
            for k, wk in ((0, wxk), (1, wyk)):
                sw = np.sqrt(wk)
                coef, *_ = np.linalg.lstsq(design * sw[:, None], qk[:, k] * sw, rcond=None)
                rows.append(coef)
            coef = np.array(rows)                       # (2, 3)
            a = coef[:, :2]
            t = coef[:, 2] - a @ c
        d = q - (p @ a.T + t)
        res = np.hypot(d[:, 0] / sx, d[:, 1] / sy)       # in units of the expected error
        scale = max(1.4826 * float(np.median(res[keep])), 1.0) if keep.sum() >= 5 else math.inf
        new_keep = res < clip * scale
        if new_keep.sum() < min(3, n) or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    return a, t, keep


def _global_offset(dx: np.ndarray, dy: np.ndarray, radius: float) -> tuple[float, float, int]:
    """Mode of a cloud of offsets by a 2-D histogram (1 px bins, 3x3 smoothing)."""
    if dx.size == 0:
        return 0.0, 0.0, 0
    nb = int(math.ceil(radius)) * 2 + 1
    edges = np.arange(nb + 1) - nb / 2.0
    h, _, _ = np.histogram2d(dy, dx, bins=[edges, edges])
    pad = np.pad(h, 1)
    sm = sum(pad[1 + i:1 + i + nb, 1 + j:1 + j + nb] for i in (-1, 0, 1) for j in (-1, 0, 1))
    iy, ix = np.unravel_index(int(np.argmax(sm)), sm.shape)
    cx, cy = (edges[ix] + edges[ix + 1]) / 2.0, (edges[iy] + edges[iy + 1]) / 2.0
    near = (np.abs(dx - cx) < 1.5) & (np.abs(dy - cy) < 1.5)
    if not near.any():
        return cx, cy, 0
    return float(np.median(dx[near])), float(np.median(dy[near])), int(near.sum())


def _predict(cat: Catalogue, wcs: WCS, rate: float, shape: tuple[int, int],
             margin: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Catalogue rows near the CCD and their predicted t = 0 trail ends (header WCS)."""
    ny, nx = shape
    try:
        corners_x = np.array([0, nx - 1, 0, nx - 1, (nx - 1) / 2])
        corners_y = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2])
        cra, cdec = wcs.all_pix2world(corners_x, corners_y, 0)
    except Exception as exc:  # noqa: BLE001
        raise ScienceError(f"the WCS cannot map pixels to the sky: {exc}") from exc
    if not np.all(np.isfinite(cra)) or not np.all(np.isfinite(cdec)):
        raise ScienceError("the WCS gives non-finite sky positions for the CCD corners")
    uc = sky_to_unit(cra, cdec)
    centre = uc[-1]
    radius = float(np.max(np.arccos(np.clip(uc[:4] @ centre, -1, 1))))
    radius += (margin * pixel_scale_arcsec(wcs) / 3600.0) * math.pi / 180.0
    us = sky_to_unit(cat.ra, cat.dec)
    rows = np.flatnonzero(us @ centre >= math.cos(min(radius, math.pi)))
    if rows.size == 0:
        return rows, np.zeros(0), np.zeros(0)
    x, y = drift_positions(wcs, cat.ra[rows], cat.dec[rows], 0.0, rate)
    inside = ((x > -margin) & (x < nx - 1 + margin) & (y > -margin) & (y < ny - 1 + margin)
              & np.isfinite(x) & np.isfinite(y))
    return rows[inside], x[inside], y[inside]


def match_trails(det: TrailDetections, cat: Catalogue, wcs: WCS, rate_arcsec_s: float,
                 shape: tuple[int, int], *, match_radius_px: float = 2.0,
                 pointing_tolerance_arcsec: float = 5.0,
                 max_flux_ratio: float = 10.0) -> MatchResult:
    """Give each detected trail its catalogue star, and refine the WCS.

    Parameters
    ----------
    det : TrailDetections
        Trails of this CCD (their ``x0, y0`` are matched).
    cat : Catalogue
        Reference catalogue of the field (any number of CCDs; stars near this one are used).
    wcs : astropy.wcs.WCS
        Header WCS of the CCD, valid at shutter open.
    rate_arcsec_s : float
        Drift rate in Declination, arcsec/s (config ``pipeline.drift_rate_arcsec_s``).
    shape : tuple of int
        (ny, nx) of the CCD.
    match_radius_px : float
        Match tolerance, pixels (config ``pipeline.match_radius_px``); along the trail it grows
        to three times the position error of faint trails.
    pointing_tolerance_arcsec : float
        Largest pointing error searched (config ``pipeline.pointing_tolerance_arcsec``).
    max_flux_ratio : float
        A pair whose flux disagrees with the catalogue by more than this factor (either way)
        is refused, except for saturated trails.

    Returns
    -------
    MatchResult
        Never raises for few or no trails/stars; see ``notes``.

    Raises
    ------
    ScienceError
        The WCS cannot map the CCD to the sky.
    """
    n = det.n
    scale = pixel_scale_arcsec(wcs)
    search = pointing_tolerance_arcsec / scale + 2.0 * match_radius_px
    rows, xp, yp = _predict(cat, wcs, rate_arcsec_s, shape, margin=search + 2.0)
    if n == 0:
        return _empty_result(0, wcs, "catalogue", ("no trails detected",), rows.size)
    if rows.size == 0:
        return _empty_result(n, wcs, "catalogue", ("no catalogue star on this CCD",), 0)
    ux, uy = det.geometry.unit
    pred = np.column_stack([xp, yp])
    pos = np.column_stack([det.x0, det.y0])
    notes: list[str] = []

    # Global offset from every pair closer than the pointing tolerance.
    sdm = cKDTree(pos).sparse_distance_matrix(cKDTree(pred), search, output_type="ndarray")
    di, si = sdm["i"], sdm["j"]
    ox, oy, npk = _global_offset(pos[di, 0] - pred[si, 0], pos[di, 1] - pred[si, 1], search)
    a, t = np.eye(2), np.array([ox, oy])

    # Along-trail position error grows for faint trails (see trails._refine).
    snr = np.maximum(det.snr.astype(float), 1.0)
    sig_along = 0.3 * det.geometry.length_px / snr
    gate_along = np.maximum(match_radius_px, 3.0 * sig_along)
    gate_across = np.full(n, float(match_radius_px))
    # Position errors for the weighted fit, with a floor for the catalogue's own errors.
    sig_a = np.hypot(sig_along, _POS_FLOOR_PX)
    sig_c = np.hypot(0.6 * det.fwhm_px / snr, _POS_FLOOR_PX)
    sig_x = np.hypot(ux * sig_a, uy * sig_c)
    sig_y = np.hypot(uy * sig_a, ux * sig_c)
    fit_ok = ~det.edge

    flux_zp = math.nan
    mag = cat.mag_ref[rows].astype(float)
    logf = np.log10(np.where(det.flux > 0, det.flux, np.nan))
    md = ms = np.zeros(0, dtype=np.intp)
    for stage in (0, 1):
        cur = pred @ a.T + t
        widen = 3.0 if stage == 0 else 1.0
        d_idx, s_idx, cost, da, dc = _candidates(pos, cur, ux, uy, gate_along * widen,
                                                 gate_across * widen)
        # Brightness: zero point from pairs that are unambiguous in position.
        dlog = logf[d_idx] + 0.4 * mag[s_idx]
        uniq = _unique_pairs(d_idx, s_idx) & np.isfinite(dlog) & ~det.saturated[d_idx]
        if uniq.sum() >= 3:
            flux_zp = float(np.median(dlog[uniq]))
        if math.isfinite(flux_zp):
            resid = dlog - flux_zp
            bad_flux = (np.abs(resid) > math.log10(max_flux_ratio)) & ~det.saturated[d_idx]
            bad_flux &= np.isfinite(resid)
            cost = cost + np.where(np.isfinite(resid), (resid / 0.3) ** 2, 0.0)
            keep = ~bad_flux
            d_idx, s_idx, cost = d_idx[keep], s_idx[keep], cost[keep]
        md, ms = _assign(d_idx, s_idx, cost, n, rows.size)
        good = md[fit_ok[md]]
        sel = fit_ok[md]
        if good.size == 0:
            break
        p1 = pred[ms[sel]] + 1.0
        q1 = pos[md[sel]] + 1.0
        a, t1, kept = _fit_transform(p1, q1, sig_x[md[sel]], sig_y[md[sel]])
        t = t1 + a @ np.ones(2) - np.ones(2)   # back to 0-based: q0 = a p0 + t

    star_id = np.full(n, None, dtype=object)
    cat_index = np.full(n, -1, dtype=np.int64)
    sep_px = np.full(n, np.nan, dtype=np.float32)
    x_pred = np.full(n, np.nan)
    y_pred = np.full(n, np.nan)
    mag_ref = np.full(n, np.nan, dtype=np.float32)
    reference = np.zeros(n, dtype=bool)
    refined = False
    new_wcs = wcs
    residual = math.nan
    rot = 0.0
    if md.size:
        cur = pred @ a.T + t
        star_id[md] = cat.star_id[rows[ms]]
        cat_index[md] = rows[ms]
        x_pred[md], y_pred[md] = cur[ms, 0], cur[ms, 1]
        sep_px[md] = np.hypot(pos[md, 0] - cur[ms, 0], pos[md, 1] - cur[ms, 1])
        mag_ref[md] = mag[ms]
        reference[md] = cat.reference[rows[ms]]
        fitted = fit_ok[md]
        if fitted.any():
            residual = float(np.median(sep_px[md][fitted]))
            t1 = t + np.ones(2) - a @ np.ones(2)
            new_wcs = apply_affine_to_wcs(wcs, a, t1)
            refined = True
            rot = math.degrees(math.atan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1]))
        if md.size < 3:
            notes.append(f"only {md.size} matched trail(s): WCS shift only")
        elif md.size < 20:
            notes.append(f"{md.size} matched trails: WCS shift, rotation and scale only")
    else:
        notes.append("no trail matched a catalogue star: WCS not refined")
    if npk < 3 and n >= 10:
        notes.append(f"weak global offset peak ({npk} pairs)")
    n_matched = int(np.count_nonzero(cat_index >= 0))
    return MatchResult(star_id=star_id, cat_index=cat_index, separation_px=sep_px,
                       x_pred=x_pred, y_pred=y_pred, mag_ref=mag_ref, reference=reference,
                       wcs=new_wcs, refined=refined, offset_px=(ox, oy), rotation_deg=rot,
                       residual_px=residual, n_matched=n_matched, n_predicted=int(rows.size),
                       flux_zp=flux_zp, mode="catalogue", notes=tuple(notes))


def _candidates(pos: np.ndarray, pred: np.ndarray, ux: float, uy: float, gate_along: np.ndarray,
                gate_across: np.ndarray) -> tuple[np.ndarray, ...]:
    """Detection-star pairs inside each detection's elliptical gate, with a position cost."""
    rmax = float(max(np.max(gate_along), np.max(gate_across)))
    sdm = cKDTree(pos).sparse_distance_matrix(cKDTree(pred), rmax, output_type="ndarray")
    d_idx, s_idx = sdm["i"].astype(np.intp), sdm["j"].astype(np.intp)
    dv = pos[d_idx] - pred[s_idx]
    da = dv[:, 0] * ux + dv[:, 1] * uy
    dc = -dv[:, 0] * uy + dv[:, 1] * ux
    q = (da / gate_along[d_idx]) ** 2 + (dc / gate_across[d_idx]) ** 2
    inside = q < 1.0
    # Position cost in units of the expected error (a third of the gate).
    cost = 9.0 * q[inside]
    return d_idx[inside], s_idx[inside], cost, da[inside], dc[inside]


def _unique_pairs(d_idx: np.ndarray, s_idx: np.ndarray) -> np.ndarray:
    """True for pairs whose detection and star each appear in exactly one pair."""
    if d_idx.size == 0:
        return np.zeros(0, dtype=bool)
    cd = np.bincount(d_idx)
    cs = np.bincount(s_idx)
    return (cd[d_idx] == 1) & (cs[s_idx] == 1)


def _assign(d_idx: np.ndarray, s_idx: np.ndarray, cost: np.ndarray, n_det: int,
            n_star: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one assignment in order of increasing cost; return matched (det, star)."""
    if d_idx.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    uniq = _unique_pairs(d_idx, s_idx)
    out_d = [d_idx[uniq]]
    out_s = [s_idx[uniq]]
    rest = np.flatnonzero(~uniq)
    if rest.size:
        used_d = np.zeros(n_det, dtype=bool)
        used_s = np.zeros(n_star, dtype=bool)
        extra_d, extra_s = [], []
        # Only the contested pairs (a small minority) need the sequential pass.
        for k in rest[np.argsort(cost[rest], kind="stable")]:
            d, s = d_idx[k], s_idx[k]
            if not used_d[d] and not used_s[s]:
                used_d[d] = used_s[s] = True
                extra_d.append(d)
                extra_s.append(s)
        out_d.append(np.asarray(extra_d, dtype=np.intp))
        out_s.append(np.asarray(extra_s, dtype=np.intp))
    md = np.concatenate(out_d)
    ms = np.concatenate(out_s)
    order = np.argsort(md)
    return md[order], ms[order]


def identify_by_position(det: TrailDetections, wcs: WCS, field_name: str) -> MatchResult:
    """Name trails by their sky position when the field has no reference catalogue yet.

    The ID is ``"<field>-new-<ra><dec>"`` (4 decimals of a degree, 0.36") of the t = 0 end
    through the header WCS. It is provisional: a position measured on another exposure may
    round differently, so such IDs are not guaranteed to repeat across exposures; the first
    catalogue of the field replaces them.
    """
    n = det.n
    notes = ("no reference catalogue: detection only, IDs by position (provisional), "
             "WCS not refined",)
    if n == 0:
        return _empty_result(0, wcs, "detection-only", notes)
    try:
        ra, dec = wcs.all_pix2world(det.x0, det.y0, 0)
    except Exception as exc:  # noqa: BLE001
        raise ScienceError(f"the WCS cannot map pixels to the sky: {exc}") from exc
    ra4 = np.round(np.mod(ra, 360.0), 4)
    dec4 = np.round(dec, 4)
    ids = star_ids(f"{field_name}-new", ra4, dec4, order_key=-det.snr.astype(float))
    return _empty_result(n, wcs, "detection-only", notes, star_id=ids.astype(object))
