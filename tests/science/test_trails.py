"""Trail detection: the fast matched filter against a direct one, noise calibration, positions."""

from __future__ import annotations

import numpy as np
import pytest

from driftwatch.errors import ScienceError
from driftwatch.science.background import Background, measure_background
from driftwatch.science.geometry import DriftGeometry, drift_geometry
from driftwatch.science import trails
from driftwatch.science.trails import (detect_trails, trail_filter_map, trail_filter_reference)

from ._synth import decam_like_wcs, render

SIGMA = 4.5 / 2.3548
FWHM = 4.5


def _geometry(length: float = 38.0) -> DriftGeometry:
    return DriftGeometry(dx_dt=-length / 20.0, dy_dt=0.0, exptime=20.0)


@pytest.mark.parametrize("bin_x", [1, 2, 4])
def test_fast_filter_equals_direct_convolution(bin_x):
    rng = np.random.default_rng(1)
    img = render(60, 160, [(120.0, 82.0, 30.3, 5000.0), (60.0, 22.0, 12.0, 900.0)],
                 sigma=SIGMA, seed=2)
    mask = np.zeros(img.shape, dtype=bool)
    mask[:, 70] = True                       # a bad column
    mask[rng.integers(0, 60, 20), rng.integers(0, 160, 20)] = True
    # A known smooth sky and noise (the filter's arithmetic is under test, not sep): the sky
    # and the noise vary slowly along x (a gradient along y would differ at the top and
    # bottom rows, where the fast path takes the sky of the centre row).
    yy, xx = np.mgrid[0:60, 0:160]
    back = (700.0 + 0.0 * yy + 0.05 * xx).astype(np.float32)
    rms = np.broadcast_to(14.0 + 0.01 * np.arange(160, dtype=np.float32), (60, 160)).copy()
    img = img + back - 700.0
    bg = Background(back=back, rms=rms, step=1, shape=(60, 160), global_back=700.0,
                    global_rms=14.0, box=32)
    mask[:, 70] = False                      # masked pixels take the global sky in the fast
    mask[:, :] = False                       # path and the local one in the direct path
    geom = _geometry()
    fast = trail_filter_map(img, bg, mask, geom, FWHM, bin_x=bin_x)
    width = int(round((fast.x_of_col[0] + 0.5) * 2))   # box width = b * lb
    ref = trail_filter_reference(img, bg.full_back(), bg.full_rms(), mask, width, FWHM)
    starts = np.rint(fast.x_of_col - (width - 1) / 2.0).astype(int)
    # The fast path takes the noise at the box centre, the direct one pixel by pixel: equal
    # to first order for a smooth noise map.
    np.testing.assert_allclose(fast.snr, ref[:, starts], rtol=1e-3, atol=2e-3)
    assert np.argmax(fast.snr) // fast.snr.shape[1] == 30


def test_fast_filter_gives_masked_pixels_zero_weight():
    img = render(60, 160, [], sigma=SIGMA, seed=3)
    mask = np.zeros(img.shape, dtype=bool)
    mask[:, 70:73] = True
    spoiled = img.copy()
    spoiled[mask] = 1e6                      # a bleed: must change nothing
    bg = measure_background(img, mask, box=32, step=1)
    a = trail_filter_map(img, bg, mask, _geometry(), FWHM).snr
    b = trail_filter_map(spoiled, bg, mask, _geometry(), FWHM).snr
    np.testing.assert_array_equal(a, b)


def test_unmasked_non_finite_pixels_are_masked():
    # a NaN the mask missed (in a block in the middle of the map, and in the top rows whose
    # truncated filter is corrected last) makes the map non-finite: it is filtered again
    # with that pixel masked
    img = render(200, 160, [(120.0, 82.0, 100.3, 5000.0)], sigma=SIGMA, seed=3)
    mask = np.zeros(img.shape, dtype=bool)
    bg = measure_background(img, mask, box=32, step=1)
    for y, x in ((100, 40), (1, 30)):
        spoiled = img.copy()
        spoiled[y, x] = np.nan
        masked = mask.copy()
        masked[y, x] = True
        got = trail_filter_map(spoiled, bg, mask, _geometry(), FWHM).snr
        np.testing.assert_array_equal(got, trail_filter_map(img, bg, masked, _geometry(),
                                                            FWHM).snr)


def test_pure_noise_gives_almost_no_detection_and_calibrated_noise():
    img = render(1024, 1024, [], sigma=SIGMA, seed=7)
    bg = measure_background(img, box=128, step=1)
    det = detect_trails(img, _geometry(), bg, fwhm_px=FWHM, threshold_sigma=5.0)
    assert det.n <= 2
    # The filtered noise predicted from the noise map matches the measured one to a few %
    # (the rest is the sky estimate's own noise, correlated over the kernel).
    assert 0.95 < det.noise_scale < 1.1
    # A lower threshold gives the Gaussian tail's count: ~ P(>3 sigma) per independent element.
    det3 = detect_trails(img, _geometry(), bg, fwhm_px=FWHM, threshold_sigma=3.0)
    assert 2 < det3.n < 200


def test_positions_are_sub_pixel_and_one_per_trail():
    rng = np.random.default_rng(4)
    wcs = decam_like_wcs(400, 600)
    geom = drift_geometry(wcs, 0.5, 20.0)
    n = 25
    x0 = rng.uniform(60, 380, n)
    y0 = np.linspace(15, 585, n) + rng.uniform(-3, 3, n)
    flux = rng.uniform(20000, 60000, n)
    x1 = x0 + geom.dx_dt * 20.0
    img = render(600, 400, list(zip(x0, x1, y0, flux)), sigma=SIGMA, seed=5)
    bg = measure_background(img, box=64, step=1)
    det = detect_trails(img, geom, bg, fwhm_px=FWHM, gain=4.0)
    assert det.n == n
    order = np.argsort(det.y0)
    assert np.all(np.abs(det.y0[order] - y0) < 0.1)
    assert np.all(np.abs(det.x0[order] - x0) < 0.3)
    assert np.median(np.abs(det.x0[order] - x0)) < 0.1
    assert np.all(np.abs(det.x1[order] - x1) < 0.3)
    assert np.all(np.abs(det.flux[order] / flux - 1) < 0.05)
    assert det.snr.dtype == np.float32 and not det.saturated.any()


def test_bleed_and_cosmic_ray_do_not_make_trails_but_saturated_star_is_located():
    geom = _geometry()
    img = render(300, 300, [(200.0, 162.0, 150.2, 3.0e6)], sigma=SIGMA, seed=8)
    sat_level = 30000.0
    sat = img >= sat_level
    sat[:, 178:184] |= np.abs(np.arange(300) - 150)[:, None] < 120   # bleed along columns
    img[sat] = sat_level
    img[60, 40:43] += 3000.0                       # an unflagged cosmic ray
    mask = sat.copy()
    bg = measure_background(img, mask, box=64, step=1)
    det = detect_trails(img, geom, bg, fwhm_px=FWHM, mask=mask, sat_mask=sat)
    assert det.n == 1
    assert det.saturated[0]
    assert abs(det.y0[0] - 150.2) < 1.0 and abs(det.x0[0] - 200.0) < 3.0
    assert det.n_compact >= 1


def test_bad_input_raises_science_error():
    img = render(100, 200, [], sigma=SIGMA, seed=1)
    bg = measure_background(img, box=32, step=1)
    with pytest.raises(ScienceError):
        detect_trails(img, _geometry(), bg, fwhm_px=0.0)
    with pytest.raises(ScienceError):
        detect_trails(img, _geometry(length=500.0), bg, fwhm_px=FWHM)
    with pytest.raises(ScienceError):
        detect_trails(img, DriftGeometry(0.0, 0.0, 20.0), bg, fwhm_px=FWHM)


def test_trail_at_an_angle_uses_the_fft_path():
    ang = np.radians(30.0)
    geom = DriftGeometry(dx_dt=-1.9 * np.cos(ang), dy_dt=1.9 * np.sin(ang), exptime=20.0)
    img = render(200, 200, [], sigma=SIGMA, seed=3)
    # Build the slanted trail from many point sources along the path.
    from ._synth import add_trail
    xs0, ys0 = 120.0, 80.0
    for k in range(80):
        t = (k + 0.5) / 80 * 20.0
        add_trail(img, xs0 + geom.dx_dt * t, xs0 + geom.dx_dt * t + 1e-3,
                  ys0 + geom.dy_dt * t, 20000.0 / 80, SIGMA)
    bg = measure_background(img, box=32, step=1)
    det = detect_trails(img, geom, bg, fwhm_px=FWHM)
    assert det.method == "fft" and det.n == 1
    assert abs(det.x0[0] - xs0) < 1.5 and abs(det.y0[0] - ys0) < 1.5


def test_unflagged_cosmic_ray_tracks_are_not_trails_but_a_trail_they_hit_stays():
    img = render(300, 300, [(200.0, 162.0, 200.3, 20000.0)], sigma=SIGMA, seed=9)
    img[80, 100:112] += 1500.0                 # a 12 px track along x, sharper than the PSF
    img[200, 180:183] += 4000.0                # a hit on the trail
    bg = measure_background(img, box=64, step=1)
    det = detect_trails(img, _geometry(), bg, fwhm_px=FWHM)
    assert det.n == 1
    assert abs(det.y0[0] - 200.3) < 0.3
    assert det.masked[0]                       # its aperture holds cosmic-ray pixels
    assert det.n_compact >= 1


def test_collinear_neighbours_are_split_into_two_trails(monkeypatch):
    # Two stars on one row whose trails overlap along the drift give one filter maximum; the
    # along-trail profile shows the second trail beyond the first one's end.
    rng = np.random.default_rng(12)
    geom = _geometry()
    L = geom.length_px
    singles = [(x, x - L, y, f) for x, y, f in zip(rng.uniform(300, 560, 24),
                                                   np.linspace(20, 880, 24) + rng.uniform(-2, 2, 24),
                                                   rng.uniform(20000, 60000, 24))]
    pairs = []
    for y, (x, dx, f1, f2) in zip((57.3, 417.6, 777.2),
                                  ((150.2, 12.0, 30000.0, 9000.0), (120.7, 18.5, 20000.0, 20000.0),
                                   (140.4, 25.0, 40000.0, 12000.0))):
        pairs.append((x, dx, y))
        singles += [(x, x - L, y, f1), (x + dx, x + dx - L, y, f2)]
    img = render(900, 600, singles, sigma=SIGMA, seed=3)
    bg = measure_background(img, box=64, step=1)
    det = detect_trails(img, geom, bg, fwhm_px=FWHM, gain=4.0)
    assert det.n == len(singles)
    # the two-trail search by blocks of detections: one detection per block, the same trails
    monkeypatch.setattr(trails, "_PAIR_BLOCK", 1)
    by_one = detect_trails(img, geom, bg, fwhm_px=FWHM, gain=4.0)
    for name in ("x0", "y0", "snr", "flux"):
        np.testing.assert_array_equal(getattr(by_one, name), getattr(det, name))
    for x, dx, y in pairs:
        on_row = np.flatnonzero(np.abs(det.y0 - y) < 1.0)
        assert on_row.size == 2
        x0 = np.sort(det.x0[on_row])
        # both to a few tenths of a pixel (the fainter one's position rests on its far end
        # alone where it overlaps the brighter trail: S/N ~ 3 per sample at 6,000 ADU, ~1 px)
        assert abs(x0[0] - x) < 0.3
        assert abs(x0[1] - (x + dx)) < 0.5


def test_gap_filling_interpolates_masked_samples_row_by_row():
    from driftwatch.science.trails import _fill_gaps

    prof = np.array([[0.0, 10.0, 0.0, 0.0, 40.0, 50.0], [1.0, 2.0, 0.0, 4.0, 5.0, 6.0],
                     [5.0, 0.0, 7.0, 8.0, 9.0, 0.0]])
    bad = np.array([[False, False, True, True, False, False], [False] * 6,
                    [False, True, False, False, False, True]])
    out = _fill_gaps(prof, bad)
    np.testing.assert_allclose(out[0], [0.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    np.testing.assert_array_equal(out[1], prof[1])                       # nothing to fill
    np.testing.assert_allclose(out[2], [5.0, 6.0, 7.0, 8.0, 9.0, 9.0])   # the end: nearest


def test_a_masked_column_does_not_hide_a_collinear_neighbour():
    # A bad column through a bright trail is a deep notch in its along-trail profile; filled
    # from its neighbours, it neither hides a faint collinear neighbour nor invents one.
    rng = np.random.default_rng(13)
    geom = _geometry()
    L = geom.length_px
    trails = [(x, x - L, y, f) for x, y, f in zip(rng.uniform(100, 560, 24),
                                                  np.linspace(20, 880, 24) + rng.uniform(-2, 2, 24),
                                                  rng.uniform(50000, 100000, 24))]
    trails += [(240.3, 240.3 - L, 430.4, 200000.0), (256.0, 256.0 - L, 430.4, 12000.0)]
    img = render(900, 600, trails, sigma=SIGMA, seed=4)
    mask = np.zeros(img.shape, dtype=bool)
    mask[:, 225] = True
    bg = measure_background(img, mask=mask, box=64, step=1)
    det = detect_trails(img, geom, bg, fwhm_px=FWHM, mask=mask, gain=4.0)
    assert det.n == len(trails)
    on_row = np.sort(det.x0[(np.abs(det.y0 - 430.4) < 1.0) & (det.x0 < 300)])
    assert on_row.size == 2 and np.allclose(on_row, [240.3, 256.0], atol=0.5)


@pytest.mark.parametrize("shape", [(40, 33), (1, 7), (6, 1), (150, 5)])
def test_local_maxima_is_the_brute_force_one(shape) -> None:
    """Above the threshold, above the earlier 8-neighbours and at least the later ones
    (ties go to the lower flat index; a neighbour beyond the edge is the pixel itself)."""
    from driftwatch.science.trails import _local_maxima

    rng = np.random.default_rng(3)
    snr = rng.integers(0, 4, shape).astype(np.float32)   # many ties, flat tops
    snr[rng.random(shape) < 0.05] = np.nan
    ny, nx = shape
    want = []
    for i in range(ny * nx):
        r, c = divmod(i, nx)
        v = snr[r, c]
        if not v > 1.0:
            continue
        ok = True
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = min(max(r + dr, 0), ny - 1), min(max(c + dc, 0), nx - 1)
                j = rr * nx + cc
                nb = snr[rr, cc]
                ok &= bool(v > nb or (v == nb and j >= i))
        if ok:
            want.append(i)
    np.testing.assert_array_equal(_local_maxima(snr, 1.0), np.array(want, dtype=np.intp))


@pytest.mark.parametrize("bin_x", [1, 2, 3])
def test_box_gauss_rows_by_blocks_is_the_whole_image_filter(bin_x) -> None:
    """Any block size (smaller than the halo, a partial last block, one block) gives the same
    numbers, those of the whole-image box and ``ndi.correlate1d`` to float32 rounding."""
    import scipy.ndimage as ndi

    from driftwatch.science.trails import _box_gauss_rows, _gauss_taps

    rng = np.random.default_rng(5)
    img = rng.normal(100.0, 10.0, (37, 50)).astype(np.float32)
    bad = rng.random(img.shape) < 0.05
    fill, lb = np.float32(95.0), 7
    taps = _gauss_taps(1.9)
    nb = img.shape[1] // bin_x
    binned = np.where(bad, fill, img)[:, :nb * bin_x].reshape(37, nb, bin_x).sum(axis=2)
    cs = np.cumsum(binned.astype(np.float64), axis=1)
    box = np.concatenate([cs[:, lb - 1:lb], cs[:, lb:] - cs[:, :nb - lb]], axis=1)
    want = ndi.correlate1d(box, taps.astype(np.float64), axis=0, mode="constant")
    got = {b: _box_gauss_rows(img, bad, fill, bin_x, lb, taps, block=b) for b in (1, 3, 8, 16, 64)}
    for b, out in got.items():
        np.testing.assert_array_equal(out, got[64], err_msg=f"block {b}")
    np.testing.assert_allclose(got[64], want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
