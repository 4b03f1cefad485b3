"""Source classification: flashes, cosmic rays, streaks, faint trail fragments, star trails."""

from __future__ import annotations

import numpy as np

from driftwatch.science.classify import classify_sources, find_streaks, line_mask
from tests.science._science2_synth import geometry, pix_gauss, render

SIG = 1.8
NOISE = float(np.sqrt(100 * 4 + 49) / 4)


def _scene(seed: int):
    g = geometry()
    rng = np.random.default_rng(seed)
    ny, nx = 420, 320
    x0 = rng.uniform(60, 290, 12)
    y0 = np.arange(12) * 30 + 15 + rng.uniform(-0.5, 0.5, 12)
    img = render((ny, nx), x0, y0, g, np.full(12, 3000.0), SIG, sky=0.0, rng=None).astype(float)
    return g, rng, img, x0, y0


def _noisy(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    e = rng.poisson(np.clip((img + 100) * 4, 0, None)) + rng.normal(0, 7, img.shape)
    return (e / 4 - 100).astype(np.float32)


def test_flash_cosmic_ray_and_trails_are_told_apart():
    g, rng, img, x0, y0 = _scene(1)
    ny, nx = img.shape
    flux = 12 * NOISE * np.sqrt(4 * np.pi) * SIG           # a flash of PSF S/N ~12
    fx, fy = 160.4, 30.0 + 15.0                              # between two trails
    img += flux * np.outer(pix_gauss(np.arange(ny), fy, SIG), pix_gauss(np.arange(nx), fx, SIG))
    img[200 + 15, 31] += 500.0                               # a cosmic ray: two sharp pixels
    img[200 + 16, 31] += 300.0
    xc = x0 + g.dx_dt * g.exptime / 2
    src = classify_sources(_noisy(img, rng), NOISE, g, psf_sigma=SIG, trail_x=xc, trail_y=y0)
    near = lambda x, y: int(np.argmin(np.hypot(src.x - x, src.y - y)))  # noqa: E731
    assert src.cls[near(fx, fy)] == "point"
    assert src.snr[near(fx, fy)] > 8
    assert src.cls[near(31, 215.5)] == "cosmic_ray"
    for x, y in zip(xc, y0):
        assert src.cls[near(x, y)] == "trail"


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
