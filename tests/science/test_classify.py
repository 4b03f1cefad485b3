"""Source classification: flashes, cosmic rays, streaks, faint trail fragments, star trails."""

from __future__ import annotations

import numpy as np

from driftwatch.science.classify import (bin2x2, classify_sources, find_streaks, line_mask,
                                         line_pixels)
from tests.science._science2_synth import geometry, pix_gauss, render

SIG = 1.8
NOISE = float(np.sqrt(100 * 4 + 49) / 4)
#: total ADU of a point source of PSF-fit S/N 1
UNIT = NOISE * np.sqrt(4 * np.pi) * SIG


def _scene(seed: int, rate: float = 3000.0):
    g = geometry()
    rng = np.random.default_rng(seed)
    ny, nx = 420, 320
    x0 = rng.uniform(60, 290, 12)
    y0 = np.arange(12) * 30 + 15 + rng.uniform(-0.5, 0.5, 12)
    img = render((ny, nx), x0, y0, g, np.full(12, rate), SIG, sky=0.0, rng=None).astype(float)
    return g, rng, img, x0, y0


def _noisy(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    e = rng.poisson(np.clip((img + 100) * 4, 0, None)) + rng.normal(0, 7, img.shape)
    return (e / 4 - 100).astype(np.float32)


def _point(img: np.ndarray, x: float, y: float, flux: float) -> None:
    ny, nx = img.shape
    img += flux * np.outer(pix_gauss(np.arange(ny), y, SIG), pix_gauss(np.arange(nx), x, SIG))


def _near(src, x: float, y: float) -> int:
    return int(np.argmin(np.hypot(src.x - x, src.y - y)))


def test_flash_cosmic_ray_and_trails_are_told_apart():
    g, rng, img, x0, y0 = _scene(1)
    fx, fy = 160.4, 30.0 + 15.0                              # between two trails
    _point(img, fx, fy, 12 * UNIT)                           # a flash of PSF S/N ~12
    img[200 + 15, 31] += 500.0                               # a cosmic ray: two sharp pixels
    img[200 + 16, 31] += 300.0
    xc = x0 + g.dx_dt * g.exptime / 2
    src = classify_sources(_noisy(img, rng), NOISE, g, psf_sigma=SIG, trail_x=xc, trail_y=y0,
                           gain=4.0)
    j = _near(src, fx, fy)
    assert src.cls[j] == "point" and src.snr[j] > 8
    assert np.hypot(src.x[j] - fx, src.y[j] - fy) < 1.0
    assert src.cls[_near(src, 31, 215.5)] == "cosmic_ray"
    for x, y in zip(xc, y0):
        assert src.cls[_near(src, x, y)] == "trail"
    assert ((src.cls == "point") & (src.snr > 6)).sum() == 1


def test_flash_on_a_trail_is_found_and_the_trail_kept():
    g, rng, img, x0, y0 = _scene(5, rate=300.0)            # trails of S/N ~60
    xc = x0 + g.dx_dt * g.exptime / 2
    # flashes that merge with a trail's light: on its line (far brighter than the star under
    # it) and beside it (4.5 px across, about as bright as the star there)
    on = (xc[3] + 5.0, y0[3])
    beside = (xc[7] - 6.0, y0[7] + 4.5)
    _point(img, *on, 200 * UNIT)
    _point(img, *beside, 25 * UNIT)
    src = classify_sources(_noisy(img, rng), NOISE, g, psf_sigma=SIG, trail_x=xc, trail_y=y0,
                           gain=4.0)
    # (the flank of the trail pulls the position of the one beside it a little)
    for (x, y), tol in ((on, 0.5), (beside, 1.5)):
        j = _near(src, x, y)
        assert src.cls[j] == "point", (x, y)
        assert np.hypot(src.x[j] - x, src.y[j] - y) < tol
        assert src.trail[j] == -1                      # the trail is a star, not the flash
    assert src.on_trail[_near(src, *on)] == 3
    # the trails stay trails: their segments are still there
    for x, y in zip(xc, y0):
        assert "trail" in set(src.cls[np.hypot(src.x - x, src.y - y) < 8])
    assert ((src.cls == "point") & (src.snr > 6)).sum() == 2


def test_short_brightening_of_a_star_is_not_a_flash():
    g = geometry()
    rng = np.random.default_rng(6)
    x0 = np.array([150.0])
    y0 = np.array([40.0])

    def light(i, t):  # +40 % for 0.3 s: as compact along the trail as a flash
        return 1.0 + 0.4 * (np.abs(t - 9.0) < 0.15)

    img = render((80, 260), x0, y0, g, np.array([20000.0]), SIG, sky=100.0, rng=rng,
                 light=light) - 100.0
    xc = x0 + g.dx_dt * g.exptime / 2
    src = classify_sources(img, NOISE, g, psf_sigma=SIG, trail_x=xc, trail_y=y0, gain=4.0)
    assert not (src.cls == "point").any()


def test_fragment_of_a_faint_trail_is_not_a_flash():
    g = geometry()
    rng = np.random.default_rng(2)
    hits = 0
    for k in range(6):
        img = render((60, 200), np.array([120.0]), np.array([30.0]), g, np.array([120.0]),
                     SIG, sky=0.0, rng=None).astype(float)
        src = classify_sources(_noisy(img, rng), NOISE, g, psf_sigma=SIG,
                               trail_x=np.zeros(0), trail_y=np.zeros(0))
        hits += int(((src.cls == "point") & (src.snr > 6)).sum())
    assert hits == 0


def test_streak_across_trails_is_one_streak_on_its_line():
    g, rng, img, x0, y0 = _scene(7)
    ny, nx = img.shape
    yy = np.arange(ny)[:, None]
    xx = np.arange(nx)[None, :]
    # a bright line at 40 degrees crossing several trails: one segment with them
    ang = np.radians(40.0)
    d = (xx - 20) * np.sin(ang) - (yy - 40) * np.cos(ang)
    img += 60.0 * np.exp(-0.5 * (d / SIG) ** 2)
    xc = x0 + g.dx_dt * g.exptime / 2
    src = classify_sources(_noisy(img, rng), NOISE, g, psf_sigma=SIG, trail_x=xc, trail_y=y0)
    st = np.flatnonzero(src.cls == "streak")
    assert st.size >= 1
    for i in st:  # reported on the line, with its direction
        assert abs(np.angle(np.exp(2j * (src.theta[i] - ang)))) / 2 < np.radians(2)
        assert abs((src.x[i] - 20) * np.sin(ang) - (src.y[i] - 40) * np.cos(ang)) < 3
    assert np.isfinite(src.line_theta[st]).any()
    # its crossings with trails are not flashes
    pts = np.flatnonzero(src.cls == "point")
    dist = np.abs((src.x[pts] - 20) * np.sin(ang) - (src.y[pts] - 40) * np.cos(ang))
    assert (dist > 10).all()


def test_streak_found_by_hough_even_across_trails():
    g, rng, img, x0, y0 = _scene(3)
    ny, nx = img.shape
    yy = np.arange(ny)[:, None]
    xx = np.arange(nx)[None, :]
    # a faint line at 30 degrees crossing the field and several trails
    d = (xx - 20) * np.sin(np.radians(30)) - (yy - 40) * np.cos(np.radians(30))
    img += 12.0 * np.exp(-0.5 * (d / SIG) ** 2)
    data = _noisy(img, rng)
    trails = np.zeros(img.shape, bool)
    for x, y in zip(x0, y0):
        trails[int(y) - 6:int(y) + 7, int(x + g.dx_dt * g.exptime) - 6:int(x) + 7] = True
    lines = find_streaks(data, NOISE, trails, drift_angle=g.angle_rad)
    assert len(lines.theta) == 1
    direction = lines.theta[0] + np.pi / 2
    assert abs(np.angle(np.exp(2j * (direction - np.radians(30))))) / 2 < np.radians(2)
    mask = line_mask(img.shape, lines.theta, lines.rho, half_width=3 * SIG)
    assert mask[np.abs(d) < 1].mean() > 0.95 and mask[np.abs(d) > 10].mean() < 0.01


def test_no_streak_in_a_field_of_trails():
    g, rng, img, x0, y0 = _scene(4)
    data = _noisy(img, rng)
    lines = find_streaks(data, NOISE, np.zeros(img.shape, bool), drift_angle=g.angle_rad)
    assert len(lines.theta) == 0


def test_bin2x2_sums_good_pixels_minus_the_block_sky():
    rng = np.random.default_rng(8)
    for shape, frac in (((11, 14), 0.1), ((40, 30), 0.3)):  # few and many masked pixels
        d = rng.normal(size=shape).astype(np.float32)
        m = rng.uniform(size=shape) < frac
        d[m & (rng.uniform(size=shape) < 0.5)] = np.nan      # masked pixels may be NaN
        sky2 = rng.normal(size=(shape[0] // 2, shape[1] // 2)).astype(np.float32)
        ref = np.zeros(sky2.shape)
        for dy in (0, 1):
            for dx in (0, 1):
                q = d[dy:2 * sky2.shape[0]:2, dx:2 * sky2.shape[1]:2] - sky2
                ref += np.where(m[dy:2 * sky2.shape[0]:2, dx:2 * sky2.shape[1]:2], 0, q)
        np.testing.assert_allclose(bin2x2(d, m, sky2), ref, atol=1e-5)


def test_line_mask_marks_the_band_around_each_line():
    shape = (120, 90)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    for th, rho in ((0.3, 40.0), (1.9, 30.0), (0.0, 45.0), (np.pi / 2, 60.0)):
        m = line_mask(shape, np.array([th]), np.array([rho]), half_width=4.0)
        d = np.abs(xx * np.cos(th) + yy * np.sin(th) - rho)
        assert m[d <= 4.0].all() and not m[d > 4.6].any()
    # several lines at once: their pixels, each once per line
    th, rho = np.array([0.3, 1.9, 0.0]), np.array([40.0, 30.0, 45.0])
    idx = line_pixels(shape, th, rho, half_width=4.0)
    np.testing.assert_array_equal(np.unique(idx),
                                  np.flatnonzero(line_mask(shape, th, rho, half_width=4.0)))
    assert idx.size == sum(line_mask(shape, th[i:i + 1], rho[i:i + 1], half_width=4.0).sum()
                           for i in range(3))
    assert line_pixels(shape, np.zeros(0), np.zeros(0), half_width=4.0).size == 0


def test_cosmic_ray_on_a_trail_is_no_flash():
    g, rng, img, x0, y0 = _scene(9, rate=300.0)
    xc = x0 + g.dx_dt * g.exptime / 2
    iy, ix = int(round(y0[5])), int(round(xc[5] + 4))
    img[iy, ix] += 400.0                                    # a sharp hit on the trail
    img[iy, ix + 1] += 250.0
    src = classify_sources(_noisy(img, rng), NOISE, g, psf_sigma=SIG, trail_x=xc, trail_y=y0,
                           gain=4.0)
    near = np.hypot(src.x - ix, src.y - iy) < 3
    assert "cosmic_ray" in set(src.cls[near])
    assert not ((src.cls == "point") & (src.snr > 6)).any()


def _streak(img: np.ndarray, ang: float, x0: float, y0: float, amp: float,
            length: float | None = None) -> np.ndarray:
    """Add a line of ``amp`` ADU per pixel through (x0, y0) at ``ang``; its across distances."""
    ny, nx = img.shape
    yy = np.arange(ny)[:, None]
    xx = np.arange(nx)[None, :]
    d = (xx - x0) * np.sin(ang) - (yy - y0) * np.cos(ang)
    prof = np.exp(-0.5 * (d / SIG) ** 2)
    if length is not None:  # a segment starting at (x0, y0)
        t = (xx - x0) * np.cos(ang) + (yy - y0) * np.sin(ang)
        prof = prof * ((t >= 0) & (t <= length))
    img += amp * prof
    return d


def test_peak_on_a_masked_cosmic_ray_is_no_flash():
    g = geometry()
    rng = np.random.default_rng(10)
    img = np.zeros((80, 120))
    # a cosmic ray whose charge spread as wide as the seeing: only its core is flagged
    _point(img, 60.2, 40.3, 30 * UNIT)
    dq = np.zeros(img.shape, np.uint8)
    dq[40, 60] = 5
    data = _noisy(img, rng)
    kw = dict(psf_sigma=SIG, trail_x=np.zeros(0), trail_y=np.zeros(0), gain=4.0)
    assert src_cls_at(classify_sources(data, NOISE, g, **kw), 60.2, 40.3) == "point"
    assert src_cls_at(classify_sources(data, NOISE, g, dq=dq, **kw), 60.2, 40.3) == "cosmic_ray"


def src_cls_at(src, x: float, y: float) -> str:
    return str(src.cls[_near(src, x, y)])


def test_overlapping_ends_of_two_trails_are_no_flash():
    g = geometry()
    L = g.length_px
    hits = 0
    for seed in range(6):
        rng = np.random.default_rng(40 + seed)
        # two trails 3.4 px apart across whose ends overlap by 12.6 px (a third of a trail):
        # their sum steps up along the drift for the overlap's length, a round excess
        # between their lines
        x0 = np.array([100.0, 100.0 + L - 12.6])
        y0 = np.array([40.0, 43.4])
        img = render((80, 220), x0, y0, g, np.array([1000.0, 1000.0]), SIG, sky=0.0,
                     rng=None).astype(float)
        xc = x0 + g.dx_dt * g.exptime / 2
        src = classify_sources(_noisy(img, rng), NOISE, g, psf_sigma=SIG, trail_x=xc,
                               trail_y=y0, gain=4.0)
        hits += int(((src.cls == "point") & (src.snr > 6)).sum())
    assert hits == 0


def test_streak_cut_short_by_a_corner_is_a_streak_and_such_a_line_inside_is_not():
    g, rng, img, x0, y0 = _scene(11, rate=300.0)
    ny, nx = img.shape
    # 70 px of a streak at 30 degrees to the drift across the CCD's corner (crossing a
    # trail), and the same short line in the interior (no satellite stops on the CCD)
    ang = np.radians(150.0)
    u = np.array([np.cos(ang), np.sin(ang)])
    corner = np.array([nx - 1.0, ny - 36.0])
    inner = np.array([200.0, 100.0])
    _streak(img, ang, *corner, 40.0, length=80.0)
    _streak(img, ang, *inner, 40.0, length=70.0)
    xc = x0 + g.dx_dt * g.exptime / 2
    src = classify_sources(_noisy(img, rng), NOISE, g, psf_sigma=SIG, trail_x=xc, trail_y=y0,
                           gain=4.0)
    st = np.flatnonzero((src.cls == "streak") & np.isfinite(src.line_theta))
    assert st.size == 1
    i = st[0]
    assert abs(np.angle(np.exp(2j * (src.theta[i] - ang)))) / 2 < np.radians(5)
    assert abs((src.x[i] - corner[0]) * u[1] - (src.y[i] - corner[1]) * u[0]) < 3
    mid = inner + 35.0 * u
    assert src.cls[_near(src, *mid)] != "streak"


def test_candidates_drop_points_in_classifications_glint_zone_only():
    # flashes are the point sources off the streaks' lines: the candidates' zone around a
    # line is classification's (a wider one dropped flashes classification kept as points)
    import inspect

    from driftwatch.pipeline import ccd

    default = inspect.signature(classify_sources).parameters["glint_fwhm"].default
    assert ccd._GLINT_FWHM == default
