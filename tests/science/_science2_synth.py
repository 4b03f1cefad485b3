"""Small seeded synthetic drift trails for the Science II unit tests (not a simulator).

A Gaussian PSF swept along x (any sign) with a known light curve, rendered exactly as the
outer product of a pixel-integrated row profile and a time-integrated column profile.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.special import ndtr

from driftwatch.science.geometry import DriftGeometry


def pix_gauss(edges_centre: np.ndarray, mu: np.ndarray | float, sigma: float) -> np.ndarray:
    """Pixel-integrated unit Gaussian at pixel centres ``edges_centre`` for centres ``mu``."""
    return ndtr((edges_centre + 0.5 - mu) / sigma) - ndtr((edges_centre - 0.5 - mu) / sigma)


def render(shape: tuple[int, int], x0: np.ndarray, y0: np.ndarray, geom: DriftGeometry,
           rate: np.ndarray, sigma: float, *, sky: float = 100.0, gain: float = 4.0,
           read_noise: float = 7.0, rng: np.random.Generator | None = None,
           light: Callable[[int, np.ndarray], np.ndarray] | None = None,
           dt: float = 0.02) -> np.ndarray:
    """Return an image (ADU, sky kept) of trails along x with Poisson + read noise.

    ``rate`` is each star's count rate in ADU/s; ``light(i, t)`` its relative brightness at
    times ``t`` (default 1). ``rng=None`` renders without noise.
    """
    ny, nx = shape
    img = np.full(shape, float(sky))
    t = np.arange(0.0, geom.exptime, dt) + dt / 2
    cols = np.arange(nx, dtype=float)
    rows = np.arange(ny, dtype=float)
    for i in range(len(x0)):
        lc = np.ones_like(t) if light is None else light(i, t)
        xt = x0[i] + geom.dx_dt * t
        cx = (rate[i] * dt * lc[:, None] * pix_gauss(cols[None, :], xt[:, None], sigma)).sum(0)
        gy = pix_gauss(rows, y0[i], sigma)
        img += np.outer(gy, cx)
    if rng is not None:
        e = rng.poisson(np.clip(img * gain, 0, None)).astype(float)
        img = (e + rng.normal(0.0, read_noise, shape)) / gain
    return img.astype(np.float32)


def geometry(speed: float = 1.9, exptime: float = 20.0, sign: float = -1.0) -> DriftGeometry:
    """A DECam-like drift along x (+Dec toward -x)."""
    return DriftGeometry(dx_dt=sign * speed, dy_dt=0.0, exptime=exptime)
