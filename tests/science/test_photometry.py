"""Optimal extraction: unbiased flux, honest errors, DQ flags, outliers, profile, neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from driftwatch.science.photometry import (
    FLAG_BLEND, FLAG_EDGE, FLAG_NODQ, FLAG_OUTLIER, LineProfile, extract_light_curves,
    extract_trails, footprint_owners, measure_profile,
    neighbour_contamination,
)
from tests.science._science2_synth import geometry, render

SIGMA = 1.8
GAIN, RN, SKY = 4.0, 7.0, 100.0


def _field(seed: int, n: int = 24, spacing: float = 24.0, light=None, noise: bool = True):
    g = geometry()
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(70, 180, n)
    y0 = np.arange(n) * spacing + 15 + rng.uniform(-0.5, 0.5, n)
    rate = 10 ** rng.uniform(2.7, 4.3, n)
    img = render((int(n * spacing + 30), 200), x0, y0, g, rate, SIGMA, sky=SKY, gain=GAIN,
                 read_noise=RN, rng=rng if noise else None, light=light)
    return g, x0, y0, rate, img


def test_flux_is_unbiased_and_errors_match_scatter():
    g, x0, y0, rate, img = _field(1)
    prof = LineProfile.gaussian_like(2.3548 * SIGMA)
    lc = extract_light_curves(img, x0, y0, g, profile=prof, sky=SKY, gain=GAIN, read_noise=RN)
    expected = rate * g.seconds_per_px
    interior = lc.good & (lc.coverage > 0.95)
    ratio = np.nanmedian(np.where(interior, lc.flux, np.nan) / expected[:, None], axis=1)
    assert np.all(np.abs(ratio - 1) < 0.02)
    pulls = ((lc.flux - expected[:, None]) / lc.err)[interior]
    assert 0.9 < np.std(pulls) < 1.1
    assert (lc.flags & FLAG_NODQ).all()
    # time runs with the drift: one sample per pixel, t = s * seconds_per_px
    np.testing.assert_allclose(np.diff(lc.t, axis=1), g.seconds_per_px, rtol=1e-9)


def test_dq_codes_become_flags_and_bad_core_pixels_make_samples_unusable():
    g, x0, y0, rate, img = _field(2, noise=False)
    prof = LineProfile.gaussian_like(2.3548 * SIGMA)
    dq = np.zeros(img.shape, np.uint8)
    i, k = 3, 15
    cx, cy = int(round(x0[i] + g.dx_dt * k * g.seconds_per_px)), int(round(y0[i]))
    dq[cy, cx] = 3            # saturated, in the core of sample k
    dq[cy + 2, cx - 4] = 5    # a flagged cosmic ray beside the core, two samples later
    lc = extract_light_curves(img, x0, y0, g, profile=prof, sky=SKY, gain=GAIN, read_noise=RN,
                              dq=dq)
    assert lc.flags[i, k] & (1 << 3)
    assert not lc.good[i, k]
    assert lc.flags[i, k + 4] & (1 << 5)
    assert lc.good[i, k + 4]  # the cosmic-ray pixel only loses its weight
    assert not (lc.flags[i] & FLAG_NODQ).any()
    other = np.delete(np.arange(len(x0)), i)
    assert not (lc.flags[other] & ((1 << 3) | (1 << 5))).any()


def test_unflagged_cosmic_ray_on_the_trail_is_rejected():
    g, x0, y0, rate, img = _field(3)
    prof = LineProfile.gaussian_like(2.3548 * SIGMA)
    clean = extract_light_curves(img, x0, y0, g, profile=prof, sky=SKY, gain=GAIN,
                                 read_noise=RN)
    i, k = 5, 20
    cx, cy = int(round(clean.x[i, k])), int(round(y0[i])) + 1
    hit = img.copy()
    hit[cy, cx] += 3000.0
    lc = extract_light_curves(hit, x0, y0, g, profile=prof, sky=SKY, gain=GAIN, read_noise=RN)
    assert lc.flags[i, k] & FLAG_OUTLIER
    assert abs(lc.flux[i, k] - clean.flux[i, k]) < 3 * lc.err[i, k]


def test_profile_fit_recovers_the_psf_width():
    g, x0, y0, rate, img = _field(4, noise=True)
    prof = measure_profile(img, x0, y0, g, np.full(len(x0), SKY), fwhm_guess=3.5)
    assert prof.fwhm == pytest.approx(2.3548 * SIGMA, rel=0.08)
    assert prof.beta >= 6  # a Gaussian PSF: the Moffat fit goes to large beta


def test_neighbour_light_is_modelled_and_subtracted():
    g = geometry()
    # a faint star 6 px from a bright one, overlapping half of its trail; three isolated
    # stars for the profile fit
    x0 = np.array([120.0, 100.0, 110.0, 130.0, 115.0])
    y0 = np.array([40.3, 46.1, 80.2, 110.7, 140.4])
    rate = np.array([400.0, 20000.0, 5000.0, 5000.0, 5000.0])
    img = render((170, 200), x0, y0, g, rate, SIGMA, sky=SKY, gain=GAIN, read_noise=RN,
                 rng=np.random.default_rng(5))
    labels = footprint_owners(x0, y0, g, 3 * SIGMA, img.shape)
    lc, prof, con = extract_trails(img, x0, y0, g, fwhm_guess=2.3548 * SIGMA,
                                   flux_guess=rate * g.exptime, sky=SKY, gain=GAIN,
                                   read_noise=RN, labels=labels)
    assert con.fraction[0] > 0.1 and (con.fraction[1:] < 0.01).all()
    expected = rate[0] * g.seconds_per_px
    usable = lc.good[0] & (lc.coverage[0] > 0.95)
    assert usable.sum() >= 5
    assert abs(np.median(lc.flux[0][usable]) / expected - 1) < 0.05
    # where the neighbour overlaps, its light is mostly removed (without: tens of per cent)
    raw = extract_light_curves(img, x0, y0, g, profile=prof, sky=SKY, gain=GAIN,
                               read_noise=RN, labels=labels)
    over = (con.flux[0] > 0.2 * expected) & (lc.coverage[0] > 0.95)
    assert over.sum() >= 5
    err_raw = abs(np.median(raw.flux[0][over]) / expected - 1)
    err_sub = abs(np.median(lc.flux[0][over]) / expected - 1)
    assert err_raw > 0.2 and err_sub < 0.3 * err_raw
    # samples where the model is too uncertain are flagged, never silently used
    assert ((lc.flags[0] & FLAG_BLEND) > 0).any() or usable.all()


def test_contamination_is_zero_for_isolated_trails():
    g = geometry()
    s = np.arange(39, dtype=float)[None, :] + np.zeros((2, 1))
    con = neighbour_contamination(np.array([50.0, 150.0]), np.array([20.0, 200.0]), g,
                                  LineProfile.moffat(4.5, 3.0), np.array([100.0, 100.0]), s, 7)
    assert con.n_pairs == 0 and not con.flux.any()


def test_trail_off_the_ccd_is_flagged_edge():
    g, x0, y0, rate, img = _field(6, noise=False)
    prof = LineProfile.gaussian_like(2.3548 * SIGMA)
    lc = extract_light_curves(img, np.array([20.0]), np.array([30.0]), g, profile=prof,
                              sky=SKY, gain=GAIN, read_noise=RN)
    assert (lc.flags[0, -5:] & FLAG_EDGE).all() and not lc.good[0, -5:].any()


def test_extraction_by_blocks_of_trails_is_the_same(monkeypatch):
    """Trails are extracted in blocks (cache-sized temporaries): the split changes no bit."""
    import driftwatch.science.photometry as ph

    g, x0, y0, rate, img = _field(7, n=24, spacing=9.0)   # close trails: blends, labels
    prof = LineProfile.gaussian_like(2.3548 * SIGMA)
    labels = footprint_owners(x0, y0, g, 3 * SIGMA, img.shape)
    dq = np.zeros(img.shape, np.uint8)
    dq[40:44, 100:103] = 5
    sky = SKY + np.arange(x0.size)
    nb = np.random.default_rng(3).uniform(0, 5, (x0.size, ph.n_samples(g), 2 * 5 + 1))
    kw = dict(profile=prof, sky=sky, gain=GAIN, read_noise=RN, dq=dq, labels=labels,
              half_width=5, neighbours=nb)
    whole = extract_light_curves(img, x0, y0, g, **kw)
    monkeypatch.setattr(ph, "_EXTRACT_BLOCK", 5)
    blocks = extract_light_curves(img, x0, y0, g, **kw)
    assert ((whole.flags & FLAG_BLEND) > 0).any()
    for f in ("flux", "err", "flags", "good", "t", "x", "y", "chi2", "s", "coverage", "shift",
              "shift_err"):
        np.testing.assert_array_equal(getattr(blocks, f), getattr(whole, f), err_msg=f)


@pytest.mark.parametrize("dx_dt, dy_dt", [(-1.9, 0.0), (1.9, 0.005), (-1.9, -0.01), (1.2, 1.3)])
def test_grid_reader_equals_direct_indexing(dx_dt, dy_dt):
    """Block reads of rectangular trail grids give the same pixels as direct indexing."""
    from driftwatch.science.geometry import DriftGeometry
    from driftwatch.science.photometry import grid_reader, trail_grid

    g = DriftGeometry(dx_dt=dx_dt, dy_dt=dy_dt, exptime=20.0)
    rng = np.random.default_rng(11)
    shape = (120, 150)
    img = rng.normal(size=shape).astype(np.float32)
    # trails inside, across every edge and off the image
    x0 = np.r_[rng.uniform(45, 105, 20), [2.0, 148.0, 75.0, 75.0, -30.0, 170.0]]
    y0 = np.r_[rng.uniform(10, 110, 20), [60.0, 60.0, 1.2, 118.7, 60.0, 60.0]]
    grid = trail_grid(x0, y0, g, 6, shape)
    want = img[grid.iy.clip(0, shape[0] - 1), grid.ix.clip(0, shape[1] - 1)]
    np.testing.assert_array_equal(grid_reader(grid, shape)(img), want)


def test_footprint_owners_mark_each_pixel_by_the_trails_covering_it():
    # overlapping and isolated trails: the owner image holds the one trail covering a pixel,
    # the sentinel exactly where several do (against each trail painted on its own), and
    # extraction flags the overlapping samples FLAG_BLEND
    g = geometry()
    x0 = np.array([120.0, 100.0, 110.0, 130.0, 115.0, 104.0])
    y0 = np.array([40.3, 46.1, 80.2, 110.7, 140.4, 43.0])
    rate = np.array([400.0, 20000.0, 5000.0, 5000.0, 5000.0, 3000.0])
    img = render((170, 200), x0, y0, g, rate, SIGMA, sky=SKY, gain=GAIN, read_noise=RN,
                 rng=np.random.default_rng(5))
    owners = footprint_owners(x0, y0, g, 3 * SIGMA, img.shape)
    alone = np.stack([footprint_owners(x0[i:i + 1], y0[i:i + 1], g, 3 * SIGMA, img.shape) > 0
                      for i in range(x0.size)])
    count = alone.sum(axis=0)
    several = count >= 2
    assert several.any()
    assert (owners[several] == np.iinfo(owners.dtype).max).all()
    assert np.array_equal(owners[count == 0], np.zeros((count == 0).sum(), owners.dtype))
    once = count == 1
    assert np.array_equal(owners[once], (np.argmax(alone, axis=0) + 1)[once])
    kw = dict(profile=LineProfile.moffat(2.3548 * SIGMA, 3.0), sky=SKY, gain=GAIN,
              read_noise=RN)
    lc = extract_light_curves(img, x0, y0, g, labels=owners, **kw)
    blended = (lc.flags & FLAG_BLEND) != 0
    assert blended[[0, 1, 5]].any(axis=1).all()          # the three overlapping trails
    assert not blended[[2, 3, 4]].any()                  # the isolated ones
