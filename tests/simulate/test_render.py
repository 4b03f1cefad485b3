"""The renderer's physics, checked against its own truth (small CCDs, seeded)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from driftwatch.io.decam import CP_DQ
from driftwatch.science.geometry import drift_positions
from driftwatch.simulate.focalplane import ccd_wcs
from driftwatch.simulate.generate import StarCatalogue, quick_scene
from driftwatch.simulate.render import moffat_alpha, render_ccd
from driftwatch.simulate.scene import Brightening, RenderOptions, paczynski_magnification

SHAPE = (160, 140)
QUIET = RenderOptions(noise=False, cosmics=False, bad_columns=False, sky=False)
STEADY = dataclasses.replace(QUIET, atmosphere=False, scintillation=False)


def one_star(x: float = 90.3, y: float = 80.6, vr: float = 17.0, shape=SHAPE, **kw):
    wcs = ccd_wcs("N4", 150.0, -20.0, shape)
    ra, dec = wcs.all_pix2world([x], [y], 0)
    stars = StarCatalogue(np.array([11]), ra, dec, np.array([vr + 0.5]), np.array([vr - 0.1]),
                          np.array([vr]))
    scene, _ = quick_scene(shape=shape, stars=stars, seed=5, **kw)
    return dataclasses.replace(scene, n_bad_columns=0, cosmic_rate_cm2_s=0.0)


def moments(img: np.ndarray) -> tuple[float, float, float, float]:
    yy, xx = np.indices(img.shape)
    s = img.sum()
    cx, cy = (img * xx).sum() / s, (img * yy).sum() / s
    return cx, cy, (img * (xx - cx) ** 2).sum() / s, (img * (yy - cy) ** 2).sum() / s


def test_trail_declination_change_is_rate_times_exptime() -> None:
    scene = one_star()
    res = render_ccd(scene, STEADY)
    t = res.trails.iloc[0]
    (ra0, ra1), (dec0, dec1) = scene.wcs.all_pix2world([t.x0, t.x1], [t.y0, t.y1], 0)
    ddec = (dec1 - dec0) * 3600.0
    assert ddec == pytest.approx(scene.drift_rate_arcsec_s * scene.exptime, rel=0.02)
    assert abs(ra1 - ra0) * 3600 * math.cos(math.radians(dec0)) < 0.05
    # the rendered trail spans x0..x1: its half-maximum points along the row sit at the ends
    row = res.image[int(round(t.y0))].astype(float)
    half = row.max() / 2
    above = np.nonzero(row > half)[0]
    assert above.min() == pytest.approx(min(t.x0, t.x1), abs=1.0)
    assert above.max() == pytest.approx(max(t.x0, t.x1), abs=1.0)
    assert t.x1 < t.x0  # +Dec toward -x on DECam


def test_isolated_trail_flux_equals_rate_times_exptime() -> None:
    scene = one_star(vr=16.0)
    expected = float(scene.flux_adu_s[0]) * scene.exptime
    noiseless = render_ccd(scene, STEADY)
    assert noiseless.image.sum() == pytest.approx(expected, rel=1e-3)
    assert noiseless.trails.flux_adu.iloc[0] == pytest.approx(expected, rel=1e-6)
    # with sky, noise and the atmosphere: the sky-subtracted sum in a box matches the truth
    res = render_ccd(scene, RenderOptions(cosmics=False, bad_columns=False))
    t = res.trails.iloc[0]
    img = res.image.astype(float)
    box = img[int(t.y0) - 25:int(t.y0) + 26, int(t.x1) - 25:int(t.x0) + 26]
    sky = np.median(np.concatenate([img[:15].ravel(), img[-15:].ravel()]))
    assert box.sum() - sky * box.size == pytest.approx(t.flux_adu, rel=0.02)
    assert t.flux_adu == pytest.approx(expected, rel=0.1)  # transparency changes by a few %


def test_fast_renderer_matches_direct_reference() -> None:
    """A slow, obviously-correct sum of pixel-integrated Moffats at 2000 sub-steps."""
    scene = one_star(x=80.4, y=40.3, vr=17.0, shape=(80, 110), fwhm_px=4.0)
    fast = render_ccd(scene, STEADY).image.astype(float)
    n = 800
    t = (np.arange(n) + 0.5) * scene.exptime / n
    xs, ys = drift_positions(scene.wcs, scene.ra, scene.dec, t, scene.drift_rate_arcsec_s)
    alpha = moffat_alpha(4.0, 3.0)
    yy, xx = np.mgrid[20:61, 25:100]
    ref = np.zeros(yy.shape)
    sub = (np.arange(3) + 0.5) / 3 - 0.5
    w = float(scene.flux_adu_s[0]) * scene.exptime / n
    for xk, yk in zip(xs, ys):
        acc = 0.0
        for ox in sub:
            for oy in sub:
                r2 = ((xx + ox - xk) ** 2 + (yy + oy - yk) ** 2) / alpha ** 2
                acc = acc + (1 + r2) ** -3.0
        ref += w * acc / 9 * 2.0 / (math.pi * alpha ** 2)
    fast = fast[20:61, 25:100]
    peak = ref.max()
    assert np.max(np.abs(fast - ref)) < 0.01 * peak
    assert fast.sum() == pytest.approx(ref.sum(), rel=0.01)


def test_sky_noise_matches_gain_and_read_noise() -> None:
    scene, _ = quick_scene(shape=(400, 300), n_stars=0, seed=8)
    scene = dataclasses.replace(scene, n_bad_columns=0, cosmic_rate_cm2_s=0.0)
    res = render_ccd(scene)
    img = res.image.astype(float)
    # adjacent-pixel differences remove the sky level and its gentle gradient
    measured = np.std(np.diff(img, axis=1)) / math.sqrt(2)
    predicted = math.sqrt(scene.sky_adu * scene.gain + scene.read_noise_e ** 2) / scene.gain
    assert measured == pytest.approx(predicted, rel=0.03)
    assert res.sky_sigma_adu == pytest.approx(predicted, rel=0.01)
    assert np.mean(img) == pytest.approx(scene.sky_adu, rel=0.01)


def test_microlensing_event_at_truth_position_and_time() -> None:
    scene = one_star(vr=17.0)
    ev = Brightening(star_id=11, t_peak_s=7.3, duration_s=1.5, amplitude=0.4)
    with_event = dataclasses.replace(scene, brightenings=(ev,))
    a = render_ccd(with_event, STEADY)
    b = render_ccd(scene, STEADY)
    diff = a.image.astype(float) - b.image.astype(float)
    truth = a.events.iloc[0]
    assert truth.kind == "brightening" and truth.star_id == 11
    yp, xp = np.unravel_index(np.argmax(diff), diff.shape)
    assert abs(xp - truth.x) <= 1.0 and abs(yp - truth.y) <= 1.0
    # the truth position is the star's position at t_peak
    x, y = drift_positions(scene.wcs, scene.ra, scene.dec, ev.t_peak_s, scene.drift_rate_arcsec_s)
    assert truth.x == pytest.approx(x[0], abs=1e-6) and truth.y == pytest.approx(y[0], abs=1e-6)
    # its extra flux is the integral of A(t) - 1
    t = np.linspace(0, scene.exptime, 20001)
    extra = float(scene.flux_adu_s[0]) * np.trapezoid(
        paczynski_magnification(t, ev.t_peak_s, ev.amplitude, ev.duration_s) - 1, t)
    assert diff.sum() == pytest.approx(extra, rel=0.02)
    # and a brightening of a pointed image is not a trail feature: nothing at t_peak
    assert a.trails.flux_adu.iloc[0] > b.trails.flux_adu.iloc[0]


def test_paczynski_profile_amplitude_duration_symmetry() -> None:
    t = np.linspace(0, 20, 40001)
    a = paczynski_magnification(t, 9.0, 0.25, 2.0) - 1
    assert a.max() == pytest.approx(0.25, rel=1e-6)
    above = t[a >= 0.125]
    assert above.max() - above.min() == pytest.approx(2.0, abs=2e-3)
    np.testing.assert_allclose(paczynski_magnification(np.array([7.0]), 9.0, 0.25, 2.0),
                               paczynski_magnification(np.array([11.0]), 9.0, 0.25, 2.0))


def test_pointed_stars_round_drift_stars_trailed() -> None:
    pointed = render_ccd(one_star(drift=False), QUIET)
    _, _, sxx, syy = moments(pointed.image.astype(float))
    assert sxx / syy == pytest.approx(1.0, abs=0.05)
    drift = render_ccd(one_star(drift=True), QUIET)
    t = drift.trails.iloc[0]
    _, _, sxx, syy = moments(drift.image.astype(float))
    length = math.hypot(t.x1 - t.x0, t.y1 - t.y0)
    assert math.sqrt(12 * (sxx - syy)) == pytest.approx(length, rel=0.05)
    assert length == pytest.approx(0.5 * 20 / 0.2623, rel=0.03)


def test_dq_marks_saturation_bleed_bad_columns_and_cosmics() -> None:
    scene = one_star(vr=9.0, shape=(300, 140))
    scene = dataclasses.replace(scene, n_bad_columns=3, cosmic_rate_cm2_s=2.0)
    res = render_ccd(scene)
    dq, img = res.dq, res.image
    sat = dq == CP_DQ["saturated"]
    bleed = dq == CP_DQ["bleed"]
    t = res.trails.iloc[0]
    assert bool(t.saturated)
    assert sat.sum() > 10 and bleed.sum() > 10
    ys, xs = np.nonzero(sat)
    assert np.all(np.abs(ys - t.y0) < 30)                         # around the star
    assert np.all(img[sat] == np.float32(scene.saturate_adu))
    # bleeding runs along columns (the readout axis), above and below the saturated core
    bys, bxs = np.nonzero(bleed)
    assert set(bxs) <= set(xs)
    assert bys.max() > ys.max() and bys.min() < ys.min()
    assert img[dq != CP_DQ["bad"]].max() <= scene.saturate_adu  # hot columns may exceed
    bad_cols = np.nonzero((dq == CP_DQ["bad"]).any(axis=0))[0]
    assert len(bad_cols) == 3
    cosmics = res.events[res.events.kind == "cosmic"]
    assert len(cosmics) > 3
    flagged = cosmics[cosmics.dq_flagged.astype(bool)]
    assert len(flagged) >= 0.6 * len(cosmics)
    for _, c in flagged.iterrows():
        yy, xx = int(round(c.y)), int(round(c.x))
        window = dq[max(0, yy - 7):yy + 8, max(0, xx - 7):xx + 8]
        assert (window != 0).any()
    assert (dq == CP_DQ["cosmic"]).sum() > 0


def test_flash_is_round_and_streak_crosses_the_ccd() -> None:
    scene, _ = quick_scene(shape=(300, 200), n_stars=0, seed=3, n_flashes=1, n_streaks=1)
    res = render_ccd(scene, QUIET)
    ev = res.events.set_index("kind")
    streak = res.events[res.events.kind == "streak"].iloc[0]
    ends = [(streak.x_start, streak.y_start), (streak.x_end, streak.y_end)]
    on_edge = [min(x, y, 199 - x, 299 - y) < 1e-6 for x, y in ends]
    assert all(on_edge)
    flash = ev.loc["flash"]
    only_flash = render_ccd(dataclasses.replace(scene, streaks=()), QUIET).image.astype(float)
    yy, xx = int(round(flash.y)), int(round(flash.x))
    stamp = only_flash[yy - 15:yy + 16, xx - 15:xx + 16]
    cx, cy, sxx, syy = moments(stamp)
    assert sxx / syy == pytest.approx(1.0, abs=0.05)
    assert cx - 15 + xx == pytest.approx(flash.x, abs=0.1)
    assert stamp.sum() == pytest.approx(flash.amplitude, rel=0.02)


def test_render_is_deterministic() -> None:
    scene, _ = quick_scene(shape=(128, 96), n_stars=20, seed=4, n_brightenings=1, n_flashes=1)
    a, b = render_ccd(scene), render_ccd(scene)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.dq, b.dq)
    assert a.trails.equals(b.trails) and a.events.equals(b.events)
    other, _ = quick_scene(shape=(128, 96), n_stars=20, seed=5)
    assert not np.array_equal(render_ccd(other).image, a.image)


@pytest.mark.slow
def test_full_size_ccd() -> None:
    scene, stars = quick_scene(shape=(4094, 2046), n_stars=1000, seed=2, n_brightenings=2,
                               n_flashes=1, n_streaks=1)
    res = render_ccd(scene)
    assert res.image.shape == (4094, 2046) and res.image.dtype == np.float32
    assert res.image.dtype.isnative
    inside = res.trails[res.trails.on_ccd > 0.999]
    assert 800 < len(inside) < 1200
    assert res.trails.saturated.any()
