"""Tiny seeded synthetic drift images for unit tests (the full simulator lives in
driftwatch.simulate): Gaussian PSFs swept along pixel x, with known truth."""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS
from scipy.special import erf

SQ2 = np.sqrt(2.0)


def decam_like_wcs(nx: int, ny: int, ra: float = 150.0, dec: float = -10.0,
                   scale_deg: float = 7.286e-5) -> WCS:
    """A TAN WCS with DECam's orientation: +Dec toward -x, RA along y."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    w.wcs.cd = [[0.0, scale_deg], [-scale_deg, 0.0]]
    w.pixel_shape = (nx, ny)
    return w


def add_trail(img: np.ndarray, xa: float, xb: float, yc: float, flux: float,
              sigma: float) -> None:
    """Add a trail whose PSF centre moves along x from xa to xb at row yc (total ``flux``)."""
    ny, nx = img.shape
    lo, hi = min(xa, xb), max(xa, xb)
    length = hi - lo
    x0 = max(0, int(lo - 5 * sigma))
    x1 = min(nx, int(hi + 5 * sigma) + 2)
    y0 = max(0, int(yc - 5 * sigma))
    y1 = min(ny, int(yc + 5 * sigma) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    # Pixel-integrated profiles: along x a box convolved with a Gaussian, across y a Gaussian.
    xe = np.arange(x0, x1 + 1) - 0.5

    def box_cdf(t):  # integral of (box * gauss) up to t, box of unit height on [lo, hi]
        def g(u):
            return u * (0.5 + 0.5 * erf(u / (SQ2 * sigma))) + sigma / np.sqrt(2 * np.pi) * np.exp(
                -0.5 * (u / sigma) ** 2)
        return g(t - lo) - g(t - hi)

    px = np.diff(box_cdf(xe)) / length
    ye = np.arange(y0, y1 + 1) - 0.5
    py = np.diff(0.5 * (1 + erf((ye - yc) / (SQ2 * sigma))))
    img[y0:y1, x0:x1] += (flux * py[:, None] * px[None, :]).astype(img.dtype)


def render(ny: int, nx: int, trails: list[tuple[float, float, float, float]], *, sigma: float,
           sky: float = 700.0, noise: float = 14.0, seed: int = 0) -> np.ndarray:
    """Render ``trails`` [(xa, xb, yc, flux), ...] on a sky with Gaussian noise, float32."""
    rng = np.random.default_rng(seed)
    img = np.zeros((ny, nx), dtype=np.float64)
    for xa, xb, yc, flux in trails:
        add_trail(img, xa, xb, yc, flux, sigma)
    img += sky + rng.normal(0.0, noise, size=img.shape)
    return img.astype(np.float32)
