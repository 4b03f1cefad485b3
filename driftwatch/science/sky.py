"""Local sky of each trail: a robust statistic in two bands beside the trail.

The bands run parallel to the trail (from ``inner`` to ``outer`` pixels off its centre line,
and a few pixels past both ends); pixels covered by any trail's footprint (the other trails
and the trail itself) or flagged in the DQ mask are left out, so a neighbouring trail does not
raise the sky. The level is a median and the noise a scaled MAD, both vectorised over all
trails of the CCD at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driftwatch.science._stats import row_nanmedian

from driftwatch.science.geometry import DriftGeometry
from driftwatch.science.photometry import pixels_at, trail_grid

__all__ = ["LocalSky", "local_sky"]


@dataclass(frozen=True)
class LocalSky:
    """Local sky of ``n`` trails.

    Attributes
    ----------
    level : ndarray, float64, shape (n,)
        Median sky in the side bands, ADU per pixel (NaN when fewer than ``min_pixels`` remain).
    sigma : ndarray, float64, shape (n,)
        1.4826 x MAD of the same pixels, ADU.
    n_pixels : ndarray, int64, shape (n,)
        Pixels used.
    """

    level: np.ndarray
    sigma: np.ndarray
    n_pixels: np.ndarray


def local_sky(image: np.ndarray, x0: np.ndarray, y0: np.ndarray, geom: DriftGeometry, *,
              inner: float, outer: float, covered: np.ndarray | None = None,
              dq: np.ndarray | None = None, step: int = 2, min_pixels: int = 20,
              fallback: np.ndarray | float | None = None) -> LocalSky:
    """Measure the sky of each trail in side bands that avoid every trail's footprint.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        CCD image, ADU, sky kept.
    x0, y0 : ndarray, shape (n,)
        t = 0 end of each trail (sub-pixel).
    geom : DriftGeometry
        Drift of the CCD.
    inner, outer : float
        Distances of the bands from the trail's centre line, pixels (e.g. 3 and 6 PSF sigma).
    covered : ndarray, bool, shape (ny, nx), optional
        Pixels inside any trail's footprint (excluded).
    dq : ndarray, uint8, shape (ny, nx), optional
        CP codes; non-zero pixels are excluded.
    step : int
        Take every ``step``-th sample along the trail (the sky varies slowly).
    min_pixels : int
        Fewer usable pixels than this gives ``fallback`` (or NaN).
    fallback : float or ndarray (n,), optional
        Sky to use where the bands are too crowded (e.g. the background map at the trail).
    """
    x0 = np.atleast_1d(np.asarray(x0, float))
    y0 = np.atleast_1d(np.asarray(y0, float))
    h = int(np.ceil(outer))
    pad = h
    # only the columns that can reach the bands (a pixel's distance from the centre line
    # differs from its column offset by less than 1.5 px) are read
    j = np.arange(-h, h + 1)
    g = trail_grid(x0, y0, geom, h, image.shape, pad=pad, every=step,
                   offsets=j[np.abs(j) >= inner - 1.5])
    ix, iy, ins, d = g.ix, g.iy, g.inside, g.d
    ad = np.abs(d)  # (once, not per bound)
    band = ins & (ad >= inner)
    band &= ad <= outer
    del ad
    # one flat index for the three images read (the rows of a trail along x are one per
    # offset, (n, 1, w), broadcast over the samples)
    ny, nx = image.shape
    iy1 = iy[:, :1, :] if iy.strides[1] == 0 else iy
    flat = np.clip(iy1, 0, ny - 1) * nx + np.clip(ix, 0, nx - 1)
    if covered is not None:
        band &= ~pixels_at(covered, flat)
    if dq is not None:
        band &= pixels_at(dq, flat) == 0
    vals = np.where(band, pixels_at(image, flat), np.nan).reshape(len(x0), -1)
    npix = band.reshape(len(x0), -1).sum(axis=1)
    level = np.full(len(x0), np.nan)
    sigma = np.full(len(x0), np.nan)
    ok = npix >= min_pixels
    if ok.any():
        v = vals[ok]
        med = row_nanmedian(v)
        mad = row_nanmedian(np.abs(v - med[:, None]))
        level[ok] = med
        sigma[ok] = 1.4826 * mad
    if fallback is not None:
        fb = np.broadcast_to(np.asarray(fallback, float), level.shape)
        level = np.where(ok, level, fb)
    return LocalSky(level=level, sigma=sigma, n_pixels=npix)
