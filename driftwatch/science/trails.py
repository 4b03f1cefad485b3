"""Find star trails on a drift-scan CCD with a matched filter.

A star drawn during the drift is a line segment of length ``L`` (from the WCS, the drift rate and
the exposure time, see :mod:`driftwatch.science.geometry`) convolved with the PSF. The matched
filter for it is that segment shape; its response divided by the filtered noise is the
signal-to-noise map, thresholded in units of the noise.

Fast path (DECam: the trail lies along pixel x). The kernel is separable: a box of ``L`` pixels
along x, then a Gaussian of the PSF width across (y). Along x the image is first summed in pairs
of columns (``bin_x``), which costs nothing in sensitivity for a box 38 px long and halves the
work; the box is a difference of cumulative sums, the Gaussian a short 1-D correlation. The cost
is a few passes over the image whatever the number of stars. General path (any other angle): the
2-D kernel (segment convolved with a Gaussian) applied by FFT.

Noise. For a kernel ``k`` applied to pixels of per-pixel noise ``rms``, the filtered noise is
``rms * sqrt(sum(k**2))`` (the background noise map is smooth on the kernel scale). Masked pixels
are replaced by the sky, so they add neither signal nor noise; the formula then over-estimates
the noise near masks, which only makes detection there more conservative. A robust estimate of
the width of the noise-only part of the S/N map (its lower half) corrects the remaining mismatch
(sep's clipped rms is biased a little low); the factor is reported as ``noise_scale``.

One detection per trail: local maxima of the S/N map above the threshold are suppressed when a
stronger maximum lies within the trail footprint (an ellipse of semi-axes ``L`` along the trail
and, across, the distance at which the stronger trail's PSF falls to the threshold, which keeps
the two ridges beside a masked saturated core together). Positions are then refined to sub-pixel
precision: across the trail by a Gaussian-windowed centroid, along it by a box-windowed centroid
of the along-trail profile; the t = 0 end is the centre minus half the trail length along the
direction of motion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.ndimage as ndi
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import ndtr
from scipy.spatial import cKDTree

from driftwatch.errors import ScienceError
from driftwatch.science.background import Background
from driftwatch.science.geometry import DriftGeometry

__all__ = ["TrailDetections", "FilterMap", "detect_trails", "find_streak_members",
           "trail_filter_map",
           "trail_filter_reference", "trail_kernel"]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
#: Along-trail search range around the filter peak (pixels): the binned filter peak lies within
#: +-2.5 px of the truth for S/N > 8 and wanders to ~+-8 px near the threshold; a wider range
#: lets a bright neighbour along the same row pull the fit. Capped at half a trail length.
_SHIFT_RANGE = 12.0
#: A detection is compact (not a trail) when the light outside its brightest FWHM-wide
#: stretch along the trail has a S/N below this.
_COMPACT_REST_SNR = 3.0
#: A detection with cosmic-ray pixels is kept only if the rest of its trail has this S/N.
_COMPACT_CR_SNR = 5.0
#: Trails at least this bright (filter S/N) measure the common transparency trend.
_TREND_MIN_SNR = 50.0
#: Two collinear trails replace one when they fit its along-trail profile better by this F ratio
#: (improvement over the residual variance per sample of the two-trail fit).
_SPLIT_F = 40.0
#: ... and when the two trails are at least this many FWHM apart along the drift (closer pairs
#: mimic the soft ends of a Moffat PSF, and their light curves differ only near the ends).
_SPLIT_MIN_FWHM = 2.0
#: ... and when the fainter trail holds at least this share of the light (below it, the
#: template's own mismatch on the brightest stars, whose wings it does not follow exactly,
#: would split single stars).
_SPLIT_MIN_SHARE = 0.02
_SHIFT_STEP = 0.5
#: Detections x trail pairs per block of the two-trail search (256 kB of float64).
_PAIR_BLOCK = 32768


@dataclass(frozen=True)
class TrailDetections:
    """Trails found on one drift CCD. Every array has shape (n,), one entry per trail.

    Pixel coordinates are zero-based, x along numpy axis 1 (FITS NAXIS1), y along axis 0.

    Attributes
    ----------
    x0, y0 : ndarray, float64
        PSF centre at shutter open (t = 0 end of the trail), pixels.
    x1, y1 : ndarray, float64
        PSF centre at shutter close (t = EXPTIME end), pixels.
    xc, yc : ndarray, float64
        Trail centre (midpoint of the best-fitting trail model), pixels.
    snr : ndarray, float32
        Matched-filter signal-to-noise at the detection peak (sky noise only).
    flux, flux_err : ndarray, float32
        Sky-subtracted sum over the trail aperture (trail length plus 1.5 FWHM at each end,
        +-1.5 FWHM across), ADU, and its error (sky + read noise from the noise map, plus source
        Poisson noise when the gain is known). Masked pixels count zero: a saturated trail's
        flux is a lower limit.
    saturated : ndarray, bool
        The trail aperture contains saturated or bleed pixels (DQ 3/4 or >= SATURATE): the
        position is still measured from the unsaturated wings, the flux is not usable.
    masked : ndarray, bool
        The trail aperture contains any masked pixel (see ``background.MASK_CODES``).
    edge : ndarray, bool
        Part of the trail (within one FWHM) lies outside the CCD: centre and flux are biased.
    geometry : DriftGeometry
        The trail motion used (pixels per second, exposure time).
    fwhm_px : float
        PSF FWHM used for the filter and the apertures, pixels.
    threshold_sigma : float
        Detection threshold in units of the filtered noise.
    noise_scale : float
        Measured width of the noise part of the S/N map before correction (1 = the noise map
        predicted it exactly); the S/N values are divided by ``max(1, noise_scale)``.
    method : str
        ``"separable"`` (trail along x) or ``"fft"`` (any other direction).
    n_compact : int
        Compact (non-trail) peaks found and, unless asked otherwise, left out.
    n_streak : int
        Detections found strung along a straight line (a satellite streak) and left out.
    trend : float
        Common fractional brightness change from the start to the end of the trails (the
        transparency trend over the exposure, from trails with S/N >= 50; 0 when too few),
        included in the along-trail position fit.
    extra_length : ndarray, float64, shape (n,), or None
        The trail's light is this many pixels longer than a single star's trail here (the
        stacked bright trails of the CCD): a fraction of a pixel from the plate scale, the
        separation of two stars on one line too close to be told apart when it is more.
        0 when there were too few bright trails to know a single star's trail.
    """

    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    xc: np.ndarray
    yc: np.ndarray
    snr: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    saturated: np.ndarray
    masked: np.ndarray
    edge: np.ndarray
    geometry: DriftGeometry
    fwhm_px: float
    threshold_sigma: float
    noise_scale: float
    method: str
    n_compact: int = 0
    n_streak: int = 0
    trend: float = 0.0
    extra_length: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        if np.size(self.extra_length) != self.x0.size:  # not measured: nothing known
            object.__setattr__(self, "extra_length", np.zeros(self.x0.size))

    @property
    def n(self) -> int:
        """Number of detected trails."""
        return int(self.x0.size)

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class FilterMap:
    """The matched-filter response of a CCD.

    Attributes
    ----------
    snr : ndarray, float32, shape (ny, m)
        Filter response divided by the predicted filtered noise (not yet corrected by
        ``noise_scale``). Row i is CCD row i.
    x_of_col : ndarray, float64, shape (m,)
        Pixel x coordinate of the kernel centre for each map column.
    """

    snr: np.ndarray
    x_of_col: np.ndarray


def _psf_sigma(fwhm_px: float) -> float:
    if not (np.isfinite(fwhm_px) and fwhm_px > 0):
        raise ScienceError(f"PSF FWHM must be positive, got {fwhm_px}")
    return float(fwhm_px) * _FWHM_TO_SIGMA


def _gauss_taps(sigma: float) -> np.ndarray:
    h = max(1, int(math.ceil(2.0 * sigma)))
    t = np.arange(-h, h + 1, dtype=np.float64)
    return np.exp(-0.5 * (t / sigma) ** 2).astype(np.float32)


def _box_geometry(length_px: float, nx: int, bin_x: int) -> tuple[int, int]:
    bin_x = max(1, int(bin_x)) if length_px >= 8 else 1
    lb = max(1, int(round(length_px / bin_x)))
    if (nx // bin_x) - lb + 1 < 1:
        raise ScienceError(f"trail length {length_px:.1f} px exceeds the CCD width {nx} px")
    return bin_x, lb


def _clean_image(image: np.ndarray, background: Background, mask: np.ndarray | None) -> np.ndarray:
    """Return float32 sky-subtracted pixels, masked/non-finite pixels set to zero (sky)."""
    data = np.array(image, dtype=np.float32, copy=True)
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= mask
    data -= background.full_back()
    data[bad] = 0.0
    return data


def _box_gauss_rows(img: np.ndarray, bad: np.ndarray | None, fill: np.float32, bin_x: int,
                    lb: int, taps: np.ndarray, block: int = 64,
                    post: Callable[[np.ndarray, int], None] | None = None) -> np.ndarray:
    """Box of ``lb`` binned columns along x, then the Gaussian ``taps`` across y, by row blocks.

    Parameters
    ----------
    img : ndarray, shape (ny, nx)
        Pixels, ADU.
    bad : ndarray of bool, shape (ny, nx), or None
        Pixels replaced by ``fill``.
    fill : float32
        Value of the bad pixels (the global sky).
    bin_x, lb : int
        Columns summed per bin, bins per box.
    taps : ndarray, float32, shape (2 h + 1,)
        Symmetric Gaussian taps.
    block : int
        Rows per block.
    post : callable, optional
        ``post(rows, r0)`` is applied in place to each block of output rows (CCD rows from
        ``r0``) while it is still in the cache.

    Returns
    -------
    ndarray, float32, shape (ny, nx // bin_x - lb + 1)
        The box sums (float32 running sums, as a whole-image ``cumsum`` gives them) filtered
        across y with zero beyond the top and bottom rows: the numbers of
        ``ndi.correlate1d(box, taps, axis=0, mode="constant")`` to float32 rounding (the
        taps are applied in float32, the symmetric taps paired).

    Notes
    -----
    Every step is row-local but the Gaussian, which needs ``h`` rows of box on each side: a
    block of rows plus that halo stays in the CPU cache through all steps, instead of four
    whole-image float32 temporaries (binned, running sum, box, filtered) and a strided
    filter pass along axis 0 (3x slower than along rows). The halo's ``2 h`` rows of box are
    carried from one block to the next rather than computed twice.
    """
    ny, nx = img.shape
    nb = nx // bin_x
    m = nb - lb + 1
    h = taps.size // 2
    fw = taps.astype(np.float32)
    out = np.empty((ny, m), dtype=np.float32)
    nrow = block + 2 * h
    pix = np.empty((nrow, nb * bin_x), dtype=np.float32)
    binned = np.empty((nrow, nb), dtype=np.float32)
    csum = np.empty((nrow, nb), dtype=np.float32)
    # float32 throughout: the S/N map is float32 anyway and float64 passes cost twice the
    # memory traffic (the response differs from a float64 sum in the last digit only)
    box = np.zeros((nrow, m), dtype=np.float32)
    tmp = np.empty((block, m), dtype=np.float32)

    def box_rows(lo: int, hi: int, dst: np.ndarray) -> None:
        """Box sums of CCD rows ``lo .. hi`` into ``dst`` (hi - lo, m)."""
        k = hi - lo
        p, bn = pix[:k], binned[:k]
        # the rows copied, their bad pixels filled, then the columns summed in bins: one
        # contiguous pass for the fill instead of a strided np.where per column phase
        np.copyto(p, img[lo:hi, :nb * bin_x])
        if bad is not None:
            np.copyto(p, fill, where=bad[lo:hi, :nb * bin_x])
        if bin_x == 1:
            bn[...] = p
        else:
            np.add(p[:, 0::bin_x], p[:, 1::bin_x], out=bn)
            for q in range(2, bin_x):
                bn += p[:, q::bin_x]
        cs = np.cumsum(bn, axis=1, dtype=np.float32, out=csum[:k])
        dst[:, 0] = cs[:, lb - 1]
        np.subtract(cs[:, lb:], cs[:, :nb - lb], out=dst[:, 1:])

    # box buffer row i holds CCD row r0 - h + i; rows beyond the image stay zero (mode
    # "constant")
    for r0 in range(0, ny, block):
        r1 = min(ny, r0 + block)
        if r0 == 0:
            lo = 0
        else:
            # rows r0 - h .. r0 + h, the previous block's bottom halo, are computed already
            box[:2 * h] = box[block:block + 2 * h]
            lo = r0 + h
        hi = min(ny, r1 + h)
        base = r0 - h
        if hi > lo:
            box_rows(lo, hi, box[lo - base:hi - base])
        if hi - base < nrow:
            box[max(hi, lo) - base:] = 0.0
        n = r1 - r0
        a, t = out[r0:r1], tmp[:n]
        np.multiply(box[h:h + n], fw[h], out=a)
        for j in range(1, h + 1):
            np.add(box[h + j:h + j + n], box[h - j:h - j + n], out=t)
            t *= fw[h + j]
            a += t
        if post is not None:
            post(out[r0:r1], r0)
    return out


def trail_filter_map(image: np.ndarray, background: Background, mask: np.ndarray | None,
                     geometry: DriftGeometry, fwhm_px: float, *, bin_x: int = 2) -> FilterMap:
    """Return the separable matched-filter S/N map of a CCD whose trails lie along x.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        CCD pixels, ADU, sky included.
    background : Background
        Sky and noise maps of this CCD.
    mask : ndarray of bool, shape (ny, nx), or None
        Pixels with zero weight.
    geometry : DriftGeometry
        Trail motion; must be along x (``geometry.along_x``).
    fwhm_px : float
        PSF FWHM, pixels.
    bin_x : int
        Columns summed before the box filter (2 by default; 1 for trails shorter than 8 px;
        4 halves the filter time again but loses ~1% completeness at S/N 10).
        The box is ``bin_x * round(L / bin_x)`` pixels long.

    Returns
    -------
    FilterMap
    """
    if not geometry.along_x:
        raise ScienceError("the separable filter needs a trail along pixel x")
    ny, nx = image.shape
    sigma = _psf_sigma(fwhm_px)
    bin_x, lb = _box_geometry(geometry.length_px, nx, bin_x)
    nb = nx // bin_x
    img = np.asarray(image)
    bad = mask
    # Masked pixels take the global sky value: after the local sky is subtracted below they add
    # only the (small) local-minus-global sky difference, and no noise.
    fill = np.float32(background.global_back)
    taps = _gauss_taps(sigma)
    x_of_col = np.arange(nb - lb + 1) * bin_x + (bin_x * lb - 1) / 2.0
    # The sky is smooth on the kernel scale: subtracting sky(centre) * sum(kernel) after the
    # filter equals filtering the sky-subtracted image, at a quarter of the cost. Rows near the
    # top and bottom see a truncated Gaussian, hence the per-row kernel sum.
    ksum_rows = ndi.correlate1d(np.ones(ny, dtype=np.float32), taps, mode="constant", cval=0.0)
    ksq_rows = ndi.correlate1d(np.ones(ny, dtype=np.float32), taps * taps, mode="constant",
                               cval=0.0)
    norm_rows = np.sqrt(bin_x * lb * ksq_rows.astype(np.float64)).astype(np.float32)
    # (Background.subtract_divide_rows, applied to each block of rows as it is filtered)
    scaling = background.row_scaling(x_of_col, (bin_x * lb) * ksum_rows, norm_rows)
    block = scaling.blk * max(1, round(64 / scaling.blk))
    # whether the map is finite, tested on each block while it is in the cache (rows that
    # finish() rewrites again after it), not by a whole-map pass
    finite = [True]

    def post(rows: np.ndarray, r0: int) -> None:
        scaling.apply(rows, r0)
        if finite[0] and not np.isfinite(rows).all():
            finite[0] = False

    filt = _box_gauss_rows(img, bad, fill, bin_x, lb, taps, block=block, post=post)
    scaling.finish(filt)
    if not (finite[0] and np.isfinite(filt[scaling.odd_rows()]).all()):
        # Non-finite pixels not covered by the mask: mask them and filter again (rare).
        nonfinite = ~np.isfinite(img)
        if nonfinite.any() and not (mask is not None and not (nonfinite & ~mask).any()):
            full = nonfinite if mask is None else (mask | nonfinite)
            return trail_filter_map(image, background, full, geometry, fwhm_px, bin_x=bin_x)
        filt[~np.isfinite(filt)] = 0.0
    return FilterMap(snr=filt, x_of_col=x_of_col)


def trail_kernel(geometry: DriftGeometry, fwhm_px: float) -> np.ndarray:
    """Return the 2-D trail kernel (segment convolved with a Gaussian PSF), float64, (k, k).

    The kernel is centred on its middle pixel; its sum is 1.
    """
    sigma = _psf_sigma(fwhm_px)
    ux, uy = geometry.unit
    length = geometry.length_px
    h = int(math.ceil(length / 2.0 + 3.0 * sigma))
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1].astype(np.float64)
    along = np.linspace(-length / 2.0, length / 2.0, max(2, int(math.ceil(length * 4)) + 1))
    k = np.zeros_like(xx)
    for a in along:  # a few hundred samples of a small kernel: built once per CCD
        k += np.exp(-0.5 * ((xx - a * ux) ** 2 + (yy - a * uy) ** 2) / sigma**2)
    return k / k.sum()


def _fft_filter_map(image: np.ndarray, background: Background, mask: np.ndarray | None,
                    geometry: DriftGeometry, fwhm_px: float) -> FilterMap:
    # imported here: scipy.signal brings scipy.optimize, stats and interpolate (~37 MB per
    # worker), and this general-angle path is not DECam's along-x drift
    from scipy.signal import fftconvolve

    data = _clean_image(image, background, mask)
    kern = trail_kernel(geometry, fwhm_px).astype(np.float32)
    filt = fftconvolve(data, kern[::-1, ::-1], mode="same").astype(np.float32)
    sig = background.full_rms() * np.float32(math.sqrt(float(np.sum(kern.astype(float) ** 2))))
    return FilterMap(snr=filt / sig, x_of_col=np.arange(image.shape[1], dtype=np.float64))


def trail_filter_reference(image: np.ndarray, back: np.ndarray, rms: np.ndarray,
                           mask: np.ndarray | None, width_px: int, fwhm_px: float) -> np.ndarray:
    """Direct, deliberately simple 2-D matched filter, to cross-check :func:`trail_filter_map`.

    Builds the full 2-D kernel (a box ``width_px`` wide along x times the same truncated
    Gaussian across y) and correlates it with the sky-subtracted image by explicit shifted sums
    over every kernel tap; the noise is ``sqrt(sum(k**2 * rms**2))`` summed pixel by pixel.

    Parameters
    ----------
    image, back, rms : ndarray, shape (ny, nx)
        Pixels, sky and per-pixel noise at full resolution, ADU.
    mask : ndarray of bool or None
        Pixels given zero weight (their sky-subtracted value is taken as 0).
    width_px : int
        Box width along x (``bin_x * lb`` of the fast filter).
    fwhm_px : float
        PSF FWHM, pixels.

    Returns
    -------
    ndarray, float64, shape (ny, nx - width_px + 1)
        S/N with the box starting at column ``s`` (the fast map's column ``j`` is ``s = bin_x*j``).
    """
    data = np.asarray(image, dtype=np.float64) - back
    if mask is not None:
        data = np.where(mask, 0.0, data)
    taps = _gauss_taps(_psf_sigma(fwhm_px)).astype(np.float64)
    h = taps.size // 2
    ny, nx = data.shape
    m = nx - width_px + 1
    pad = np.zeros((ny + 2 * h, nx))
    pad[h:h + ny] = data
    var = np.zeros((ny + 2 * h, nx))
    var[h:h + ny] = np.asarray(rms, dtype=np.float64) ** 2
    num = np.zeros((ny, m))
    den = np.zeros((ny, m))
    for dy in range(-h, h + 1):
        w = taps[dy + h]
        for dx in range(width_px):
            num += w * pad[h + dy:h + dy + ny, dx:dx + m]
            den += w * w * var[h + dy:h + dy + ny, dx:dx + m]
    return num / np.sqrt(den)


def _noise_scale(snr: np.ndarray) -> float:
    """Width of the noise part of an S/N map, from its negative half.

    Sources only add positive response, so the negative values are noise: their median
    absolute value is 0.6745 sigma for Gaussian noise.
    """
    sample = snr[:: max(1, snr.shape[0] // 500), :: max(1, snr.shape[1] // 200)]
    neg = sample[sample < 0]
    if neg.size < 100:
        return 1.0
    width = float(np.median(-neg)) / 0.6744897501960817
    return width if np.isfinite(width) and width > 0 else 1.0


def _local_maxima(snr: np.ndarray, threshold: float) -> np.ndarray:
    """Return flat indices of pixels above ``threshold`` not exceeded by any 8-neighbour."""
    ny, nx = snr.shape
    s = np.ascontiguousarray(snr)
    flat = s.ravel()
    # Along-trail neighbours first: they remove most candidates of a ridge, so the later
    # comparisons run on few pixels. Ties go to the lower index (one maximum per flat top):
    # strictly above the left neighbour, at least the right one. These two are whole-map
    # comparisons of adjacent columns (contiguous), ~4x cheaper than gathering the
    # neighbours of the ~400,000 pixels above the threshold; a neighbour beyond the edge is
    # the pixel itself, which keeps it.
    # (by blocks of rows, whose comparisons stay in the CPU cache)
    parts = []
    block = 64
    cand = np.empty((block, nx), dtype=bool)
    tmp = np.empty((block, max(nx - 1, 0)), dtype=bool)
    for r0 in range(0, ny, block):
        sb = s[r0:r0 + block]
        c = np.greater(sb, threshold, out=cand[:sb.shape[0]])
        if nx > 1:
            t = tmp[:sb.shape[0]]
            c[:, 1:] &= np.greater(sb[:, 1:], sb[:, :-1], out=t)
            c[:, :-1] &= np.greater_equal(sb[:, :-1], sb[:, 1:], out=t)
        parts.append(np.flatnonzero(c) + r0 * nx)
    idx = np.concatenate(parts) if parts else np.zeros(0, np.intp)
    del cand, tmp
    r, c = np.divmod(idx, nx)
    v = flat[idx]

    def step(x: np.ndarray, d: int, hi: int) -> np.ndarray:
        # x + d clipped to [0, hi] (a neighbour beyond the edge is taken at the edge)
        return x if d == 0 else (np.maximum(x - 1, 0) if d < 0 else np.minimum(x + 1, hi))

    for dr, dc in ((-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)):
        if idx.size == 0:
            break
        nbi = step(r, dr, ny - 1) * nx + step(c, dc, nx - 1)
        nb = flat[nbi]
        keep = (v > nb) | ((v == nb) & (nbi >= idx))
        idx, r, c, v = idx[keep], r[keep], c[keep], v[keep]
    return idx


def _suppress(x: np.ndarray, y: np.ndarray, snr: np.ndarray, along: float, ux: float, uy: float,
              across: np.ndarray) -> np.ndarray:
    """Non-maximum suppression over the trail footprint; return a keep mask."""
    n = x.size
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep
    a = x * ux + y * uy
    c = -x * uy + y * ux
    amax = float(across.max())
    tree = cKDTree(np.column_stack([a / along, c / amax]))
    pairs = tree.query_pairs(r=1.0, output_type="ndarray")
    if pairs.size == 0:
        return keep
    i, j = pairs[:, 0], pairs[:, 1]
    stronger = np.where(snr[i] >= snr[j], i, j)
    weaker = np.where(stronger == i, j, i)
    da = (a[i] - a[j]) / along
    dc = (c[i] - c[j]) / across[stronger]
    inside = da * da + dc * dc < 1.0
    keep[weaker[inside]] = False
    return keep


def _common_trend(p0: np.ndarray, p1: np.ndarray, box: np.ndarray, ramp: np.ndarray,
                  k0: np.ndarray, snr: np.ndarray) -> float:
    """Median fractional brightness trend (end minus start) of the bright trails, or 0."""
    bright = snr >= _TREND_MIN_SNR
    if np.count_nonzero(bright) < 5:
        return 0.0
    g00 = np.sum(box * box, axis=1)
    g01 = np.sum(box * ramp, axis=1)
    g11 = np.sum(ramp * ramp, axis=1)
    idx = np.flatnonzero(bright)
    kk = k0[idx]
    a0, a1 = p0[idx, kk], p1[idx, kk]
    det = g00[kk] * g11[kk] - g01[kk] ** 2
    amp = (g11[kk] * a0 - g01[kk] * a1) / det
    slope = (g00[kk] * a1 - g01[kk] * a0) / det
    ok = amp > 0
    if np.count_nonzero(ok) < 5:
        return 0.0
    trend = float(np.median(slope[ok] / amp[ok]))
    return float(np.clip(trend, -0.5, 0.5)) if np.isfinite(trend) else 0.0


def _edge_offset(prof: np.ndarray, a: np.ndarray, ac: np.ndarray, half_len: float,
                 sigma: float) -> float:
    """Midpoint of the half-maximum ends of the stacked profiles, relative to their fits.

    ``prof`` (m, na) along-trail profiles sampled at offsets ``a``, ``ac`` (m,) their fitted
    centres. Returns 0 when fewer than 10 profiles or the stack gives no clean answer.
    """
    if prof.shape[0] < 10 or half_len < 4 * sigma:
        return 0.0
    u = np.arange(-math.ceil(half_len + 4 * sigma), math.ceil(half_len + 4 * sigma) + 1.0)
    # Linear interpolation of every profile at ac + u (vectorised).
    pos = (ac[:, None] + u[None, :]) - a[0]
    i0 = np.clip(np.floor(pos).astype(np.intp), 0, a.size - 2)
    f = np.clip(pos - i0, 0.0, 1.0)
    rows = np.arange(prof.shape[0])[:, None]
    samp = prof[rows, i0] * (1 - f) + prof[rows, i0 + 1] * f
    plateau = np.median(samp[:, np.abs(u) < half_len - 2 * sigma], axis=1)
    ok = plateau > 0
    if ok.sum() < 10:
        return 0.0
    stack = np.median(samp[ok] / plateau[ok, None], axis=0)
    # Each end's level is taken just inside it (from 0.5 sigma, 5 px): the transparency near
    # the very start and end of the exposure is what sets those ends (measured on simulated
    # nights: 0.5 sigma gave WCS errors <= 0.05 px, 2 sigma up to 0.1 px).
    lo_in = (u > -half_len + 0.5 * sigma) & (u < -half_len + 0.5 * sigma + 5)
    hi_in = (u < half_len - 0.5 * sigma) & (u > half_len - 0.5 * sigma - 5)
    ends = []
    for level, region, rising in ((np.median(stack[lo_in]), u < -half_len + 2 * sigma, True),
                                  (np.median(stack[hi_in]), u > half_len - 2 * sigma, False)):
        uu, ss = u[region], stack[region] - level / 2.0
        if not rising:
            uu, ss = uu[::-1], ss[::-1]
        # First crossing from outside inwards.
        cross = np.flatnonzero((ss[:-1] < 0) & (ss[1:] >= 0))
        if cross.size == 0 or level <= 0:
            return 0.0
        j = cross[0]
        ends.append(uu[j] + (uu[j + 1] - uu[j]) * (-ss[j]) / (ss[j + 1] - ss[j]))
    delta = 0.5 * (ends[0] + ends[1])
    return float(delta) if abs(delta) < 1.0 else 0.0


def _trail_template(prof_a: np.ndarray, a: np.ndarray, ac: np.ndarray, half_len: float,
                    sigma: float, bright: np.ndarray) -> np.ndarray | None:
    """Median along-trail profile of the bright trails, aligned on their centres.

    It holds what every trail of the CCD shares and a box convolved with a Gaussian does not:
    the PSF's (Moffat) wings beyond the ends and the transparency's changes during the
    exposure. Returns the template at the integer offsets ``a`` from a trail's centre, its
    plateau scaled to 1 (0 beyond the measured range), or None with fewer than 10 trails.
    """
    idx = np.flatnonzero(bright)
    if idx.size < 10 or half_len < 4 * sigma:
        return None
    idx = idx[:400]  # the brightest (detections are sorted by S/N): plenty for a median
    pos = (ac[idx, None] + a[None, :]) - a[0]
    i0 = np.floor(pos).astype(np.intp)
    f = pos - i0
    ok = (i0 >= 0) & (i0 < a.size - 1)
    i0 = np.clip(i0, 0, a.size - 2)
    rows = np.arange(idx.size)[:, None]
    samp = np.where(ok, prof_a[idx][rows, i0] * (1 - f) + prof_a[idx][rows, i0 + 1] * f, np.nan)
    plateau = np.nanmedian(np.where(np.abs(a) < half_len - 2 * sigma, samp, np.nan), axis=1)
    good = plateau > 0
    if good.sum() < 10:
        return None
    with np.errstate(invalid="ignore"):
        tmpl = np.nanmedian(samp[good] / plateau[good, None], axis=0)
    return np.nan_to_num(tmpl, nan=0.0)


def _fill_gaps(prof: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Replace the ``bad`` samples of each row by linear interpolation of its good ones.

    Vectorised over rows: the nearest good sample on each side comes from running maxima
    (minima) of the good samples' indices. Rows with no good sample are returned unchanged,
    and so are rows with no bad one (only the others, usually few, are worked on).
    """
    gaps = np.flatnonzero(bad.any(axis=1))
    if gaps.size == 0:
        return prof
    out = prof.copy()
    out[gaps] = _fill_rows(prof[gaps], bad[gaps])
    return out


def _fill_rows(prof: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """:func:`_fill_gaps` of rows that all have a bad sample."""
    n, m = prof.shape
    idx = np.broadcast_to(np.arange(m), (n, m))
    left = np.maximum.accumulate(np.where(bad, -1, idx), axis=1)
    right = np.minimum.accumulate(np.where(bad, m, idx)[:, ::-1], axis=1)[:, ::-1]
    has_l, has_r = left >= 0, right < m
    rows = np.arange(n)[:, None]
    vl = prof[rows, np.clip(left, 0, m - 1)]
    vr = prof[rows, np.clip(right, 0, m - 1)]
    span = np.maximum(right - left, 1)
    frac = (idx - left) / span
    fill = np.where(has_l & has_r, vl + (vr - vl) * frac, np.where(has_l, vl, vr))
    out = np.where(bad & (has_l | has_r), fill, prof)
    return out


def _stretch(prof_a: np.ndarray, a: np.ndarray, ac: np.ndarray,
             template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit each profile by the template at its centre, its amplitude and its length free.

    A longer trail is, to first order, ``A (T(u) + eps D(u))`` with ``D(u) = -u T'(u)``
    (u from the trail's centre): light added just beyond both ends. The trail length changes
    a little across the CCD with the plate scale; two stars on one line closer than the PSF
    can resolve make one trail longer by their separation.

    Returns
    -------
    extra_px : ndarray, shape (n,)
        Fitted length minus the template's, pixels (``eps`` x trail length is not used: the
        template is what a single star draws here, so this is the excess over it).
    stretch : ndarray, shape (n, na)
        The fitted stretch term ``A eps D`` of each profile (subtracted before looking for a
        second trail).
    """
    deriv = np.gradient(template, a)
    u = a[None, :] - ac[:, None]
    t_at = np.interp(u, a, template, left=0.0, right=0.0)
    d_at = -u * np.interp(u, a, deriv, left=0.0, right=0.0)
    g00 = np.einsum("na,na->n", t_at, t_at)
    g01 = np.einsum("na,na->n", t_at, d_at)
    g11 = np.einsum("na,na->n", d_at, d_at)
    p0 = np.einsum("na,na->n", prof_a, t_at)
    p1 = np.einsum("na,na->n", prof_a, d_at)
    det = g00 * g11 - g01 * g01
    ok = det > 1e-12
    amp = np.where(ok, (g11 * p0 - g01 * p1) / np.where(ok, det, 1.0), 0.0)
    coef = np.where(ok, (g00 * p1 - g01 * p0) / np.where(ok, det, 1.0), 0.0)
    eps = np.where(amp > 0, coef / np.where(amp > 0, amp, 1.0), 0.0)
    # the template's plateau spans the trail length: eps in units of its half-length
    plateau = a[template > 0.5]
    half = 0.5 * (plateau.max() - plateau.min()) if plateau.size else 0.0
    return 2.0 * half * eps, coef[:, None] * d_at


def _collinear_split(prof_a: np.ndarray, a: np.ndarray, half_len: float, sigma: float,
                     var_a: np.ndarray, threshold_sigma: float,
                     template: np.ndarray,
                     allowed: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Find detections that are two overlapping trails on one line (collinear neighbours).

    Two stars whose trails overlap along the drift give one ridge in the matched filter and
    one maximum, and their light curves would show steps where one trail starts or ends.
    The along-trail profile of each detection (``prof_a``, (n, na) at integer offsets ``a``)
    is fitted by one trail (``template``: :func:`_trail_template`, so the PSF wings and the
    transparency changes all trails share are in the model) and by two trails
    ``_SPLIT_MIN_FWHM`` FWHM to one trail length apart (non-negative amplitudes), on a
    grid of positions (2 px, then 1 px for the promising ones, then refined). A split is kept
    when the two-trail model is better by an F ratio of
    ``_SPLIT_F`` (the residual of the two-trail fit sets the noise, so a bright star's
    imperfect model does not split it) and the fainter trail alone has a S/N of
    ``threshold_sigma`` (``var_a``: noise variance of one profile sample, (n,)).

    Returns
    -------
    rows, s1, s2, f1, f2 : ndarray, shape (k,)
        The detections to split, the along-trail centres of their two trails (pixels, same
        origin as ``a``; refined to 1/16 px) and each trail's share of the light.
    """
    n, na = prof_a.shape
    empty = (np.zeros(0, np.intp),) + (np.zeros(0),) * 4
    if n == 0:
        return empty

    def model(tc: np.ndarray) -> np.ndarray:
        """The template centred at ``tc`` (any shape), sampled at ``a``: (..., na)."""
        return np.interp(a[None, :] - np.reshape(tc, (-1, 1)), a, template,
                         left=0.0, right=0.0).reshape(np.shape(tc) + (na,))

    reach = half_len + 6.0
    min_sep = _SPLIT_MIN_FWHM * 2.3548 * sigma

    def search(prof: np.ndarray, var: np.ndarray, step: float) -> tuple[np.ndarray, ...]:
        """Best pair on a grid of ``step`` px: (t1, t2, F ratio, faint S/N, share)."""
        t = np.arange(-step * math.floor(reach / step), reach + 1e-9, step)
        box = model(t)                                                      # (nt, na)
        gram = box @ box.T
        proj = prof @ box.T                                                 # (k, nt)
        total = np.einsum("na,na->n", prof, prof)
        r1 = np.max(np.where(proj > 0, proj * proj / np.diag(gram)[None, :], 0.0), axis=1)
        i, j = np.triu_indices(t.size, 1)
        sep = t[j] - t[i]
        keep = (sep >= min_sep) & (sep <= 2.0 * half_len)
        i, j = i[keep], j[keep]
        gii, gjj, gij = gram[i, i], gram[j, j], gram[i, j]
        det = gii * gjj - gij * gij
        # the two-trail fits of every pair, by blocks of detections: the (rows, pairs)
        # temporaries then stay in the CPU cache (whole, they were ~3 MB each and this
        # search memory-bound); the same operations on each element
        nk = prof.shape[0]
        best = np.empty(nk, np.intp)
        r2b, a1b, a2b = np.empty(nk), np.empty(nk), np.empty(nk)
        rows = max(1, _PAIR_BLOCK // max(i.size, 1))
        for b0 in range(0, nk, rows):
            b1 = min(nk, b0 + rows)
            pi, pj = proj[b0:b1, i], proj[b0:b1, j]                      # (rows, np)
            a1 = gjj * pi                           # a1 = (gjj pi - gij pj) / det
            a1 -= gij * pj
            a1 /= det
            a2 = gii * pj                           # a2 = (gii pj - gij pi) / det
            a2 -= gij * pi
            a2 /= det
            r2 = np.multiply(a1, pi, out=pi)        # a1 pi + a2 pj, 0 unless both > 0
            r2 += a2 * pj
            r2[~((a1 > 0) & (a2 > 0))] = 0.0
            kb = np.argmax(r2, axis=1)
            rr = np.arange(b1 - b0)
            best[b0:b1] = kb
            r2b[b0:b1], a1b[b0:b1], a2b[b0:b1] = r2[rr, kb], a1[rr, kb], a2[rr, kb]
        f_ratio = (r2b - r1) / (np.maximum(total - r2b, 1e-300) / max(na - 4, 1))
        faint = np.where(a1b < a2b, a1b * np.sqrt(gii[best]), a2b * np.sqrt(gjj[best]))
        share = np.minimum(a1b, a2b) / np.maximum(a1b + a2b, 1e-300)
        return t[i[best]], t[j[best]], f_ratio, faint / np.sqrt(var), share

    # a 2 px grid over all detections finds the few worth a 1 px search (a pair 1 px off
    # its best positions fits a bright trail much worse, so the first cut is loose)
    _, _, f2px, snr2px, _ = search(prof_a, var_a, 2.0)
    cand = (f2px > _SPLIT_F / 8) & (snr2px >= 0.5 * threshold_sigma)
    if allowed is not None:
        cand &= allowed
    cand = np.flatnonzero(cand)
    if cand.size == 0:
        return empty
    t1, t2, f_ratio, snr, share = search(prof_a[cand], var_a[cand], 1.0)
    split = (f_ratio > _SPLIT_F) & (snr >= threshold_sigma) & (share >= _SPLIT_MIN_SHARE)
    rows = cand[split]
    if rows.size == 0:
        return empty
    s1, s2, f1, f2 = _refine_pair(prof_a[rows], a, template, t1[split], t2[split])
    f1, f2 = f1 / (f1 + f2), f2 / (f1 + f2)
    ok = np.minimum(f1, f2) >= _SPLIT_MIN_SHARE
    return rows[ok], s1[ok], s2[ok], f1[ok], f2[ok]


def _refine_pair(prof: np.ndarray, a: np.ndarray, template: np.ndarray, s1: np.ndarray,
                 s2: np.ndarray) -> tuple[np.ndarray, ...]:
    """Refine the centres of two-trail fits of profiles ``prof`` (k, na) near ``s1``, ``s2``.

    Grids of 0.25 px, then 1/16 px, around the current pair; returns the centres and the
    two fitted amplitudes (template units).
    """
    na = a.size

    def model(tc: np.ndarray) -> np.ndarray:
        return np.interp(a[None, :] - np.reshape(tc, (-1, 1)), a, template,
                         left=0.0, right=0.0).reshape(np.shape(tc) + (na,))

    pr = prof[:, None, None, :]
    k = np.arange(prof.shape[0])
    f1 = f2 = np.zeros(prof.shape[0])
    for step in (0.25, 0.0625):
        d = np.arange(-4, 5) * step
        t1 = s1[:, None, None] + d[None, :, None]                          # (k, nd, 1)
        t2 = s2[:, None, None] + d[None, None, :]                          # (k, 1, nd)
        b1, b2 = model(t1), model(t2)                                       # (k, nd, 1, na)
        p1, p2 = (b1 * pr).sum(-1), (b2 * pr).sum(-1)
        g11, g22, g12 = (b1 * b1).sum(-1), (b2 * b2).sum(-1), (b1 * b2).sum(-1)
        dd = g11 * g22 - g12 * g12
        x1 = (g22 * p1 - g12 * p2) / dd
        x2 = (g11 * p2 - g12 * p1) / dd
        rr = np.where((x1 > 0) & (x2 > 0), x1 * p1 + x2 * p2, 0.0).reshape(k.size, -1)
        kbest = np.argmax(rr, axis=1)
        k1, k2 = np.divmod(kbest, d.size)
        s1, s2 = t1[k, k1, 0], t2[k, 0, k2]
        f1 = x1.reshape(k.size, -1)[k, kbest]
        f2 = x2.reshape(k.size, -1)[k, kbest]
    return s1, s2, f1, f2


def _duplicate_components(xc: np.ndarray, yc: np.ndarray, split_of: np.ndarray,
                          geometry: DriftGeometry, fwhm_px: float) -> np.ndarray:
    """Flag split components lying on another detection (within 3 px along, 1 FWHM across).

    ``split_of[i]`` is the other component of detection i's split, or -1.
    """
    drop = np.zeros(xc.size, dtype=bool)
    comp = np.flatnonzero(split_of >= 0)
    if comp.size == 0 or xc.size < 2:
        return drop
    ux, uy = geometry.unit
    along = xc * ux + yc * uy
    across = -xc * uy + yc * ux
    tree = cKDTree(np.column_stack([along / 3.0, across / fwhm_px]))
    for i, near in zip(comp, tree.query_ball_point(
            np.column_stack([along[comp] / 3.0, across[comp] / fwhm_px]), r=1.0)):
        # a handful of split trails per CCD: a loop over them, not over all trails
        others = [j for j in near if j != i and j != split_of[i] and not drop[j]]
        drop[i] = bool(others)
    return drop


def _refine(image: np.ndarray, mask: np.ndarray | None, sat_mask: np.ndarray | None,
            background: Background, xp: np.ndarray, yp: np.ndarray, geometry: DriftGeometry,
            fwhm_px: float, gain: float | None, snr_hint: np.ndarray,
            threshold: float = 5.0) -> dict[str, np.ndarray]:
    """Measure sub-pixel centres, fluxes and flags of all detections at once."""
    ny, nx = image.shape
    n = xp.size
    ux, uy = geometry.unit
    half_len = geometry.length_px / 2.0
    sigma = _psf_sigma(fwhm_px)
    h_along = half_len + 1.5 * fwhm_px
    shift_max = max(2.0, min(_SHIFT_RANGE, math.ceil(half_len)))
    amax = int(math.ceil(half_len + 3.0 * sigma + shift_max)) + 1
    cmax = int(math.ceil(1.5 * fwhm_px)) + 3
    a = np.arange(-amax, amax + 1, dtype=np.float64)
    c = np.arange(-cmax, cmax + 1, dtype=np.float64)
    xi = np.rint(xp)
    yi = np.rint(yp)
    # Nearest-pixel sampling on the (along, across) grid; exact for an axis-aligned trail.
    ai = np.rint(a[:, None] * ux - c[None, :] * uy).astype(np.intp)          # (na, nc) dx
    aj = np.rint(a[:, None] * uy + c[None, :] * ux).astype(np.intp)          # (na, nc) dy

    off = aj * nx + ai                                                      # (na, nc)
    lo_x, hi_x, lo_y, hi_y = int(ai.min()), int(ai.max()), int(aj.min()), int(aj.max())
    # A trail along a pixel axis samples a plain rectangle of the image: x offset by a alone
    # and y offset by c alone, each a run of consecutive pixels. Such windows are copied as
    # blocks from a sliding-window view (rows of contiguous pixels) instead of gathered
    # pixel by pixel through an (n, na, nc) index: the same values, ~3x faster.
    ax, cy = ai[:, 0], aj[0, :]
    step_a, step_c = (int(ax[1] - ax[0]) if ax.size > 1 else 1), (int(cy[1] - cy[0])
                                                                 if cy.size > 1 else 1)
    rectangle = (bool((ai == ax[:, None]).all() and (aj == cy[None, :]).all())
                 and abs(step_a) == 1 and abs(step_c) == 1
                 and bool((np.diff(ax) == step_a).all() and (np.diff(cy) == step_c).all())
                 and ny >= cy.size and nx >= ax.size)

    def reader(xs: np.ndarray, ys: np.ndarray, part: np.ndarray,
               flat_part: np.ndarray) -> "Callable[[np.ndarray], np.ndarray]":
        """Return ``read(arr)``: ``arr`` (ny, nx) at every window pixel, (n, na, nc)."""
        if not rectangle:
            flat = (ys * nx + xs)[:, None, None] + off[None]
            if part.size:
                flat[part] = flat_part

            def read_flat(arr: np.ndarray) -> np.ndarray:
                return np.take(arr.reshape(-1), flat)
            return read_flat
        whole = np.ones(xs.size, dtype=bool)
        whole[part] = False
        wi = np.flatnonzero(whole)
        r0, c0 = ys[wi] + lo_y, xs[wi] + lo_x
        shape = (xs.size, ax.size, cy.size)

        def read_blocks(arr: np.ndarray) -> np.ndarray:
            out = np.empty(shape, dtype=arr.dtype)
            blocks = sliding_window_view(arr, (cy.size, ax.size))[r0, c0]  # (k, nc, na)
            out[wi] = blocks[:, ::step_c, ::step_a].transpose(0, 2, 1)
            if part.size:
                out[part] = np.take(arr.reshape(-1), flat_part)
            return out
        return read_blocks

    def windows(xi: np.ndarray, yi: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                        np.ndarray, np.ndarray]:
        """The reader of the windows centred on ``xi, yi``, which pixels are on the CCD,
        and the windows partly off it."""
        xs, ys = xi.astype(np.intp), yi.astype(np.intp)
        inside = np.ones((xs.size,) + off.shape, dtype=bool)
        # windows wholly on the CCD (nearly all) need no bounds test or clipping
        part = np.flatnonzero((xs + lo_x < 0) | (xs + hi_x >= nx) |
                              (ys + lo_y < 0) | (ys + hi_y >= ny))
        flat_part = np.zeros((0,) + off.shape, dtype=np.intp)
        if part.size:
            ix = xs[part][:, None, None] + ai[None]
            iy = ys[part][:, None, None] + aj[None]
            inside[part] = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
            flat_part = np.clip(iy, 0, ny - 1) * nx + np.clip(ix, 0, nx - 1)
            del ix, iy
        return reader(xs, ys, part, flat_part), inside, part

    def gather(xi: np.ndarray, yi: np.ndarray) -> tuple[np.ndarray, ...]:
        read, inside, part = windows(xi, yi)
        vals = read(image)
        good = np.isfinite(vals)
        if part.size:
            good &= inside
        if mask is not None:
            good &= ~read(mask)
        sky = background.back_at(xi, yi).astype(np.float32)
        w = vals.astype(np.float32, copy=False) - sky[:, None, None]
        np.copyto(w, np.float32(0.0), where=~good)
        return w, good, inside, part

    w, good, inside, part = gather(xi, yi)
    # saturated pixels of each window, read only for the windows whose rows (on the CCD)
    # hold one (few: saturated stars and their bleed trails); the others have none
    sat_w = None
    if sat_mask is not None:
        sat_w = np.zeros(w.shape, dtype=bool)
        rows_sat = np.concatenate([[0], np.cumsum(sat_mask.any(axis=1))])
        top = np.clip(yi.astype(np.intp) + lo_y, 0, ny - 1)
        bottom = np.clip(yi.astype(np.intp) + hi_y, 0, ny - 1)
        hold = np.flatnonzero(rows_sat[bottom + 1] > rows_sat[top])
        if hold.size:
            read_hold, inside_hold, _ = windows(xi[hold], yi[hold])
            sat_w[hold] = inside_hold & read_hold(sat_mask)
    in_trail = (np.abs(a) <= half_len + fwhm_px).astype(np.float32)

    # Across the trail: Gaussian-windowed centroid (converges on the centre of a symmetric
    # profile, also when a saturated core is masked symmetrically).
    prof_c = np.einsum("nac,a->nc", w, in_trail).astype(np.float64)   # (n, nc)
    cc = np.zeros(n)
    for _ in range(6):
        wt = np.exp(-0.5 * ((c[None, :] - cc[:, None]) / sigma) ** 2)
        s0 = np.sum(wt * prof_c, axis=1)
        s1 = np.sum(wt * prof_c * (c[None, :] - cc[:, None]), axis=1)
        ok = s0 > 0
        step = np.where(ok, 2.0 * s1 / np.where(ok, s0, 1.0), 0.0)
        cc = np.clip(cc + step, -cmax + 2, cmax - 2)
    # Along the trail: the shift of the model profile (box of the trail length convolved with
    # the PSF) that best correlates with the measured profile; only the trail ends carry this
    # information, and the correlation weighs them optimally for white noise. A flux-weighted
    # centroid would be ~1.5x noisier and biased by any brightness change during the exposure.
    # The atmosphere's transparency drifts during the exposure identically for every star of the
    # CCD; a linear trend tilts every trail's plateau and would shift every fitted position the
    # same way (a bias the WCS fit cannot see). The template therefore includes the common
    # trend, measured on the bright trails: model = box + beta * ramp (ramp = time fraction).
    wc = np.exp(-0.5 * ((c[None, :] - cc[:, None]) / sigma) ** 2)   # (n, nc)
    prof_a = np.einsum("nac,nc->na", w, wc, dtype=np.float64)
    # samples losing much of their weight to masked pixels (a bad column, a cosmic ray)
    # would read as a deep notch in the trail: filled from their neighbours for the model
    # fits below (the centroid above and the aperture sums use the pixels as they are)
    wsum = np.sum(wc, axis=1)[:, None]
    # (a window with every pixel good has all its weight: only the others are summed, the
    # few with a masked pixel)
    cover_a = np.ones(prof_a.shape)
    some_bad = np.flatnonzero(~good.all(axis=(1, 2)))
    if some_bad.size:
        cover_a[some_bad] = np.einsum("nac,nc->na", good[some_bad].astype(np.float32),
                                      wc[some_bad]) / wsum[some_bad]
    # (a window wholly on the CCD has all its weight there: only the others are summed)
    on_ccd = np.ones(prof_a.shape)
    if part.size:
        on_ccd[part] = np.einsum("nac,nc->na", inside[part].astype(np.float32),
                                 wc[part]) / wsum[part]
    # (beyond the CCD's edge nothing is known: those samples stay empty, not filled)
    prof_fit = _fill_gaps(prof_a, (cover_a < 0.9) & (on_ccd >= 0.9))
    shifts = np.arange(-shift_max, shift_max + 1e-9, _SHIFT_STEP)
    rel = a[None, :] - shifts[:, None]
    v1, v2 = (rel - half_len) / sigma, (rel + half_len) / sigma
    box = ndtr(v2) - ndtr(v1)                                                   # (ns, na)
    # Box weighted by u / L (u: position along the trail from its centre), convolved with the
    # Gaussian: (rel * box + sigma * (pdf(v1) - pdf(v2))) / L in closed form.
    pdf1 = np.exp(-0.5 * v1 * v1) / math.sqrt(2.0 * math.pi)
    pdf2 = np.exp(-0.5 * v2 * v2) / math.sqrt(2.0 * math.pi)
    ramp = (rel * box + sigma * (pdf1 - pdf2)) / max(2.0 * half_len, 1e-9)
    p0 = prof_a @ box.T                                                         # (n, ns)
    p1 = prof_a @ ramp.T
    k0 = np.argmax(p0, axis=1)
    beta = _common_trend(p0, p1, box, ramp, k0, snr_hint)
    corr = p0 + beta * p1
    k = np.clip(np.argmax(corr, axis=1), 1, shifts.size - 2)
    rows_n = np.arange(n)
    cm, c0, cp = corr[rows_n, k - 1], corr[rows_n, k], corr[rows_n, k + 1]
    den = cm - 2.0 * c0 + cp
    frac = np.where(den < 0, 0.5 * (cm - cp) / np.where(den < 0, den, -1.0), 0.0)
    ac = shifts[k] + np.clip(frac, -1.0, 1.0) * _SHIFT_STEP
    # collinear neighbours merged into one detection become two trails (sharing the window)
    var_a = background.rms_at(xi, yi).astype(np.float64) ** 2 * np.sum(wc ** 2, axis=1)
    # the template from well-measured trails only: the alignment errors of fainter ones would
    # soften its ends, and the sharper ends of bright single stars would then look split
    template = _trail_template(prof_fit, a, ac, half_len, sigma,
                               snr_hint >= 4 * _TREND_MIN_SNR)
    extra = np.zeros(n)
    if template is not None:
        # a trail's own length (it varies with the plate scale) is fitted first, so its ends
        # do not pass for a second trail; what remains beyond them is one
        extra, stretch = _stretch(prof_fit, a, ac, template)
        # a trail running off the CCD has samples with no data where the model expects its
        # light, which a second trail would seem to explain: such detections are not split
        own = np.abs(a[None, :] - ac[:, None]) <= half_len + 3.0 * sigma
        whole = np.where(own, on_ccd, 1.0).min(axis=1) >= 0.9
        rows, s1, s2, f1, f2 = _collinear_split(prof_fit - stretch, a, half_len, sigma, var_a,
                                                threshold, template, allowed=whole)
    else:
        rows, s1, s2, f1, f2 = (np.zeros(0, np.intp),) + (np.zeros(0),) * 4
    # a pair reaching past the window (one trail far along) is measured again in a window
    # centred between its two trails, where both ends of both trails are seen
    far = np.flatnonzero(np.maximum(np.abs(s1), np.abs(s2)) + half_len + 3 * sigma > amax)
    if far.size:
        shift_k = np.rint(0.5 * (s1[far] + s2[far]))
        r = rows[far]
        w2, good2, inside2 = gather(np.rint(xi[r] + shift_k * ux),
                                    np.rint(yi[r] + shift_k * uy))[:3]
        prof2 = np.einsum("nac,nc->na", w2, wc[r], dtype=np.float64)
        w2sum = np.sum(wc[r], axis=1)[:, None]
        cover2 = np.einsum("nac,nc->na", good2.astype(np.float32), wc[r]) / w2sum
        on2 = np.einsum("nac,nc->na", inside2.astype(np.float32), wc[r]) / w2sum
        prof2 = _fill_gaps(prof2, (cover2 < 0.9) & (on2 >= 0.9))
        n1, n2, g1, g2 = _refine_pair(prof2, a, template, s1[far] - shift_k, s2[far] - shift_k)
        s1[far], s2[far] = n1 + shift_k, n2 + shift_k
        f1[far], f2[far] = g1 / (g1 + g2), g2 / (g1 + g2)
    parent = np.concatenate([np.arange(n), rows])
    split_of = np.full(n + rows.size, -1, dtype=np.intp)
    if rows.size:
        ac = np.concatenate([ac, s2])
        ac[rows] = s1
        share = np.ones(n + rows.size)
        share[rows], share[n:] = f1, f2
        split_of[rows] = np.arange(n, n + rows.size)
        split_of[n:] = rows
        cc, wc, prof_a = cc[parent], wc[parent], prof_a[parent]
        w, good, inside = w[parent], good[parent], inside[parent]
        sat_w = None if sat_w is None else sat_w[parent]
        xi, yi, snr_hint = xi[parent], yi[parent], snr_hint[parent] * share
        extra = np.where(split_of >= 0, 0.0, extra[parent])
        n = parent.size
    xc = xi + ac * ux - cc * uy
    yc = yi + ac * uy + cc * ux

    # Aperture: the trail +-1.5 FWHM along, +-1.5 FWHM across the refined centre.
    # The aperture is separable (along x across): reduce over across, then along.
    apa = (np.abs(a[None, :] - ac[:, None]) <= h_along).astype(np.float32)      # (n, na)
    apc = (np.abs(c[None, :] - cc[:, None]) <= 1.5 * fwhm_px).astype(np.float32)  # (n, nc)

    def in_aperture(v: np.ndarray) -> np.ndarray:
        return np.sum(np.einsum("nac,nc->na", v, apc) * apa, axis=1, dtype=np.float64)

    def count_in_aperture(v: np.ndarray) -> np.ndarray:
        """Pixels of the bool windows ``v`` (n, na, nc) inside each aperture, float64 (n,).

        Only the windows holding a True pixel (few: masked, saturated, cosmic-ray pixels)
        are summed; the counts are exact integers either way.
        """
        out = np.zeros(v.shape[0])
        rows = np.flatnonzero(v.any(axis=(1, 2)))
        if rows.size:
            out[rows] = np.sum(np.einsum("nac,nc->na", v[rows].astype(np.float32), apc[rows])
                               * apa[rows], axis=1, dtype=np.float64)
        return out

    flux = in_aperture(w)
    rms = background.rms_at(xi, yi).astype(np.float64)
    # good pixels = the aperture's pixels minus the bad ones (exact integer counts)
    npix = (np.sum(apa, axis=1, dtype=np.float64) * np.sum(apc, axis=1, dtype=np.float64)
            - count_in_aperture(~good))
    var = npix * rms**2
    if gain is not None and gain > 0:
        var = var + np.clip(flux, 0.0, None) / gain
    masked = count_in_aperture(inside & ~good) > 0
    if sat_w is not None:
        saturated = count_in_aperture(sat_w) > 0
    else:
        saturated = np.zeros(n, dtype=bool)
    x0 = xc - half_len * ux
    y0 = yc - half_len * uy
    x1 = xc + half_len * ux
    y1 = yc + half_len * uy
    m = fwhm_px
    edge = ((np.minimum(x0, x1) < m) | (np.maximum(x0, x1) > nx - 1 - m)
            | (np.minimum(y0, y1) < m) | (np.maximum(y0, y1) > ny - 1 - m))

    # Compactness: is there a significant trail outside the brightest FWHM-wide stretch? A
    # cosmic ray or an undrifted flash has nothing there; a trail with a short brightening has.
    in_ap = np.abs(a[None, :] - ac[:, None]) <= h_along                  # (n, na)
    q = np.where(in_ap, prof_a, 0.0)
    wlen = max(1, int(round(fwhm_px)))
    cs = np.concatenate([np.zeros((n, 1)), np.cumsum(q, axis=1)], axis=1)
    run = cs[:, wlen:] - cs[:, :-wlen]
    best = np.argmax(run, axis=1)
    rest = cs[:, -1] - run[np.arange(n), best]
    n_rest = np.maximum(in_ap.sum(axis=1) - wlen, 1)
    sig_rest = rms * np.sqrt(np.sum(wc**2, axis=1) * n_rest)
    compact = (rest / sig_rest < _COMPACT_REST_SNR) & ~saturated

    # Cosmic rays the DQ mask missed: pixels far sharper than the PSF allows (their excess
    # over the mean of their 4 neighbours is > 5 sigma and > 40% of their value; a PSF of
    # FWHM >= 3 px gives < 25%). Without them (and their neighbours), is a trail still there?
    if w.shape[1] > 2 and w.shape[2] > 2:
        core = w[:, 1:-1, 1:-1]
        # core - (sum of the 4 neighbours) / 4, the same operations in place
        lap = np.add(w[:, :-2, 1:-1], w[:, 2:, 1:-1])
        lap += w[:, 1:-1, :-2]
        lap += w[:, 1:-1, 2:]
        lap *= np.float32(0.25)
        np.subtract(core, lap, out=lap)
        # the 5-sigma test first: the second test (and the hit map) only on the windows
        # that pass it somewhere (the same hits)
        sharp = lap > 5.0 * rms[:, None, None]
        cand = np.flatnonzero(sharp.any(axis=(1, 2)))
        both = sharp[cand] & (lap[cand] > 0.4 * core[cand])
        del sharp
        # only the windows with a hit (few) are tested further, each on its own
        has = both.any(axis=(1, 2))
        cr = cand[has]
        if cr.size:
            hit = np.zeros((cr.size,) + w.shape[1:], dtype=bool)
            hit[:, 1:-1, 1:-1] = both[has]
            grown = hit.copy()
            grown[:, 1:, :] |= hit[:, :-1, :]
            grown[:, :-1, :] |= hit[:, 1:, :]
            grown[:, :, 1:] |= hit[:, :, :-1]
            grown[:, :, :-1] |= hit[:, :, 1:]
            clean_w = np.where(grown, np.float32(0.0), w[cr])
            sig_line = np.einsum("nac,nc->na", clean_w, wc[cr].astype(np.float32))
            evidence = np.sum(sig_line * apa[cr], axis=1) / (
                rms[cr] * np.sqrt(np.sum(wc[cr]**2, axis=1) *
                                  np.maximum(apa[cr].sum(axis=1), 1.0)))
            compact[cr] |= (evidence < _COMPACT_CR_SNR) & ~saturated[cr]
            masked = masked.copy()
            masked[cr] |= np.sum(np.einsum("nac,nc->na", grown.astype(np.float32), apc[cr])
                                 * apa[cr], axis=1, dtype=np.float64) > 0

    # Common along-trail offset: a brightness change right at the start or the end of the
    # exposure (transparency), which the linear trend cannot follow, shifts every fitted
    # position alike. The stack of the bright trails, aligned on their fits, shows it: its
    # half-maximum crossings, each against the plateau next to it, mark the true ends.
    clean = (snr_hint >= _TREND_MIN_SNR) & ~saturated & ~masked & ~edge & ~compact
    delta = _edge_offset(prof_a[clean], a, ac[clean], half_len, sigma)
    if delta != 0.0:
        xc, yc = xc + delta * ux, yc + delta * uy
        x0, y0, x1, y1 = x0 + delta * ux, y0 + delta * uy, x1 + delta * ux, y1 + delta * uy
    if not rows.size:
        share = np.ones(n)
    return dict(parent=parent, share=share, split_of=split_of, extra_length=extra,
                x0=x0, y0=y0, x1=x1, y1=y1, xc=xc, yc=yc, flux=flux.astype(np.float32),
                flux_err=np.sqrt(var).astype(np.float32), saturated=saturated, masked=masked,
                edge=edge, compact=compact, trend=np.full(n, beta))


def detect_trails(image: np.ndarray, geometry: DriftGeometry, background: Background, *,
                  fwhm_px: float, mask: np.ndarray | None = None,
                  sat_mask: np.ndarray | None = None, threshold_sigma: float = 5.0,
                  gain: float | None = None, bin_x: int = 2,
                  reject_compact: bool = True, reject_streaks: bool = True) -> TrailDetections:
    """Detect the star trails of one drift CCD.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        CCD pixels in ADU with the sky kept (float32 or float64, any byte order).
    geometry : DriftGeometry
        Trail direction, speed and exposure time (``drift_geometry`` of the CCD's WCS).
    background : Background
        Sky and noise of this CCD (``measure_background``).
    fwhm_px : float
        PSF FWHM, pixels (header FWHM where present).
    mask : ndarray of bool, shape (ny, nx), optional
        Pixels with zero weight (``mask_from_dq``): bad, no data, saturated, bleed, cosmic ray.
    sat_mask : ndarray of bool, shape (ny, nx), optional
        Saturated or bleed pixels; a trail touching them is flagged ``saturated``.
    threshold_sigma : float
        Detection threshold in units of the filtered noise.
    gain : float, optional
        e-/ADU, for the source Poisson term of ``flux_err``.
    bin_x : int
        Column binning of the separable filter.
    reject_compact : bool
        Drop detections with no significant light outside their brightest FWHM-wide stretch
        (cosmic rays the DQ mask missed, undrifted flashes): these are not trails. Their number
        is kept in ``n_compact``; classifying them is the job of ``science.classify``.
    reject_streaks : bool
        Drop detections strung along a straight line (:func:`find_streak_members`): a
        satellite streak, not trails. Their number is kept in ``n_streak``.

    Returns
    -------
    TrailDetections
        Possibly empty; sorted by decreasing S/N.

    Raises
    ------
    ScienceError
        Non-positive FWHM, a trail longer than the CCD, or a geometry without motion.
    """
    if image.ndim != 2:
        raise ScienceError(f"expected a 2-D image, got shape {image.shape}")
    if not geometry.speed_px_s > 0:
        raise ScienceError("drift geometry has no motion (drift rate 0?)")
    if geometry.along_x:
        fmap = trail_filter_map(image, background, mask, geometry, fwhm_px, bin_x=bin_x)
        method = "separable"
    else:
        fmap = _fft_filter_map(image, background, mask, geometry, fwhm_px)
        method = "fft"
    measured = _noise_scale(fmap.snr)
    scale = max(1.0, measured)
    snr_map = fmap.snr
    peaks = _local_maxima(snr_map, threshold_sigma * scale)
    rows, cols = np.divmod(peaks, snr_map.shape[1])
    psnr = snr_map.ravel()[peaks].astype(np.float64) / scale
    xp = fmap.x_of_col[cols]
    del snr_map, fmap  # the map (16 MB for a full CCD) is not needed by the refinement
    yp = rows.astype(np.float64)
    sigma = _psf_sigma(fwhm_px)
    across = np.maximum(fwhm_px, sigma * np.sqrt(2.0 * np.log(np.maximum(psnr, threshold_sigma)
                                                               / threshold_sigma)) + fwhm_px)
    ux, uy = geometry.unit
    keep = _suppress(xp, yp, psnr, geometry.length_px, ux, uy, across)
    order = np.argsort(-psnr[keep], kind="stable")
    xp, yp, psnr = xp[keep][order], yp[keep][order], psnr[keep][order]
    img = np.asarray(image)
    ref = _refine(img, mask, sat_mask, background, xp, yp, geometry, fwhm_px, gain, psnr,
                  threshold=threshold_sigma)
    parent, share, split_of = ref.pop("parent"), ref.pop("share"), ref.pop("split_of")
    psnr = psnr[parent] * share
    # a component of a split that lands on another detection is that detection, not a new trail
    dup = _duplicate_components(ref["xc"], ref["yc"], split_of, geometry, fwhm_px)
    if dup.any():
        ref = {k: v[~dup] for k, v in ref.items()}
        psnr = psnr[~dup]
    compact = ref.pop("compact")
    trend_arr = ref.pop("trend")
    trend = float(trend_arr[0]) if trend_arr.size else 0.0
    n_compact = int(np.count_nonzero(compact))
    if n_compact and reject_compact:
        keep = ~compact
        ref = {k: v[keep] for k, v in ref.items()}
        psnr = psnr[keep]
    on_streak = find_streak_members(ref["xc"], ref["yc"], geometry.length_px, fwhm_px,
                                    snr=psnr)
    n_streak = int(np.count_nonzero(on_streak))
    if n_streak and reject_streaks:
        keep = ~on_streak
        ref = {k: v[keep] for k, v in ref.items()}
        psnr = psnr[keep]
    return TrailDetections(n_compact=n_compact, n_streak=n_streak, trend=trend,
                           snr=psnr.astype(np.float32), geometry=geometry,
                           fwhm_px=float(fwhm_px), threshold_sigma=float(threshold_sigma),
                           noise_scale=float(measured), method=method, **ref)


def find_streak_members(x: np.ndarray, y: np.ndarray, length_px: float, fwhm_px: float, *,
                        min_members: int = 8, min_votes: int = 24,
                        width_px: float | None = None,
                        snr: np.ndarray | None = None) -> np.ndarray:
    """Flag detections strung along a straight line: a satellite streak seen by the filter.

    A streak crossing the CCD gives a ridge in the matched-filter map and a detection every
    trail length along it. Lines are voted by pairs of detections 1.5 to 10 trail lengths apart
    (a Hough transform over pairs: 1 degree x 2 widths bins). m collinear detections give
    ~m(m-1)/2 votes, and a few random stars fall on a line by chance (4 give 6 votes on a full
    CCD of 800 trails), so a streak needs ``min_votes`` votes and ``min_members`` detections
    within ``width_px`` of the line.

    Parameters
    ----------
    x, y : ndarray, shape (n,)
        Detection centres, pixels.
    length_px, fwhm_px : float
        Trail length and PSF FWHM, pixels.
    snr : ndarray, shape (n,), optional
        Detection S/N: faint detections (S/N < 10) up to 2.5 FWHM from a streak, where the
        noise on its wings peaks, are flagged too.

    Returns
    -------
    ndarray of bool, shape (n,)
        True for detections on a streak.
    """
    n = x.size
    flag = np.zeros(n, dtype=bool)
    if n < min_members:
        return flag
    width = width_px if width_px is not None else max(2.0, 0.6 * fwhm_px)
    rmin, rmax = 1.5 * length_px, 10.0 * length_px
    tree = cKDTree(np.column_stack([x, y]))
    pairs = tree.query_pairs(rmax, output_type="ndarray")
    if pairs.size == 0:
        return flag
    i, j = pairs[:, 0], pairs[:, 1]
    dx, dy = x[j] - x[i], y[j] - y[i]
    d = np.hypot(dx, dy)
    far = d >= rmin
    i, j, dx, dy, d = i[far], j[far], dx[far], dy[far], d[far]
    if i.size == 0:
        return flag
    phi = np.mod(np.arctan2(dy, dx), np.pi)                      # line direction, [0, pi)
    rho = x[i] * np.sin(phi) - y[i] * np.cos(phi)                 # signed distance to origin
    a_bin = np.floor(phi / np.radians(1.0)).astype(np.int64)
    r_bin = np.floor(rho / (2.0 * width)).astype(np.int64)
    key = a_bin * 1_000_003 + r_bin
    uniq, counts = np.unique(key, return_counts=True)
    # A streak of m members gives ~m * (pairs per member) votes in one bin; random stars ~0.
    for k in uniq[counts >= min_votes]:
        sel = key == k
        ph = float(np.median(phi[sel]))
        rh = float(np.median(rho[sel]))
        dist = np.abs(x * math.sin(ph) - y * math.cos(ph) - rh)
        members = dist < width
        if members.sum() >= min_members:
            flag |= members
            if snr is not None:
                flag |= (dist < 2.5 * fwhm_px) & (snr < 10.0)
    return flag
