"""Local sky beside each trail: robust, and blind to the neighbouring trails."""

from __future__ import annotations

import numpy as np

from driftwatch.science.photometry import footprint_owners
from driftwatch.science.sky import local_sky
from tests.science._science2_synth import geometry, render


def test_sky_ignores_a_bright_neighbour_when_footprints_are_masked():
    g = geometry()
    x0 = np.array([120.0, 122.0])
    y0 = np.array([40.0, 49.0])          # the neighbour lies in the target's sky band
    rate = np.array([500.0, 50000.0])
    rng = np.random.default_rng(7)
    img = render((90, 200), x0, y0, g, rate, 1.8, sky=100.0, rng=rng)
    owners = footprint_owners(x0, y0, g, 3 * 1.8, img.shape)
    masked = local_sky(img, x0, y0, g, inner=6.0, outer=12.0, covered=owners > 0)
    naive = local_sky(img, x0, y0, g, inner=6.0, outer=12.0)
    assert abs(masked.level[0] - 100.0) < 1.0
    assert naive.level[0] - 100.0 > 3 * abs(masked.level[0] - 100.0)
    # the noise estimate is the pixel noise of the sky: sqrt(100 * 4 + 7^2) / 4 ADU
    assert abs(masked.sigma[0] / (np.sqrt(100 * 4 + 49) / 4) - 1) < 0.15


def test_crowded_bands_fall_back():
    g = geometry()
    img = np.full((40, 200), 50.0, np.float32)
    covered = np.ones(img.shape, bool)
    out = local_sky(img, np.array([100.0]), np.array([20.0]), g, inner=4, outer=8,
                    covered=covered, fallback=42.0)
    assert out.level[0] == 42.0 and out.n_pixels[0] == 0
