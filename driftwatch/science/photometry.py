"""Optimal extraction of drift-trail light curves, one sample per pixel of drift.

A star drawn as a trail at pixel ``p0 = (x0, y0)`` at shutter open (the WCS epoch) moves along
the unit vector ``u`` of :class:`~driftwatch.science.geometry.DriftGeometry`. Sample ``k`` of its
light curve is the flux integrated across the trail in the pixel row (column, on DECam) whose
centre lies nearest ``p0 + k u``; its time is the along-trail coordinate of that pixel centre,
``s = (pixel - p0) . u``, times ``seconds_per_px``. Pixels are gathered by nearest-pixel fancy
indexing (no interpolation, so the noise of different samples stays independent). A trail
within a degree of the pixel x axis (DECam: its tilt is a tenth of a pixel over the trail)
keeps the same rows for all its samples, taken at mid-trail, so the window never jumps a row
where the trail crosses a half pixel; a more tilted trail takes the nearest pixels sample by
sample.

The flux across the trail is an optimal (PSF-weighted, Horne 1986) estimate: the pixels are
weighted by the across-trail profile (pixel-integrated, at the sub-pixel trail centre: a Moffat line profile fitted to the bright trails of the CCD, see :class:`LineProfile`)
over the sky variance (the same weights for faint and bright stars, see the code); the errors
come from a noise model in electrons (sky, source, read noise, header gain); pixels whose residual from the profile fit exceeds ``clip_sigma`` are
rejected (cosmic rays on the trail) and the fit repeated. The trail's ends, where the PSF only
partly covers the sample, are divided by the expected covering fraction and flagged EDGE.

Per-sample flags (``uint16``), bitwise OR over the pixels that carry weight in the sample:

====================  =======  ===============================================================
name                  value    meaning
====================  =======  ===============================================================
``1 << c``            2..256   CP data-quality code ``c`` (1 bad, 2 no data, 3 saturated,
                               4 bleed, 5 cosmic ray, 6 low weight, 7 difference, 8 streak)
                               present in a pixel of the sample (such pixels get no weight)
``FLAG_EDGE``         512      end of the trail (PSF covers < 90 % of the sample), a pixel
                               off the CCD, or a sample within 1.5 FWHM of the CCD border
``FLAG_BLEND``        1024     another trail's footprint reaches into this sample's core
``FLAG_OUTLIER``      2048     a pixel was rejected as an outlier from the profile (cosmic ray)
``FLAG_SATURATED``    4096     a pixel at or above the header saturation level
``FLAG_NODQ``         8192     no DQ mask was available for this CCD
====================  =======  ===============================================================

A sample is *usable* (``LightCurves.good``) when it is not EDGE, BLEND or SATURATED, has no
pixel with CP codes 1-4 or 8 in its core, and keeps at least 70 % of its profile weight.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields, replace
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from driftwatch.science._stats import row_nanmedian

from driftwatch.science.geometry import DriftGeometry

__all__ = [
    "FLAG_EDGE", "FLAG_BLEND", "FLAG_OUTLIER", "FLAG_SATURATED", "FLAG_NODQ", "BAD_DQ_CODES",
    "LightCurves", "TrailGrid", "trail_grid", "pixels_at", "footprint_owners",
    "extract_light_curves",
    "across_profile", "measure_profile", "LineProfile", "Contamination",
    "neighbour_contamination", "flag_neighbours", "extract_trails", "end_excess", "EndLight",
]

FLAG_EDGE = 1 << 9
FLAG_BLEND = 1 << 10
FLAG_OUTLIER = 1 << 11
FLAG_SATURATED = 1 << 12
FLAG_NODQ = 1 << 13
#: CP codes that make a core pixel unusable (bad, no data, saturated, bleed, streak).
BAD_DQ_CODES: tuple[int, ...] = (1, 2, 3, 4, 8)
_BAD_DQ_BITS = sum(1 << c for c in BAD_DQ_CODES)
_UNUSABLE = FLAG_EDGE | FLAG_BLEND | FLAG_SATURATED


@dataclass(frozen=True)
class TrailGrid:
    """Pixel grid of every trail: ``n`` trails x ``m`` samples x ``w`` pixels across.

    Attributes
    ----------
    ix, iy : ndarray, int64, shape (n, m, w)
        Nearest-pixel indices (numpy axis 1 and axis 0); may lie off the CCD.
    inside : ndarray, bool, shape (n, m, w)
        Pixel is on the CCD.
    d : ndarray, float64, shape (n, m, w)
        Perpendicular distance of the pixel centre from the trail's centre line, pixels.
    s : ndarray, float64, shape (n, m)
        Along-trail coordinate of each sample's central pixel from the t = 0 end, pixels.
    """

    ix: np.ndarray
    iy: np.ndarray
    inside: np.ndarray
    d: np.ndarray
    s: np.ndarray


@dataclass(frozen=True)
class LightCurves:
    """Extracted light curves of ``n`` trails with ``m`` samples each.

    Attributes
    ----------
    flux, err : ndarray, float64, shape (n, m)
        Sky-subtracted flux integrated across the trail, ADU per sample (per pixel of drift),
        corrected for the partial coverage at the trail ends; and its 1-sigma uncertainty.
    flags : ndarray, uint16, shape (n, m)
        Bit flags (module docstring).
    good : ndarray, bool, shape (n, m)
        Usable samples.
    t : ndarray, float64, shape (n, m)
        Seconds since shutter open of each sample.
    x, y : ndarray, float64, shape (n, m)
        Pixel position of each sample's centre on the trail (0-based).
    chi2 : ndarray, float64, shape (n, m)
        Reduced chi-square of the across-trail profile fit (~1 for a clean sample).
    s : ndarray, float64, shape (n, m)
        Along-trail coordinate of each sample from the t = 0 end, pixels.
    coverage : ndarray, float64, shape (n, m)
        Fraction of an interior sample's flux expected at each sample (the ends ramp).
    shift, shift_err : ndarray, float64, shape (n, m)
        Coefficient of the profile's derivative in each sample (ADU x px, same scale as
        ``flux``): light displaced across the trail by ``-shift / flux`` pixels (a neighbour's
        light, not the star's own), and its uncertainty.
    """

    flux: np.ndarray
    err: np.ndarray
    flags: np.ndarray
    good: np.ndarray
    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    chi2: np.ndarray
    s: np.ndarray
    coverage: np.ndarray
    shift: np.ndarray
    shift_err: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.flux.shape  # type: ignore[return-value]


def n_samples(geom: DriftGeometry) -> int:
    """Return the number of samples of a trail (one per pixel of drift, both ends included)."""
    return int(np.floor(geom.length_px)) + 1


def trail_grid(x0: np.ndarray, y0: np.ndarray, geom: DriftGeometry, half_width: int,
               shape: tuple[int, int], *, pad: int = 0, every: int = 1,
               offsets: np.ndarray | None = None) -> TrailGrid:
    """Return the nearest-pixel grid of every trail.

    Parameters
    ----------
    x0, y0 : ndarray, shape (n,)
        Sub-pixel position of each trail's t = 0 end (0-based, numpy axis 1 and 0).
    geom : DriftGeometry
        Drift of the CCD.
    half_width : int
        Pixels on each side of the centre line (``w = 2 half_width + 1``).
    shape : (ny, nx)
        Image shape.
    pad : int
        Extra samples before the start and after the end of the trail.
    every : int
        Take every ``every``-th of those samples.
    offsets : ndarray of int, optional
        The pixel offsets across the trail to take, instead of ``-half_width..half_width``
        (``half_width`` then only names the column ``s`` is measured in, offset 0 if present).
    """
    x0 = np.asarray(x0, dtype=float)
    y0 = np.asarray(y0, dtype=float)
    ux, uy = geom.unit
    nx_, ny_ = -uy, ux  # normal to the trail
    k = np.arange(-pad, n_samples(geom) + pad, dtype=float)[::max(1, int(every))]
    j = (np.arange(-half_width, half_width + 1, dtype=float) if offsets is None
         else np.asarray(offsets, dtype=float))
    # the along-trail coordinate is read in the column nearest the centre line
    jc = int(np.argmin(np.abs(j)))
    # The along-trail part is added on the small (n, m) array and the big (n, m, w) arrays
    # are updated in place: this grid is built several times per CCD.
    # (the (n, m) part repeated across, then the offsets added in place: a broadcast sum
    # into a new array runs an inner loop only w long, ~20 % slower; the same sums)
    px = np.repeat((x0[:, None] + k[None, :] * ux)[:, :, None], j.size, axis=2)
    px += (j * nx_)[None, None, :]
    np.rint(px, out=px)
    ix = px.astype(np.int64)
    # the rounded float equals the integer exactly, so this is ix - x0
    rx = np.subtract(px, x0[:, None, None], out=px)
    if geom.along_x:
        # one row per trail offset, taken at mid-trail: rounding each sample separately
        # would make the window jump a row where a slightly tilted trail crosses a
        # half-pixel, and the across distances then change by a whole pixel mid-trail.
        # The rows are then the same for every sample: (n, 1, w), broadcast (read-only).
        kmid = 0.5 * (n_samples(geom) - 1)
        py = np.rint(y0 + kmid * uy)[:, None, None] + np.rint(j * ny_)[None, None, :]
        iy_rows = py.astype(np.int64)
        iy = np.broadcast_to(iy_rows, px.shape)
    else:
        py = np.repeat((y0[:, None] + k[None, :] * uy)[:, :, None], j.size, axis=2)
        py += (j * ny_)[None, None, :]
        np.rint(py, out=py)
        iy = iy_rows = py.astype(np.int64)
    ry = np.subtract(py, y0[:, None, None], out=py)
    s = rx[:, :, jc] * ux + np.broadcast_to(ry, rx.shape)[:, :, jc] * uy
    d = np.multiply(rx, nx_, out=rx)
    d += ry * ny_
    # negative indices wrap to huge unsigned values: one comparison per axis (along x, on
    # the (n, 1, w) rows before they are broadcast)
    inside = ix.view(np.uint64) < shape[1]
    inside &= iy_rows.view(np.uint64) < shape[0]
    return TrailGrid(ix=ix, iy=iy, inside=inside, d=d, s=s)


def _mid_sample(d: np.ndarray) -> np.ndarray:
    """The across distances of the middle sample, shape (n, 1, w): for a trail along x they
    change by less than 0.05 px from there to either end (the rows are fixed per trail)."""
    mid = d.shape[1] // 2
    return d[:, mid:mid + 1, :]


@dataclass(frozen=True)
class LineProfile:
    """Line-spread function of the PSF: a Moffat profile integrated along one axis.

    A drifted star's profile across its trail is the PSF integrated along the trail. For a
    Moffat PSF ``(1 + r^2/alpha^2)^-beta`` that is ``(1 + d^2/alpha^2)^(1/2 - beta)``; large
    ``beta`` tends to a Gaussian. ``alpha`` in pixels.
    """

    alpha: float
    beta: float

    @property
    def fwhm(self) -> float:
        """FWHM of the PSF itself (not of the line profile), pixels."""
        return float(2.0 * self.alpha * np.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    @property
    def sigma(self) -> float:
        """Gaussian-equivalent sigma of the PSF (FWHM / 2.3548), pixels."""
        return self.fwhm / 2.3548200450309493

    def cdf(self, d: np.ndarray) -> np.ndarray:
        """Fraction of the line profile below ``d`` pixels (interpolated in a cached table)."""
        table, slope = _cdf_slopes(round(float(self.beta), 6))
        # linear interpolation on the uniform grid of _cdf_table by direct indexing (what
        # np.interp gives, to ~1e-14, without its binary search: ~10x faster on unsorted d)
        t = np.asarray(d, float) / self.alpha
        t = (t - _CDF_U0) * (1.0 / _CDF_DU)
        np.clip(t, 0.0, table.size - 1.0, out=t)
        i = np.minimum(t.astype(np.intp), table.size - 2)
        t -= i
        return table[i] + t * slope[i]

    def pixel(self, d: np.ndarray) -> np.ndarray:
        """Pixel-integrated profile at pixel-centre distances ``d`` (sums to 1 over all d)."""
        return self.cdf(np.asarray(d, float) + 0.5) - self.cdf(np.asarray(d, float) - 0.5)

    @classmethod
    def gaussian_like(cls, fwhm: float) -> "LineProfile":
        """A nearly Gaussian profile (beta = 30) of the given FWHM."""
        beta = 30.0
        return cls(alpha=fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0)), beta=beta)

    @classmethod
    def moffat(cls, fwhm: float, beta: float) -> "LineProfile":
        return cls(alpha=fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0)), beta=beta)


_CDF_U0, _CDF_U1, _CDF_N = -80.0, 80.0, 64001
_CDF_DU = (_CDF_U1 - _CDF_U0) / (_CDF_N - 1)


@functools.lru_cache(maxsize=64)
def _cdf_slopes(beta: float) -> tuple[np.ndarray, np.ndarray]:
    """The CDF table of :func:`_cdf_table` and its differences (for direct interpolation)."""
    _, table = _cdf_table(beta)
    return table, np.diff(table)


@functools.lru_cache(maxsize=64)
def _cdf_table(beta: float) -> tuple[np.ndarray, np.ndarray]:
    """CDF of a unit-alpha Moffat line profile on a fine grid of u (exact: incomplete beta)."""
    from scipy.special import betainc

    u = np.linspace(_CDF_U0, _CDF_U1, _CDF_N)
    # integral of (1 + u^2)^-(beta - 1/2): regularised incomplete beta in u^2 / (1 + u^2)
    half = 0.5 * betainc(0.5, beta - 1.0, u * u / (1.0 + u * u))
    return u, 0.5 + np.sign(u) * half


def across_profile(d: np.ndarray, profile: LineProfile) -> np.ndarray:
    """Return the pixel-integrated line profile at distances ``d`` from the trail centre."""
    return profile.pixel(d)


def _coverage(s: np.ndarray, length: float, profile: LineProfile) -> np.ndarray:
    """Fraction of an interior sample's flux that a sample at along-trail coordinate s receives.

    The trail is a uniform line from 0 to ``length`` blurred by the line profile along it.
    """
    return profile.cdf(s) - profile.cdf(s - length)


def footprint_owners(x0: np.ndarray, y0: np.ndarray, geom: DriftGeometry, radius: float,
                     shape: tuple[int, int]) -> np.ndarray:
    """Paint every trail's footprint (centre line +- radius, plus radius at the ends).

    Returns
    -------
    owners : ndarray, uint16 (int32 beyond 65,534 trails), shape (ny, nx)
        Index + 1 of the one trail covering each pixel, 0 where none does, and
        ``np.iinfo(dtype).max`` (never a trail's index + 1) where several do: a pixel is
        covered by another trail than ``t`` exactly where ``owners`` is neither 0 nor
        ``t + 1``. (16 bits: this full-size image is among the largest arrays a CCD's
        reduction keeps.)
    """
    r = int(np.ceil(radius))
    g = trail_grid(x0, y0, geom, r, shape, pad=r)
    keep = g.inside & (np.abs(g.d) <= radius)
    n = len(np.atleast_1d(x0))
    dtype = np.uint16 if n < np.iinfo(np.uint16).max else np.int32
    # (the row offsets on the (n, 1, w) rows of a trail along x before they are broadcast;
    # the kept pixels come trail by trail in C order, so their labels are each trail's
    # index repeated its count of pixels: no broadcast boolean gather)
    iy = g.iy[:, :1, :] if g.iy.strides[1] == 0 else g.iy
    flat = (iy * shape[1] + g.ix)[keep]
    lab = np.repeat(np.arange(1, n + 1, dtype=dtype), keep.sum(axis=(1, 2)))
    owners = np.zeros(shape, dtype=dtype)
    owners.ravel()[flat] = lab
    # a footprint pixel some later trail painted over is covered by two or more trails
    # (and every such pixel is one: the lower-index trail's entry there differs)
    over = owners.ravel()[flat] != lab
    owners.ravel()[flat[over]] = np.iinfo(dtype).max
    return owners


def measure_profile(image: np.ndarray, x0: np.ndarray, y0: np.ndarray,
                    geom: DriftGeometry, sky: np.ndarray, *, fwhm_guess: float,
                    use: np.ndarray | None = None, n_max: int = 200,
                    brightness: np.ndarray | None = None) -> LineProfile:
    """Measure the across-trail line profile (Moffat alpha, beta) from the brightest trails.

    Fits the summed, sky-subtracted across-trail profile of up to ``n_max`` bright trails
    (their interior samples; each normalised to unit sum) by least squares over a grid of FWHM
    and beta; returns a Moffat beta = 3 of ``fwhm_guess`` when fewer than 3 trails are
    available. ``use`` (bool, shape (n,)) selects the trails allowed (isolated, unsaturated
    ones: a neighbour within the window biases the width); ``brightness`` (shape (n,), e.g.
    the detection fluxes), when given, limits the candidates to the ``3 n_max`` brightest
    before their pixels are gathered. The width is found on a coarse grid (with a second
    pass without the trails that fit far worse than the others), then refined.
    """
    x0 = np.asarray(x0, float)
    fallback = LineProfile.moffat(fwhm_guess, 3.0)
    if x0.size < 3:
        return fallback
    guess = fwhm_guess / 2.3548
    h = int(np.ceil(3 * guess)) + 1
    m = n_samples(geom)
    edge = int(np.ceil(2 * guess))
    y0 = np.asarray(y0, float)
    sky = np.broadcast_to(np.asarray(sky, float), x0.shape)
    pick = np.ones(x0.size, bool) if use is None else np.asarray(use, bool).copy()
    if brightness is not None and pick.sum() > 3 * n_max:
        bright = np.where(pick, np.nan_to_num(np.asarray(brightness, float), nan=-np.inf),
                          -np.inf)
        pick = np.zeros(x0.size, bool)
        pick[np.argsort(bright)[::-1][:3 * n_max]] = True
    x0, y0, sky = x0[pick], y0[pick], sky[pick]
    g = trail_grid(x0, y0, geom, h, image.shape)
    sl = slice(edge, max(m - edge, edge + 1))
    ok_trail = g.inside[:, sl].all(axis=(1, 2))
    if ok_trail.sum() < 3:
        return fallback
    # (block reads of the windows, then the rows and samples used: the pixels that
    # clipped 2-D fancy indexing gives, several times faster)
    vals = grid_reader(g, image.shape)(image)[ok_trail][:, sl] - sky[ok_trail][:, None, None]
    prof = vals.sum(axis=1)
    dist = g.d[ok_trail][:, sl.start]
    total = prof.sum(axis=1)
    order = np.argsort(total)[::-1][:n_max]
    prof = prof[order] / total[order, None]
    dist = dist[order]
    betas = np.array([1.8, 2.2, 2.6, 3.0, 3.5, 4.5, 6.0, 10.0, 30.0])
    units = [LineProfile(alpha=1.0, beta=float(b)) for b in betas]
    scale = 2.0 * np.sqrt(2.0 ** (1.0 / betas) - 1.0)

    def misfit(kb: np.ndarray, fwhms: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Squared misfit of trails ``rows`` under shapes ``kb`` x widths: (b, w, trails)."""
        out = np.empty((kb.size, fwhms.size, rows.size))
        d = dist[rows][None]
        for q, k in enumerate(kb):  # a few shapes, each vectorised over widths and trails
            a = (fwhms / scale[k])[:, None, None]
            # pixel integral in units of alpha: cdf((d +- 0.5) / alpha), unit-alpha profile
            model = units[k].cdf((d + 0.5) / a) - units[k].cdf((d - 0.5) / a)
            model /= model.sum(axis=2, keepdims=True)   # normalised over the data's window
            out[q] = ((model - prof[rows][None]) ** 2).sum(axis=2)
        return out

    all_b = np.arange(betas.size)
    coarse = np.linspace(0.5 * fwhm_guess, 2.0 * fwhm_guess, 16)
    res2 = misfit(all_b, coarse, np.arange(prof.shape[0]))
    # two passes: the trails whose own misfit is far above the typical one (a streak or
    # a cosmic ray across the window, an undetected neighbour) are left out of the second;
    # a handful of them pulled the wings (beta) far off in a plain least-squares fit
    keep = np.ones(prof.shape[0], dtype=bool)
    for _ in range(2):
        cost = res2[:, :, keep].sum(axis=2)                                 # (betas, widths)
        kb, kw = np.unravel_index(int(np.argmin(cost)), cost.shape)
        per_trail = res2[kb, kw]
        outlier = keep & (per_trail > 5.0 * float(np.median(per_trail[keep])))
        if not outlier.any() or keep.sum() - outlier.sum() < 3:
            break
        keep &= ~outlier
    # refined: a width step of 1/30 FWHM around the coarse best, the neighbouring shapes
    step = coarse[1] - coarse[0]
    fine = np.linspace(coarse[kw] - step, coarse[kw] + step, 7)
    near_b = np.arange(max(kb - 1, 0), min(kb + 2, betas.size))
    cost = misfit(near_b, fine, np.flatnonzero(keep)).sum(axis=2)
    jb, jw = np.unravel_index(int(np.argmin(cost)), cost.shape)
    best = LineProfile(float(fine[jw] / scale[near_b[jb]]), float(betas[near_b[jb]]))
    return best


def extract_light_curves(image: np.ndarray, x0: np.ndarray, y0: np.ndarray,
                         geom: DriftGeometry, *, profile: LineProfile,
                         sky: np.ndarray | float,
                         gain: float, read_noise: float, saturate: float = np.inf,
                         dq: np.ndarray | None = None,
                         labels: np.ndarray | None = None,
                         half_width: int | None = None, clip_sigma: float = 5.0,
                         model_error: float = 0.05,
                         neighbours: np.ndarray | None = None) -> LightCurves:
    """Extract the light curve of every trail at once (optimal, PSF-weighted extraction).

    Parameters
    ----------
    image : ndarray, float32 or float64, shape (ny, nx)
        CCD image in ADU with the sky level kept.
    x0, y0 : ndarray, shape (n,)
        Sub-pixel t = 0 end of each trail.
    geom : DriftGeometry
        Drift of the CCD (direction, speed, exposure time).
    profile : LineProfile
        Line profile of the PSF across (and along) the trail (:func:`measure_profile`).
    sky : float or ndarray, shape (n,)
        Local sky level of each trail, ADU per pixel.
    gain, read_noise : float
        e-/ADU and e- (from the header).
    saturate : float
        Saturation level, ADU.
    dq : ndarray, uint8, shape (ny, nx), optional
        CP data-quality codes; None flags every sample FLAG_NODQ.
    labels : ndarray, shape (ny, nx), optional
        :func:`footprint_owners` of all trails of the CCD, for FLAG_BLEND.
    half_width : int, optional
        Half width of the extraction window (default ceil(1.3 FWHM) + 1).
    clip_sigma : float
        Rejection threshold of the profile-fit residuals.
    model_error : float
        Fractional profile error allowed for in the rejection test only (so the wings of a
        bright star, where a model is never perfect, are not rejected as outliers).
    neighbours : ndarray, shape (n, m, 2 half_width + 1), optional
        Modelled light of neighbouring trails in each pixel (:attr:`Contamination.pixels`),
        subtracted before the fit, and counted in the variance.

    Returns
    -------
    LightCurves
    """
    x0 = np.atleast_1d(np.asarray(x0, dtype=float))
    y0 = np.atleast_1d(np.asarray(y0, dtype=float))
    n = x0.size
    kw = dict(profile=profile, gain=gain, read_noise=read_noise, saturate=saturate, dq=dq,
              labels=labels, half_width=half_width, clip_sigma=clip_sigma,
              model_error=model_error)
    # Every step is per trail (sums over a sample's pixels at most): by blocks of trails the
    # (block, m, w) temporaries stay in the CPU cache, the results are the same to the bit,
    # and the extraction's peak memory is a block's.
    if n <= _EXTRACT_BLOCK:
        return _extract_block(image, x0, y0, geom, sky=sky, neighbours=neighbours, **kw)
    sky_arr = np.asarray(sky, dtype=float)
    parts = []
    for i in range(0, n, _EXTRACT_BLOCK):
        sl = slice(i, i + _EXTRACT_BLOCK)
        parts.append(_extract_block(
            image, x0[sl], y0[sl], geom, sky=sky_arr[sl] if sky_arr.ndim else sky,
            neighbours=None if neighbours is None else neighbours[sl], label_offset=i, **kw))
    return LightCurves(**{f.name: np.concatenate([getattr(q, f.name) for q in parts])
                          for f in fields(LightCurves)})


#: Trails per block of :func:`extract_light_curves`: (256, 39, 15) float32 arrays are 600 kB.
_EXTRACT_BLOCK = 256


def _extract_block(image: np.ndarray, x0: np.ndarray, y0: np.ndarray, geom: DriftGeometry, *,
                   profile: LineProfile, sky: np.ndarray | float, gain: float,
                   read_noise: float, saturate: float, dq: np.ndarray | None,
                   labels: np.ndarray | None, half_width: int | None, clip_sigma: float,
                   model_error: float, neighbours: np.ndarray | None,
                   label_offset: int = 0) -> LightCurves:
    """Extract the light curves of a block of trails (see :func:`extract_light_curves`,
    whose defaults every argument has).

    ``label_offset`` is the index of the block's first trail among all trails (its label in
    ``labels`` is ``label_offset + 1``).
    """
    x0 = np.atleast_1d(np.asarray(x0, dtype=float))
    y0 = np.atleast_1d(np.asarray(y0, dtype=float))
    n = x0.size
    sigma = profile.sigma
    h = int(np.ceil(1.3 * profile.fwhm)) + 1 if half_width is None else int(half_width)
    g = trail_grid(x0, y0, geom, h, image.shape)
    ny, nx = image.shape
    # one reader serves the four images read on the grid (pixels, DQ, footprint owners)
    read = grid_reader(g, image.shape)
    # the (n, m, w) arrays are float32 (half the memory and time of the largest step of a
    # CCD's reduction)
    f32 = np.float32
    data = read(image).astype(f32, copy=False)
    sky_arr = np.broadcast_to(np.asarray(sky, dtype=float).reshape(-1, 1, 1)
                              if np.ndim(sky) else np.asarray(sky, float), (n, 1, 1)).astype(f32)
    # along a pixel axis the across distances are the same for every sample of a trail:
    # evaluate the profile once per trail and broadcast
    d_eval = _mid_sample(g.d) if geom.along_x else g.d
    # (copied out to the full grid once: every product with a stride-0 view runs an inner
    # loop only w long, ~2x slower, and the profile enters a dozen of them; same values)
    prof = np.ascontiguousarray(np.broadcast_to(profile.pixel(d_eval).astype(f32), g.d.shape))
    # profile renormalised over the window, so a flux is the total across the trail
    core = np.abs(g.d) <= 2.0 * sigma
    flags = np.zeros(g.s.shape, dtype=np.uint16)
    w_ok = g.inside.copy()
    flags |= np.where(_any_across(~g.inside), FLAG_EDGE, 0).astype(np.uint16)
    if dq is not None:
        codes = read(dq)
        codes[~g.inside] = 0
        w_ok &= codes == 0
        # few pixels carry a code: their bits are OR-ed into their samples' flags directly
        # (the same bits as a reduction over every pixel of the (n, m, w) grid)
        nz = np.flatnonzero(codes)
        cv = codes.ravel()[nz].astype(np.int64)
        use = (cv <= 15) & (prof[np.unravel_index(nz, codes.shape)] > 1e-3)
        nz, cv = nz[use], cv[use]
        wdt = codes.shape[2]
        sample = nz // wdt
        bit = np.left_shift(1, cv)
        acc = np.zeros(flags.size, dtype=np.int64)
        np.bitwise_or.at(acc, sample, bit)
        flags |= acc.reshape(flags.shape).astype(np.uint16)
        in_core = core.reshape(-1)[nz]
        acc[:] = 0
        np.bitwise_or.at(acc, sample[in_core], bit[in_core])
        core_bad = acc.reshape(flags.shape) & _BAD_DQ_BITS
    else:
        flags |= FLAG_NODQ
        core_bad = np.zeros(g.s.shape, dtype=np.int64)
    # (only the trails with a pixel at or above saturation, few, are flagged and masked)
    hot = np.flatnonzero((data >= saturate).any(axis=(1, 2)))
    if hot.size:
        sat = (data[hot] >= saturate) & g.inside[hot] & (prof[hot] > 1e-3)
        flags[hot] |= np.where(_any_across(sat), FLAG_SATURATED, 0).astype(np.uint16)
        w_ok[hot] &= ~sat
    if labels is not None:
        own = np.arange(label_offset + 1, label_offset + n + 1, dtype=np.int32)[:, None, None]
        # (where several trails cover a pixel it reads as the sentinel, never equal to own)
        lo = read(labels)
        other = (lo != own) & (lo != 0)
        del lo
        flags |= np.where(_any_across(other & core & g.inside), FLAG_BLEND, 0).astype(np.uint16)

    d = data - sky_arr
    ron2 = f32((read_noise / gain) ** 2)
    inv_gain = f32(1.0 / gain)
    var_sky = np.maximum(sky_arr, f32(0.0)) * inv_gain + ron2
    if neighbours is not None:
        # the neighbours' light is removed, but its photon noise stays
        nb = np.asarray(neighbours, dtype=f32)
        d = d - nb
        var_sky = var_sky + np.maximum(nb, f32(0.0)) * inv_gain
        del nb
    w = w_ok.astype(f32)
    # sums over a sample's pixels: float32 products summed by einsum (one fused pass, 5x
    # faster than a float64 reduction over the short last axis; 15 terms in float32 agree
    # with the float64 sum to ~1e-7 relative), returned float64 for the (n, m) arithmetic
    def dot2(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        return np.einsum("ijk,ijk->ij", p, q).astype(np.float64)

    # Weights fixed at their sky-limited optimum (profile / sky variance) for every star:
    # the estimator is then the same linear functional of the pixels for faint and bright
    # stars, so seeing changes along the exposure scale all stars alike and the ensemble
    # normalisation removes them. (Horne's source term in the weights would make the seeing
    # response depend on brightness; it gains little SNR for the bright stars it affects.)
    # The errors use the full variance, source included.
    pv = prof / var_sky

    def fit_flux(a: np.ndarray, p: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The flux of each sample for weights ``a`` and profile ``p``, and sum(a p)."""
        den = dot2(a, p)
        return np.where(den > 0, dot2(a, d) / np.where(den > 0, den, 1.0), 0.0), den

    a = w * pv
    f, den = fit_flux(a, prof, d)
    # one rejection pass: the worst pixel of a sample, if far off the fitted profile
    model = f.astype(f32)[:, :, None] * prof
    var = var_sky + np.maximum(model, f32(0.0)) * inv_gain
    z2 = w * (d - model) ** 2 / (var + (f32(model_error) * model) ** 2)
    # (the maximum over a pixel row by w - 1 elementwise passes: a reduction over
    # the short last axis costs a loop per sample)
    worst = z2[:, :, :1].copy()
    for j in range(1, z2.shape[2]):
        np.maximum(worst, z2[:, :, j:j + 1], out=worst)
    reject = (z2 >= worst) & (worst > clip_sigma ** 2)
    del model, var, z2
    hit = np.flatnonzero(reject.any(axis=(1, 2)))
    if hit.size:
        flags |= np.where(_any_across(reject), FLAG_OUTLIER, 0).astype(np.uint16)
        # the fit again for the trails that lost a pixel (the others' weights, flux and
        # normalisation are unchanged: the same numbers, not computed twice)
        w[hit] = np.where(reject[hit], f32(0.0), w[hit])
        a[hit] = w[hit] * pv[hit]
        f[hit], den[hit] = fit_flux(a[hit], prof[hit], d[hit])
    safe = np.where(den > 0, den, 1.0)
    fit = f.astype(f32)[:, :, None] * prof
    var = var_sky + np.maximum(fit, f32(0.0)) * inv_gain
    err = np.where(den > 0, np.sqrt(dot2(a * a, var)) / safe, np.inf)
    resid = d - fit
    del fit
    resid2 = dot2(w, resid ** 2 / var)
    npix = np.einsum("ijk->ij", w).astype(np.float64)
    chi2 = resid2 / np.maximum(npix - 1.0, 1.0)
    kept = den / np.maximum(dot2(prof, pv), 1e-300)
    # light displaced across the trail: least-squares coefficient of the profile's derivative
    # in the residual (odd, so nearly orthogonal to the profile); a neighbour's light moves it,
    # the star's own brightening does not
    dprof = ((profile.pixel(d_eval + 0.05) - profile.pixel(d_eval - 0.05)) / 0.1).astype(f32)
    dprof = np.ascontiguousarray(np.broadcast_to(dprof, g.d.shape))
    aw = w * dprof / var
    dden = dot2(aw, dprof)
    dsafe = np.where(dden > 0, dden, 1.0)
    shift = np.where(dden > 0, dot2(aw, resid) / dsafe, 0.0)
    shift_err = np.where(dden > 0, 1.0 / np.sqrt(dsafe), np.inf)
    del aw, resid, var, a

    cov = _coverage(g.s, geom.length_px, profile)
    margin = 1.5 * profile.fwhm
    cx, cy = g.ix[:, :, h], g.iy[:, :, h]
    near_border = (cx < margin) | (cy < margin) | (cx > nx - 1 - margin) | (cy > ny - 1 - margin)
    flags |= np.where(near_border, FLAG_EDGE, 0).astype(np.uint16)
    flags |= np.where(cov < 0.9, FLAG_EDGE, 0).astype(np.uint16)
    cov = np.maximum(cov, 0.05)
    f = f / cov
    err = err / cov
    good = ((flags & _UNUSABLE) == 0) & (core_bad == 0) & (kept >= 0.7) & np.isfinite(err)
    ux, uy = geom.unit
    xs = x0[:, None] + g.s * ux
    ys = y0[:, None] + g.s * uy
    t = g.s * geom.seconds_per_px
    return LightCurves(flux=f, err=err, flags=flags, good=good, t=t, x=xs, y=ys, chi2=chi2,
                       s=g.s, coverage=cov, shift=shift / cov, shift_err=shift_err / cov)


def pixels_at(arr: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Return ``arr`` (ny, nx) at the flat pixel indices ``flat`` (any shape), same dtype."""
    if arr.flags.c_contiguous:
        return np.take(arr.reshape(-1), flat)
    return arr[np.divmod(flat, arr.shape[1])]


def _any_across(b: np.ndarray) -> np.ndarray:
    """``b.any(axis=2)`` for a bool (n, m, w) grid, by w - 1 elementwise ORs (a reduction
    over the short last axis costs a loop per sample)."""
    out = b[:, :, 0].copy()
    for j in range(1, b.shape[2]):
        out |= b[:, :, j]
    return out


def grid_reader(g: TrailGrid, shape: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """Return ``read(arr)``: an (ny, nx) image at every pixel of the grid ``g``, (n, m, w).

    Pixels off the image read the nearest edge pixel (``g.inside`` tells them). A trail
    along a pixel axis whose grid is a plain rectangle of the image (its column steps by one
    per sample and its row by one per offset, all on the image: nearly every trail) is
    copied as a block from a sliding-window view, rows of contiguous pixels; the others are
    gathered through a flat index. The same values either way.
    """
    ny, nx = shape
    n, m, w = g.ix.shape
    iy1 = g.iy[:, :1, :] if g.iy.strides[1] == 0 else None
    rect = np.zeros(n, dtype=bool)
    if iy1 is not None and n and m > 1 and w > 1 and ny >= w and nx >= m:
        sk = int(np.sign(g.ix[0, 1, 0] - g.ix[0, 0, 0])) or 1
        sj = int(np.sign(iy1[0, 0, 1] - iy1[0, 0, 0])) or 1
        rect = ((g.ix == g.ix[:, :1, :1] + sk * np.arange(m)[None, :, None]).all(axis=(1, 2))
                & (iy1[:, 0, :] == iy1[:, 0, :1] + sj * np.arange(w)[None, :]).all(axis=1)
                & g.inside.all(axis=(1, 2)))
    rows = np.flatnonzero(rect)
    rest = np.flatnonzero(~rect)
    iy_rest = (g.iy if iy1 is None else iy1)[rest]
    flat = np.clip(iy_rest, 0, ny - 1) * nx + np.clip(g.ix[rest], 0, nx - 1)
    if rows.size:
        c0 = g.ix[rows, 0 if sk > 0 else m - 1, 0]
        r0 = iy1[rows, 0, 0 if sj > 0 else w - 1]

    def read(arr: np.ndarray) -> np.ndarray:
        if not rows.size:
            return pixels_at(arr, flat)
        out = np.empty((n, m, w), dtype=arr.dtype)
        blocks = sliding_window_view(arr, (w, m))[r0, c0]                  # (k, w, m)
        out[rows] = blocks[:, ::sj, ::sk].transpose(0, 2, 1)
        if rest.size:
            out[rest] = pixels_at(arr, flat)
        return out

    return read


def flag_neighbours(lc: LightCurves, contamination: np.ndarray, *,
                    model_error: float = 0.1, blend_sigma: float = 3.0) -> LightCurves:
    """Add the neighbour model's uncertainty to the errors; flag BLEND where it matters.

    Parameters
    ----------
    lc : LightCurves
        Extracted with the neighbours' modelled light already subtracted from the pixels.
    contamination : ndarray, shape (n, m)
        :attr:`Contamination.flux` (before the end-coverage division).
    model_error : float
        Fractional uncertainty of the neighbour model.
    blend_sigma : float
        Samples where ``model_error x contamination > err / blend_sigma`` are flagged BLEND
        and unusable.
    """
    c = contamination / lc.coverage
    err = np.sqrt(lc.err ** 2 + (model_error * c) ** 2)
    blend = model_error * c > lc.err / blend_sigma
    flags = lc.flags | np.where(blend, FLAG_BLEND, 0).astype(np.uint16)
    return replace(lc, err=err, flags=flags, good=lc.good & ~blend)


@dataclass(frozen=True)
class Contamination:
    """Light of neighbouring trails inside each trail's extraction, from a model of them.

    Attributes
    ----------
    flux : ndarray, float64, shape (n, m)
        Flux the neighbours add to each sample's optimal estimate, ADU per sample (the same
        scale as an uncorrected sample: before the end-coverage division).
    fraction : ndarray, float64, shape (n,)
        Largest contamination of a trail relative to its own interior flux.
    n_pairs : int
        Neighbour pairs considered.
    pixels : ndarray, float64, shape (n, m, 2 half_width + 1) or None
        The neighbours' modelled light in each pixel of each trail's extraction grid, ADU.
    """

    flux: np.ndarray
    fraction: np.ndarray
    n_pairs: int
    pixels: np.ndarray | None = None


def neighbour_contamination(x0: np.ndarray, y0: np.ndarray, geom: DriftGeometry,
                            profile: LineProfile, baseline: np.ndarray, s: np.ndarray,
                            half_width: int, *, pixels: bool = True) -> Contamination:
    """Model the flux each trail's neighbours put into its extraction window.

    Each neighbour is a uniform trail of per-sample flux ``baseline`` (interior level), blurred
    by the line profile along and across; its share in the target's optimal estimate is the
    overlap of the two across-trail profiles (sky-limited weights) times the neighbour's
    coverage at the target's sample. All neighbour pairs at once: a KD-tree gives the pairs,
    the rest is arrays of shape (pairs, m).

    Parameters
    ----------
    x0, y0 : ndarray, shape (n,)
        t = 0 ends of the trails.
    geom : DriftGeometry
    profile : LineProfile
    baseline : ndarray, shape (n,)
        Interior flux of each trail, ADU per sample (non-positive: ignored).
    s : ndarray, shape (n, m)
        Along-trail coordinate of each sample (:attr:`TrailGrid.s`).
    half_width : int
        Half width of the extraction window, pixels.
    pixels : bool
        Also model the light pixel by pixel (:attr:`Contamination.pixels`, (n, m, w)
        float64); without it ``pixels`` is None.
    """
    from scipy.spatial import cKDTree

    x0 = np.asarray(x0, float)
    y0 = np.asarray(y0, float)
    n, m = s.shape
    out = np.zeros((n, m))
    pix = np.zeros((n, m, 2 * half_width + 1)) if pixels else None
    if n < 2:
        return Contamination(out, np.zeros(n), 0, pix)
    ux, uy = geom.unit
    L = geom.length_px
    reach_d = half_width + 3.0 * profile.fwhm
    reach_s = L + 3.0 * profile.fwhm
    xc = x0 + ux * L / 2
    yc = y0 + uy * L / 2
    pairs = cKDTree(np.c_[xc, yc]).query_pairs(float(np.hypot(reach_d, reach_s)),
                                               output_type="ndarray")
    if pairs.size == 0:
        return Contamination(out, np.zeros(n), 0, pix)
    i = np.concatenate([pairs[:, 0], pairs[:, 1]])   # target
    j = np.concatenate([pairs[:, 1], pairs[:, 0]])   # neighbour
    dx, dy = x0[j] - x0[i], y0[j] - y0[i]
    ds = dx * ux + dy * uy
    dd = dx * -uy + dy * ux
    keep = (np.abs(dd) <= reach_d) & (np.abs(ds) <= reach_s) & (baseline[j] > 0)
    i, j, ds, dd = i[keep], j[keep], ds[keep], dd[keep]
    if i.size == 0:
        return Contamination(out, np.zeros(n), 0, pix)
    # across overlap: target window pixel distances (sub-pixel phase of the target's centre)
    off = np.arange(-half_width, half_width + 1, dtype=float)
    frac_d = (np.rint(y0[i] * ux - x0[i] * uy) - (y0[i] * ux - x0[i] * uy))  # pixel phase
    d_t = off[None, :] + frac_d[:, None]
    p_t = profile.pixel(d_t)
    p_n = profile.pixel(d_t - dd[:, None])
    overlap = (p_t * p_n).sum(axis=1) / (p_t * p_t).sum(axis=1)
    # neighbour's coverage at the target's samples (its own along coordinate is s - ds)
    cov = profile.cdf(s[i] - ds[:, None]) - profile.cdf(s[i] - ds[:, None] - L)
    contrib = (overlap * baseline[j])[:, None] * cov
    # np.bincount adds its weights in input order, as np.add.at does (the same sums to
    # the last bit), without add.at's per-element overhead
    out = np.bincount((i[:, None] * m + np.arange(m)).ravel(), weights=contrib.ravel(),
                      minlength=n * m).reshape(n, m)
    if pixels:
        w = 2 * half_width + 1
        per_pix = (baseline[j][:, None] * cov)[:, :, None] * p_n[:, None, :]
        pix = np.bincount((i[:, None] * (m * w) + np.arange(m * w)).ravel(),
                          weights=per_pix.ravel(), minlength=n * m * w).reshape(n, m, w)
    base = np.where(baseline > 0, baseline, np.inf)
    return Contamination(out, out.max(axis=1) / base, int(i.size), pix)


def extract_trails(image: np.ndarray, x0: np.ndarray, y0: np.ndarray, geom: DriftGeometry, *,
                   fwhm_guess: float, flux_guess: np.ndarray, sky: np.ndarray | float,
                   gain: float, read_noise: float, saturate: float = np.inf,
                   dq: np.ndarray | None = None,
                   labels: np.ndarray | None = None,
                   usable: np.ndarray | None = None,
                   ) -> tuple[LightCurves, LineProfile, Contamination]:
    """Extract every trail's light curve, with the profile fitted and neighbours subtracted.

    1. Neighbour contamination from the detection fluxes and the guessed profile picks the
       isolated trails (contamination < 1 %); 2. the line profile is fitted on them;
    3. the neighbours' light is modelled pixel by pixel (detection fluxes, fitted profile)
       and subtracted inside the optimal extraction of all trails; 4. the model, redone from
       the measured interior fluxes, sets the errors and BLEND flags
       (:func:`flag_neighbours`).

    Parameters
    ----------
    flux_guess : ndarray, shape (n,)
        Total flux of each trail from detection, ADU (for the first neighbour model).
    usable : ndarray, bool, shape (n,), optional
        Trails allowed in the profile fit (e.g. not saturated, not at the edge).
    Other parameters as :func:`extract_light_curves`.
    """
    x0 = np.atleast_1d(np.asarray(x0, float))
    y0 = np.atleast_1d(np.asarray(y0, float))
    guess = LineProfile.moffat(fwhm_guess, 3.0)
    h = int(np.ceil(1.3 * fwhm_guess)) + 1
    m = n_samples(geom)
    s0 = np.arange(m, dtype=float)[None, :] + np.zeros((x0.size, 1))
    per_sample = np.asarray(flux_guess, float) / max(geom.length_px, 1.0)
    first = neighbour_contamination(x0, y0, geom, guess, np.nan_to_num(per_sample), s0, h,
                                    pixels=False)
    isolated = first.fraction < 0.01
    if usable is not None:
        isolated &= np.asarray(usable, bool)
    profile = measure_profile(image, x0, y0, geom, np.broadcast_to(np.asarray(sky, float),
                                                                    x0.shape),
                              fwhm_guess=fwhm_guess, use=isolated, brightness=flux_guess)
    h = int(np.ceil(1.3 * profile.fwhm)) + 1
    grid_s = trail_grid(x0, y0, geom, 0, image.shape).s
    model = neighbour_contamination(x0, y0, geom, profile, np.nan_to_num(per_sample), grid_s, h)
    lc = extract_light_curves(image, x0, y0, geom, profile=profile, sky=sky, gain=gain,
                              read_noise=read_noise, saturate=saturate, dq=dq, labels=labels,
                              half_width=h, neighbours=model.pixels)
    interior = lc.good & (lc.coverage > 0.9)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        base = row_nanmedian(np.where(interior, lc.flux, np.nan))
    base = np.where(np.isfinite(base), base, per_sample)
    # the measured levels give the final neighbour model: its uncertainty decides BLEND flags
    con = neighbour_contamination(x0, y0, geom, profile, np.nan_to_num(base), lc.s, h,
                                  pixels=False)
    return flag_neighbours(lc, con.flux), profile, con


@dataclass(frozen=True)
class EndLight:
    """Light on a trail's line beyond each of its ends (``end_excess(..., per_end=True)``).

    Every attribute is float64, shape (n, 2): column 0 the start (t = 0) end, 1 the far end;
    0 where nothing is there.

    Attributes
    ----------
    z : ndarray
        Significance of the light beyond the end (as :func:`end_excess`).
    start_px : ndarray
        Where that light starts, pixels from the end, when it clearly starts beyond the end
        (a FWHM or more past the window's start, fainter before by 3 sigma) and runs on: a
        neighbour that follows the trail on its line without overlapping it. 0 when it
        starts at the end (an overlapping neighbour).
    reach_px : ndarray
        How far beyond the end the cumulative excess is most significant: where an
        overlapping neighbour's trail stops. Light running to the end of the window looked
        at (``0.7 FWHM + L / 2``) is followed over a second window as long; at its end the
        reach is a lower bound.
    level : ndarray
        Mean excess per sample from the end out to ``reach_px``, as a fraction of the
        star's baseline.
    """

    z: np.ndarray
    start_px: np.ndarray
    reach_px: np.ndarray
    level: np.ndarray


def end_excess(image: np.ndarray, x0: np.ndarray, y0: np.ndarray, geom: DriftGeometry, *,
               profile: LineProfile, sky: np.ndarray | float, gain: float, read_noise: float,
               baseline: np.ndarray, dq: np.ndarray | None = None,
               end_levels: np.ndarray | None = None, per_end: bool = False
               ) -> np.ndarray | EndLight:
    """Significance of light on the trail's line beyond both of its ends, per trail.

    A star trail ends: beyond either end only its PSF wing (modelled, subtracted) and sky remain
    on its centre line, from 0.7 FWHM past the end over half a trail length. A
    second star drifting along the same line (a collinear neighbour the detector merged into
    this trail) leaves its own trail there. Its light inside the trail looks like a step or a
    long "event", and lies on the centre line, so this is how it is recognised.

    Returns
    -------
    ndarray, float64, shape (n,)
        Largest over the two ends, and over the first k samples beyond each end (k >= 3), of
        the summed flux beyond the end over its error, counting only excesses above 1 % of
        ``baseline`` per sample; 0 where nothing is there.

    ``end_levels`` (n, 2), when given, is the star's flux per sample next to its start and its
    end (e.g. the median of the last few usable samples): the wing beyond an end is modelled
    from it, so a star brightening near an end (an event) is not taken for a neighbour.

    With ``per_end``, returns instead an :class:`EndLight`: the same per end, and where that
    light lies.
    """
    x0 = np.atleast_1d(np.asarray(x0, float))
    y0 = np.atleast_1d(np.asarray(y0, float))
    n = x0.size
    if n == 0:
        return EndLight(*(np.zeros((0, 2)),) * 4) if per_end else np.zeros(0)
    h = int(np.ceil(1.3 * profile.fwhm)) + 1
    gap = int(np.ceil(0.7 * profile.fwhm))
    span = max(int(geom.length_px // 2), 4)
    ux, uy = geom.unit
    L = geom.length_px
    out = np.zeros(n)
    z_ends: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    reach: list[np.ndarray] = []
    levels: list[np.ndarray] = []
    baseline = np.broadcast_to(np.asarray(baseline, float), (n,))
    sky_arr = np.broadcast_to(np.asarray(sky, float), (n,))[:, None, None]
    var = np.maximum(sky_arr, 0.0) / gain + (read_noise / gain) ** 2
    def line_light(rows: np.ndarray, start: float, sign: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Light on the line of trails ``rows`` over ``span`` px from ``start`` (along-trail
        coordinate), the star's own wing subtracted, read outward from the end: flux,
        variance and usable, each (len(rows), k)."""
        gx = x0[rows] + ux * start
        gy = y0[rows] + uy * start
        sub = DriftGeometry(geom.dx_dt, geom.dy_dt, span / geom.speed_px_s)
        g = trail_grid(gx, gy, sub, h, image.shape)
        # block reads of the rectangular windows (off-image pixels read the nearest edge
        # pixel, as clipped indices do), several times faster than 2-D fancy indexing
        read = grid_reader(g, image.shape)
        ok = g.inside.copy()
        if dq is not None:
            ok &= read(dq) == 0
        p_eval = profile.pixel(_mid_sample(g.d) if geom.along_x else g.d)
        prof = np.broadcast_to(p_eval, g.d.shape)
        # (the weights divided where the profile is evaluated, (n, 1, w) along x, then
        # broadcast: the same quotients as dividing the broadcast profile)
        w = np.where(ok, np.broadcast_to(p_eval / var[rows], g.d.shape), 0.0)
        # (product and sum over the short last axis fused: the same sums to float rounding)
        den = np.einsum("ijk,ijk->ij", w, prof)
        # (float64 pixels minus the sky in one pass: the float32 values convert exactly)
        pix = np.subtract(read(image), sky_arr[rows], dtype=float)
        f = np.einsum("ijk,ijk->ij", w, pix) / np.where(den > 0, den, 1.0)
        # minus the star's own PSF wing beyond its end
        s_along = start + np.arange(g.s.shape[1], dtype=float)
        level = np.asarray(baseline, float)[rows]
        if end_levels is not None:
            near = np.asarray(end_levels, float)[rows, 0 if sign < 0 else 1]
            level = np.where(np.isfinite(near), np.maximum(near, level), level)
        f = f - level[:, None] * (profile.cdf(s_along) - profile.cdf(s_along - L))[None, :]
        e2 = np.where(den > 0, 1.0 / np.where(den > 0, den, 1.0), 0.0)
        use = den > 0
        if sign < 0:  # the samples before the start run toward it: read them backwards
            f, e2, use = f[:, ::-1], e2[:, ::-1], use[:, ::-1]
        return f, e2, use

    every = np.arange(n)
    for sign, start in ((-1.0, -gap - span), (1.0, L + gap)):  # the two ends
        # outward from the end: a neighbour overlapping by less than half a trail leaves
        # light over its overlap only, so the excess is taken over the first k samples
        # for every k (from 3), and the most significant kept
        f, e2, use = line_light(every, start, sign)
        nuse = np.cumsum(use, axis=1)
        tot = np.cumsum(np.where(use, f, 0.0), axis=1)
        cvar = np.cumsum(np.where(use, e2, 0.0), axis=1)
        mean = tot / np.maximum(nuse, 1)
        zk = np.where((nuse >= 3) & (mean > 0.01 * np.asarray(baseline, float)[:, None]) &
                      (cvar > 0), tot / np.sqrt(np.where(cvar > 0, cvar, 1.0)), 0.0)
        out = np.maximum(out, zk.max(axis=1) if zk.size else 0.0)
        if per_end and zk.size:
            z_ends.append(zk.max(axis=1))
            # where the light lies: the most significant run of samples [a, b) outward (a
            # neighbour's trail is light of about constant level, between its blurred ends)
            k_all = zk.shape[1]
            # only trails with some light beyond the end need to know where it lies
            lit = np.flatnonzero(zk.max(axis=1) > 3.0)
            c_f, c_v, c_n = (np.concatenate([np.zeros((lit.size, 1)), c[lit]], axis=1)
                             for c in (tot, cvar, nuse.astype(float)))
            box = c_f[:, None, :] - c_f[:, :, None]                     # (n, a, b)
            bvar = c_v[:, None, :] - c_v[:, :, None]
            bn = c_n[:, None, :] - c_n[:, :, None]
            ab = np.arange(k_all + 1)
            zb = np.where((ab[None, :] > ab[:, None])[None] & (bn >= 3) & (bvar > 0) &
                          (box > 0.01 * baseline[lit, None, None] * bn),
                          box / np.sqrt(np.where(bvar > 0, bvar, 1.0)), 0.0)
            a_b, b_b = np.unravel_index(np.argmax(zb.reshape(lit.size, (k_all + 1) ** 2),
                                                  axis=1), zb.shape[1:])
            rows = np.arange(lit.size)
            # light that starts a FWHM or more beyond the end (a neighbour's blurred start is
            # a FWHM wide: less could be an overlapping one's light cut by noise or by the
            # wing model), clearly fainter before than in the run (by 3 sigma of the run's
            # level), and runs on to the end of the window: a neighbour that follows the
            # trail on its line without overlapping it
            b_level = box[rows, a_b, b_b] / np.maximum(bn[rows, a_b, b_b], 1.0)
            deficit = (b_level * c_n[rows, a_b] - c_f[rows, a_b]) / np.sqrt(
                np.maximum(c_v[rows, a_b], 1e-300))
            apart = (a_b >= int(np.ceil(profile.fwhm))) & (b_b >= k_all - 2) & (deficit > 3.0)
            start_here = np.zeros(n)
            start_here[lit] = np.where(apart, gap + a_b, 0.0)
            starts.append(start_here)
            # for light of constant level out to some distance the cumulative S/N peaks there
            kz = np.argmax(zk, axis=1)
            reach_here = np.where(zk.max(axis=1) > 0, gap + kz + 1.0, 0.0)
            level_here = np.where(zk.max(axis=1) > 0, (tot[every, kz] / np.maximum(
                nuse[every, kz], 1)) / np.where(baseline > 0, baseline, np.inf), 0.0)
            # where it runs to the end of the window, a second window beyond tells how far
            # (a neighbour overlapping less than half the trail; few trails)
            on = lit[kz[lit] == k_all - 1]
            if on.size:
                f2, e22, use2 = line_light(on, start + sign * span, sign)
                dup = max(k_all - span, 0)      # samples the two windows share
                f2, e22, use2 = f2[:, dup:], e22[:, dup:], use2[:, dup:]
                use_l = np.concatenate([use[on], use2], axis=1)
                nuse_l = np.cumsum(use_l, axis=1)
                tot_l = np.cumsum(np.where(use_l, np.concatenate([f[on], f2], axis=1), 0.0),
                                  axis=1)
                cvar_l = np.cumsum(np.where(use_l, np.concatenate([e2[on], e22], axis=1), 0.0),
                                   axis=1)
                zk_l = np.where((nuse_l >= 3) & (tot_l > 0.01 * baseline[on, None] * nuse_l) &
                                (cvar_l > 0), tot_l / np.sqrt(np.where(cvar_l > 0, cvar_l, 1.0)),
                                0.0)
                kl = np.argmax(zk_l, axis=1)
                rl = np.arange(on.size)
                reach_here[on] = gap + kl + 1.0
                level_here[on] = tot_l[rl, kl] / np.maximum(nuse_l[rl, kl], 1) / np.where(
                    baseline[on] > 0, baseline[on], np.inf)
            reach.append(reach_here)
            levels.append(level_here)
        elif per_end:
            z_ends.append(np.zeros(n))
            starts.append(np.zeros(n))
            reach.append(np.zeros(n))
            levels.append(np.zeros(n))
    if per_end:
        return EndLight(*(np.stack(v, axis=1) for v in (z_ends, starts, reach, levels)))
    return out
