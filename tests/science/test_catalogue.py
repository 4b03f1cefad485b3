"""Reference catalogue: source measurement, g/r cross-match, reference flags, stable IDs."""

from __future__ import annotations

import numpy as np
import pytest

from driftwatch.errors import ScienceError
from driftwatch.science.background import measure_background
from driftwatch.science.catalogue import (FALLBACK_ZP, concat_catalogues, measure_sources,
                                          merge_bands, star_ids)

from ._synth import add_trail, decam_like_wcs

SIGMA = 4.0 / 2.3548


def _pointed(stars, shape=(400, 300), seed=0, sky=100.0, noise=6.0):
    """A pointed image: Gaussian stars at (x, y, flux)."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape)
    for x, y, f in stars:
        add_trail(img, x, x + 1e-3, y, f, SIGMA)
    return (img + sky + rng.normal(0, noise, shape)).astype(np.float32)


def _stars(n=40, seed=1, shape=(400, 300)):
    rng = np.random.default_rng(seed)
    ny, nx = shape
    # On a grid with jitter, so every star is isolated.
    gx, gy = np.meshgrid(np.linspace(25, nx - 25, 5), np.linspace(25, ny - 25, n // 5))
    x = gx.ravel() + rng.uniform(-2, 2, gx.size)
    y = gy.ravel() + rng.uniform(-2, 2, gy.size)
    f = 10 ** rng.uniform(3.5, 5.0, x.size)
    return x, y, f


def test_measure_sources_positions_magnitudes_and_zero_point():
    x, y, f = _stars()
    img = _pointed(zip(x, y, f))
    wcs = decam_like_wcs(300, 400)
    bg = measure_background(img, box=64, step=1)
    src = measure_sources(img, wcs, bg, fwhm_px=4.0, exptime=30.0, band="r", magzpt=25.5,
                          gain=4.0)
    assert src.n == x.size and src.zp_source == "MAGZPT"
    order = np.lexsort((np.rint(src.x / 20), np.rint(src.y / 20)))
    truth = np.lexsort((np.rint(x / 20), np.rint(y / 20)))
    np.testing.assert_allclose(src.x[order], x[truth], atol=0.1)
    np.testing.assert_allclose(src.y[order], y[truth], atol=0.1)
    mag_true = 25.5 - 2.5 * np.log10(f[truth] / 30.0)
    assert np.all(np.abs(src.mag[order] - mag_true) < 5 * src.mag_err[order] + 0.01)
    ra, dec = wcs.all_pix2world(x[truth], y[truth], 0)
    assert np.max(np.abs(src.dec[order] - dec)) * 3600 < 0.05
    src2 = measure_sources(img, wcs, bg, fwhm_px=4.0, exptime=30.0, band="r")
    assert src2.zp_source == "fallback" and src2.zp == FALLBACK_ZP


def test_merge_bands_is_tolerance_bounded_and_flags_references():
    x, y, f = _stars()
    wcs = decam_like_wcs(300, 400)
    g_img = _pointed(zip(x, y, f * 0.7), seed=2)
    # r misses the first star and has an extra one 3" (11 px) from the second.
    r_list = list(zip(x[1:], y[1:], f[1:])) + [(x[1] + 11.0, y[1], 3000.0)]
    r_img = _pointed(r_list, seed=3)
    g = measure_sources(g_img, wcs, measure_background(g_img, box=64, step=1), fwhm_px=4.0,
                        exptime=30.0, band="g", magzpt=25.0)
    r = measure_sources(r_img, wcs, measure_background(r_img, box=64, step=1), fwhm_px=4.0,
                        exptime=30.0, band="r", magzpt=25.0)
    cat = merge_bands(g, r, ccd="S4", field_name="F1", match_arcsec=1.0, saturate_adu=40000,
                      min_snr=20.0, isolation_along_arcsec=5.0, isolation_across_arcsec=2.0)
    assert cat.n == x.size + 1
    both = np.isfinite(cat.g_r)
    assert both.sum() == x.size - 1
    err = np.hypot(cat.magerr_g[both], cat.magerr_r[both])
    assert np.all(np.abs(cat.g_r[both] + 2.5 * np.log10(0.7)) < 5 * err + 0.01)
    assert abs(np.median(cat.g_r[both]) + 2.5 * np.log10(0.7)) < 0.02
    assert cat.reference.sum() >= x.size - 6          # bright, isolated, both bands
    assert not cat.reference[~both].any()
    assert len(set(cat.star_id)) == cat.n and all(s.startswith("F1-") for s in cat.star_id)
    # Stable: the same measurements give the same IDs, in the same order.
    again = merge_bands(g, r, ccd="S4", field_name="F1", match_arcsec=1.0)
    np.testing.assert_array_equal(cat.star_id, again.star_id)


def test_star_ids_are_deterministic_and_collisions_get_suffixes():
    ids = star_ids("F", np.array([10.0, 10.000001, 20.0]), np.array([-5.0, -5.0, 1.0]),
                   order_key=np.array([15.0, 14.0, 10.0]))
    assert ids[1] == "F-010.00000-05.00000"
    assert ids[0] == "F-010.00000-05.00000~2"
    assert ids[2] == "F-020.00000+01.00000"
    ids2 = star_ids("F", np.array([10.0, 10.000001, 20.0]), np.array([-5.0, -5.0, 1.0]),
                    order_key=np.array([15.0, 14.0, 10.0]))
    np.testing.assert_array_equal(ids, ids2)


def test_empty_image_gives_empty_catalogue_and_bad_input_raises():
    rng = np.random.default_rng(0)
    img = rng.normal(100, 5, (200, 200)).astype(np.float32)
    wcs = decam_like_wcs(200, 200)
    bg = measure_background(img, box=50, step=1)
    s = measure_sources(img, wcs, bg, fwhm_px=4.0, exptime=30.0, band="g")
    assert s.n == 0
    cat = merge_bands(s, s, ccd="S1", field_name="F")
    assert cat.n == 0
    assert concat_catalogues([cat], "F").n == 0
    with pytest.raises(ScienceError):
        measure_sources(img, wcs, bg, fwhm_px=4.0, exptime=0.0, band="g")
