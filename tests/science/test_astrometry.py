"""Matching trails to catalogue stars and refining the WCS, on synthetic detections."""

from __future__ import annotations

import numpy as np
import pytest

from driftwatch.science.astrometry import (apply_affine_to_wcs, identify_by_position,
                                           match_trails)
from driftwatch.science.catalogue import Catalogue, star_ids
from driftwatch.science.geometry import drift_geometry, drift_positions
from driftwatch.science.trails import TrailDetections

from ._synth import decam_like_wcs

NY, NX = 4094, 2046
RATE = 0.5


def _catalogue(n: int, seed: int, wcs) -> Catalogue:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-30, NX + 30, n)
    y = rng.uniform(-30, NY + 30, n)
    ra, dec = wcs.all_pix2world(x, y, 0)
    mag = rng.uniform(15, 21, n).astype(np.float32)
    f32 = np.float32
    return Catalogue(star_id=star_ids("F", ra, dec), ccd=np.full(n, "S4"), ra=ra, dec=dec,
                     mag_g=mag + f32(0.6), mag_r=mag, magerr_g=np.zeros(n, f32),
                     magerr_r=np.zeros(n, f32), g_r=np.full(n, 0.6, f32),
                     flux_g=np.ones(n), flux_r=np.ones(n), saturated=np.zeros(n, bool),
                     reference=np.ones(n, bool), field="F")


def _detections(cat: Catalogue, true_wcs, seed: int, keep: np.ndarray | None = None,
                n_false: int = 0, pos_noise: float = 0.05) -> tuple[TrailDetections, np.ndarray]:
    """Trails of the catalogue stars as seen through ``true_wcs`` (+ noise, + false ones)."""
    rng = np.random.default_rng(seed)
    geom = drift_geometry(true_wcs, RATE, 20.0)
    x0, y0 = drift_positions(true_wcs, cat.ra, cat.dec, 0.0, RATE)
    on = (x0 > 5) & (x0 < NX - 5) & (y0 > 5) & (y0 < NY - 5)
    idx = np.flatnonzero(on if keep is None else on & keep)
    flux = 10 ** (-0.4 * (cat.mag_r[idx] - 26.0)) * 20.0
    x0 = x0[idx] + rng.normal(0, pos_noise, idx.size)
    y0 = y0[idx] + rng.normal(0, pos_noise, idx.size)
    truth = cat.star_id[idx]
    if n_false:
        x0 = np.concatenate([x0, rng.uniform(0, NX, n_false)])
        y0 = np.concatenate([y0, rng.uniform(0, NY, n_false)])
        flux = np.concatenate([flux, rng.uniform(500, 5000, n_false)])
        truth = np.concatenate([truth, np.full(n_false, "")])
    n = x0.size
    half = geom.length_px / 2
    ux, uy = geom.unit
    det = TrailDetections(
        x0=x0, y0=y0, x1=x0 + 2 * half * ux, y1=y0 + 2 * half * uy, xc=x0 + half * ux,
        yc=y0 + half * uy, snr=np.full(n, 200.0, np.float32), flux=flux.astype(np.float32),
        flux_err=np.sqrt(flux).astype(np.float32), saturated=np.zeros(n, bool),
        masked=np.zeros(n, bool), edge=np.zeros(n, bool), geometry=geom, fwhm_px=4.5,
        threshold_sigma=5.0, noise_scale=1.0, method="separable")
    return det, truth


def _shifted(wcs, dra_arcsec: float, ddec_arcsec: float, rot_deg: float = 0.0):
    w = wcs.deepcopy()
    dec = w.wcs.crval[1]
    w.wcs.crval = [w.wcs.crval[0] + dra_arcsec / 3600 / np.cos(np.radians(dec)),
                   dec + ddec_arcsec / 3600]
    if rot_deg:
        r = np.radians(rot_deg)
        w.wcs.cd = np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]]) @ w.wcs.cd
    w.wcs.set()
    return w


def test_pointing_error_of_5_arcsec_is_recovered_with_right_ids_and_refined_wcs():
    true_wcs = decam_like_wcs(NX, NY)
    cat = _catalogue(1500, 1, true_wcs)
    det, truth = _detections(cat, true_wcs, 2, n_false=20)
    header = _shifted(true_wcs, 3.0, -4.0, rot_deg=0.02)          # 5" off, slightly rotated
    m = match_trails(det, cat, header, RATE, (NY, NX), match_radius_px=2.0,
                     pointing_tolerance_arcsec=5.0)
    real = truth != ""
    matched = m.cat_index >= 0
    assert m.mode == "catalogue" and m.refined
    assert matched[real].mean() > 0.99
    assert (m.star_id[matched].astype(str) == truth[matched]).mean() >= 0.995
    assert matched[~real].sum() <= 2                             # chance coincidences only
    assert np.hypot(*m.offset_px) > 15                           # 5" is ~19 px
    x, y = drift_positions(m.wcs, cat.ra, cat.dec, 0.0, RATE)
    xt, yt = drift_positions(true_wcs, cat.ra, cat.dec, 0.0, RATE)
    assert np.median(np.hypot(x - xt, y - yt)) < 0.02
    assert m.residual_px < 0.15


@pytest.mark.parametrize("n_trails", [0, 1, 3, 12])
def test_few_trails_do_not_crash(n_trails):
    true_wcs = decam_like_wcs(NX, NY)
    cat = _catalogue(800, 3, true_wcs)
    det, truth = _detections(cat, true_wcs, 4)
    sel = np.arange(det.n) < n_trails
    det = TrailDetections(**{k: (v[sel] if isinstance(v, np.ndarray) else v)
                             for k, v in det.__dict__.items()})
    header = _shifted(true_wcs, 2.0, 2.0)
    m = match_trails(det, cat, header, RATE, (NY, NX))
    assert m.star_id.shape == (n_trails,)
    if n_trails:
        assert (m.star_id.astype(str) == truth[:n_trails]).all()
        assert m.refined
    else:
        assert not m.refined and m.n_matched == 0 and m.notes


def test_brightness_breaks_a_positional_tie():
    true_wcs = decam_like_wcs(NX, NY)
    cat = _catalogue(400, 5, true_wcs)
    det, truth = _detections(cat, true_wcs, 6)
    # Add a faint star 1.2 px from each of the first 20 trails' stars: position alone is
    # ambiguous at a 2 px radius, brightness is not.
    idx = np.flatnonzero(np.isin(cat.star_id, truth[:20]))
    xs, ys = drift_positions(true_wcs, cat.ra[idx], cat.dec[idx], 0.0, RATE)
    ra2, dec2 = true_wcs.all_pix2world(xs + 0.5, ys + 1.1, 0)
    extra = Catalogue(star_id=np.array([f"X{i}" for i in range(idx.size)]),
                      ccd=np.full(idx.size, "S4"), ra=ra2, dec=dec2,
                      mag_g=cat.mag_g[idx] + 4, mag_r=cat.mag_r[idx] + 4,
                      magerr_g=cat.magerr_g[idx], magerr_r=cat.magerr_r[idx], g_r=cat.g_r[idx],
                      flux_g=cat.flux_g[idx], flux_r=cat.flux_r[idx],
                      saturated=cat.saturated[idx], reference=cat.reference[idx], field="F")
    both = Catalogue(field="F", **{c: np.concatenate([getattr(cat, c), getattr(extra, c)])
                                   for c in Catalogue.COLUMNS})
    m = match_trails(det, both, true_wcs, RATE, (NY, NX))
    assert (m.star_id.astype(str) == truth).all()


def test_affine_folded_into_wcs_is_exact():
    w = decam_like_wcs(NX, NY)
    a = np.array([[1.0002, -0.0003], [0.0003, 1.0001]])
    t = np.array([3.2, -1.7])
    w2 = apply_affine_to_wcs(w, a, t)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, NX, 50), rng.uniform(0, NY, 50)
    ra, dec = w.all_pix2world(x, y, 0)
    x2, y2 = w2.all_world2pix(ra, dec, 0)
    q = (np.column_stack([x + 1, y + 1]) @ a.T + t) - 1
    np.testing.assert_allclose(np.column_stack([x2, y2]), q, atol=1e-6)


def test_detection_only_mode_names_trails_by_position():
    w = decam_like_wcs(NX, NY)
    cat = _catalogue(100, 7, w)
    det, _ = _detections(cat, w, 8)
    m = identify_by_position(det, w, "F")
    assert m.mode == "detection-only" and not m.refined and m.notes
    assert all(s.startswith("F-new-") for s in m.star_id)
    assert len(set(m.star_id)) == det.n
    assert (m.cat_index == -1).all()
