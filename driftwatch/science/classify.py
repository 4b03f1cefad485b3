"""Classify every source detected on a CCD: star trail, point source, streak, cosmic ray, artefact.

Detection runs on the image binned 2 x 2 (a quarter of the pixels; a PSF of FWHM ~4 px loses
a few per cent of its matched-filter signal-to-noise ratio): a PSF-matched Gaussian filter,
thresholded and cut into connected segments (no deblending, so a satellite streak stays one
object). Each segment's moments (barycentre, a, b, theta, isophotal flux, bounding box) are
measured by weighted bincounts over the segment bins at once. Segments are classified from
their moments and the trail detections:

- ``streak``: much longer than a star trail (``> streak_factor`` x trail length; ``> 4`` x
  along the drift, where collinear overlapping trails merge) and thin, at any angle, or (cut
  short by a corner of the CCD) longer than a trail, elongated at 20 degrees or more to the
  drift and running from the CCD's edge to its edge; a streak
  that crosses star trails absorbs them into one object and stays a streak; its line is found
  by a Hough transform of its bins, and its position and direction are the line's.
- ``trail``: contains a detected trail, or is elongated along the drift with a trail's length.
- ``cosmic_ray``: sharper than the PSF.
- ``artefact``: anything else (edge fragments, bad columns, ghosts).

Point sources are found apart from the segments, so that a flash merged with a star trail, a
streak or a bright neighbour's wings is still found: every local maximum of the filtered
image is a candidate peak, and it is a ``point`` (it did not drift: it lasted much less than
the seeing crossing time, a candidate millisecond flash) when

- it stands out of the light along the drift: the filtered image at the peak exceeds its
  larger value ``k`` (~3.7 PSF sigma) pixels before and after along the drift by
  ``point_snr`` times its noise (photon noise of the trail under it included). A star
  trail's interior and its ends do not; a flash on a trail does by its own light;
- it is compact in every direction: that excess holds (half of it at least) against the
  filtered image ``k`` pixels away on both sides along 8 directions, which a streak's ridge
  (any angle) does not;
- it is not sharper than the PSF (a cosmic ray: minor-axis rms of its trail-subtracted light
  below ``sharp_factor`` x PSF sigma, or a peak pixel far above a PSF's), nor longer (major
  axis rms above 1.35 PSF sigma: overlapping trail ends, a blend), lies 2 FWHM from
  the CCD edge, 3 px from masked pixels and 3 FWHM from saturated ones;
- it is not where two detected trails' extents overlap (their sum steps up along the
  drift for the overlap's length), unless far brighter than the light under it;
- it is not on pixels the DQ mask flags as a cosmic ray (its charge spreads beyond them).

A compact excess on a star's steady light along the drift is either a flash on the star or
the star's own short brightening (they look alike): unless it is far brighter than the star
(``star_ratio_max``) it stays with the trail (class ``trail``), and the star's light curve
decides. ``on_trail`` names the detected trail whose centre line a peak lies on (for a point:
the event search's candidates there are the same light). A trail detection whose only light
is the point (no steady light along its line) was the flash itself: ``trail`` names it.

A peak within 1.5 FWHM of a streak's line (its core: a crossing with a trail, or a glint) is
part of the streak. Only ``point`` sources become (flash) candidates; streaks and cosmic rays never do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driftwatch.science.geometry import DriftGeometry

__all__ = ["CLASSES", "Sources", "StreakLines", "bin2x2", "classify_sources", "find_streaks",
           "line_mask", "line_pixels", "psf_photometry", "streak_mask"]

CLASSES: tuple[str, ...] = ("trail", "point", "streak", "cosmic_ray", "artefact")

#: Directions (radians from the drift) of the compactness test of point sources.
_DIRECTIONS = np.arange(8) * np.pi / 8


@dataclass(frozen=True)
class Sources:
    """Sources of one CCD and their classes (``k`` sources).

    Rows are the segments of the detection image, then the point sources and cosmic rays
    found inside larger segments (a flash on a trail).

    Attributes
    ----------
    x, y : ndarray, float64, shape (k,)
        Barycentre, pixels (0-based); for a point, its PSF peak; for a streak, the point of
        its line nearest the barycentre.
    a, b : ndarray, float64, shape (k,)
        Major and minor axis rms, pixels.
    theta : ndarray, float64, shape (k,)
        Major-axis angle, radians counter-clockwise from +x (a streak: its line's direction).
    length : ndarray, float64, shape (k,)
        Length of a uniform line with the same major rms (``sqrt(12) a``), pixels.
    npix : ndarray, int64, shape (k,)
        Pixels above the threshold (in whole 2 x 2 bins).
    flux : ndarray, float64, shape (k,)
        Isophotal flux, ADU (a point inside a larger segment: its PSF flux).
    snr : ndarray, float64, shape (k,)
        PSF-fit signal-to-noise ratio at (x, y) (of the trail-subtracted light for a point).
    psf_flux : ndarray, float64, shape (k,)
        PSF-fit flux, ADU.
    cls : ndarray, str, shape (k,)
        One of :data:`CLASSES`.
    trail : ndarray, int64, shape (k,)
        Index of a detected trail inside the source (-1: none); for a point, a trail
        detection that was this point itself (no steady light along its line).
    on_trail : ndarray, int64, shape (k,)
        For a peak (a point, or a compact excess on a star's trail), the detected star trail
        whose centre line it lies on (-1: none).
    line_theta, line_rho : ndarray, float64, shape (k,)
        For streaks, the Hough line ``x cos(theta) + y sin(theta) = rho`` of its pixels
        (NaN otherwise): the moments of a streak that crossed star trails are biased by them,
        the line is not.
    extension : ndarray, float64, shape (k,)
        For a point, the signal-to-noise ratio of its excess over the light along the drift
        (0 otherwise).
    """

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    length: np.ndarray
    npix: np.ndarray
    flux: np.ndarray
    snr: np.ndarray
    psf_flux: np.ndarray
    cls: np.ndarray
    trail: np.ndarray
    on_trail: np.ndarray
    line_theta: np.ndarray
    line_rho: np.ndarray
    extension: np.ndarray

    def __len__(self) -> int:
        return int(self.x.size)


def psf_photometry(data: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: float,
                   noise: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit a round Gaussian PSF's flux at each (x, y) of a background-subtracted image.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Background-subtracted image, ADU.
    x, y : ndarray, shape (k,)
        Positions, pixels.
    sigma : float
        PSF sigma, pixels.
    noise : float or ndarray (k,)
        Per-pixel noise (sky-limited), ADU.

    Returns
    -------
    flux, snr : ndarray, shape (k,)
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    h = int(np.ceil(3 * sigma))
    iy, ix, inside = _stamp_index(x, y, h, data.shape)
    vals = data[iy, ix].astype(float)
    return _psf_fit(vals, inside, ix, iy, x, y, sigma, noise)


def _stamp_index(x: np.ndarray, y: np.ndarray, h: int,
                 shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clipped (iy, ix) of (2h+1)^2 stamps centred on the nearest pixels, and the in-CCD mask."""
    off = np.arange(-h, h + 1)
    ix = np.rint(x).astype(np.int64)[:, None, None] + off[None, None, :]
    iy = np.rint(y).astype(np.int64)[:, None, None] + off[None, :, None]
    inside = (ix >= 0) & (ix < shape[1]) & (iy >= 0) & (iy < shape[0])
    return iy.clip(0, shape[0] - 1), ix.clip(0, shape[1] - 1), inside


def _psf_fit(vals: np.ndarray, inside: np.ndarray, ix: np.ndarray, iy: np.ndarray,
             x: np.ndarray, y: np.ndarray, sigma: float,
             noise: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares flux of a pixel-sampled Gaussian PSF in stamps, and its S/N."""
    p = np.exp(-0.5 * ((ix - x[:, None, None]) ** 2 + (iy - y[:, None, None]) ** 2) / sigma ** 2)
    p = np.where(inside, p / (2 * np.pi * sigma ** 2), 0.0)
    den = np.maximum((p * p).sum(axis=(1, 2)), 1e-300)
    flux = (p * vals).sum(axis=(1, 2)) / den
    err = np.asarray(noise, float) / np.sqrt(den)
    return flux, flux / err


def _kernel1d(sigma: float) -> np.ndarray:
    """Normalised Gaussian taps truncated at 2 sigma."""
    r = np.arange(-int(2.0 * sigma + 0.5), int(2.0 * sigma + 0.5) + 1)
    k = np.exp(-0.5 * (r / sigma) ** 2)
    return k / k.sum()


def bin2x2(data: np.ndarray, mask: np.ndarray | None = None,
           sky2: np.ndarray | None = None) -> np.ndarray:
    """Sum 2 x 2 blocks of ``data`` (an odd last row/column dropped), masked pixels as zero.

    ``sky2`` (shape (ny // 2, nx // 2), ADU per pixel), when given, is subtracted from each
    pixel of its block first: the sky need not be subtracted at full resolution.

    Returns
    -------
    ndarray, float32, shape (ny // 2, nx // 2)
        The detection image of :func:`classify_sources`; :func:`find_streaks` reuses it.
    """
    ny, nx = data.shape
    ny2, nx2 = ny // 2, nx // 2
    d = data[:2 * ny2, :2 * nx2]
    bad = np.flatnonzero(mask[:2 * ny2, :2 * nx2]) if mask is not None else np.zeros(0, int)
    if bad.size > d.size // 100:
        # many masked pixels (a large bleed): zero them all, count the good ones per block
        m = mask[:2 * ny2, :2 * nx2]
        cols = np.where(m[:, 0::2], np.float32(0), d[:, 0::2])
        cols += np.where(m[:, 1::2], np.float32(0), d[:, 1::2])
        out = np.add(cols[0::2], cols[1::2])
        if sky2 is not None:
            mc = m[:, 0::2].view(np.uint8) + m[:, 1::2].view(np.uint8)
            out -= (np.float32(4) - (mc[0::2] + mc[1::2])) * sky2
        return out
    # columns first (strided reads, contiguous rows out), then rows: contiguous both. By
    # blocks of rows, so the column sums stay in the CPU cache (a whole-image temporary of
    # them was 16 MB of fresh pages written and read back); the same additions in the same
    # order
    out = np.empty((ny2, nx2), dtype=np.float32)
    block = 64
    cols = np.empty((2 * block, nx2), dtype=np.float32)
    for q0 in range(0, ny2, block):
        q1 = min(ny2, q0 + block)
        c = cols[:2 * (q1 - q0)]
        np.add(d[2 * q0:2 * q1, 0::2], d[2 * q0:2 * q1, 1::2], out=c, dtype=np.float32)
        o = out[q0:q1]
        np.add(c[0::2], c[1::2], out=o)
        if sky2 is not None:
            o -= np.float32(4) * sky2[q0:q1]
    if bad.size:
        # the blocks holding a masked pixel (few): summed again from their good pixels
        by, bx = np.divmod(bad, 2 * nx2)
        blk = np.unique((by // 2) * nx2 + bx // 2)
        qy, qx = np.divmod(blk, nx2)
        yy = (2 * qy)[:, None] + np.array([0, 0, 1, 1])[None, :]
        xx = (2 * qx)[:, None] + np.array([0, 1, 0, 1])[None, :]
        v = d[yy, xx].astype(np.float32)
        if sky2 is not None:
            v -= sky2[qy, qx][:, None]
        v[mask[yy, xx]] = 0.0
        out.ravel()[blk] = v.sum(axis=1)
    return out


def _smooth(img: np.ndarray, k: np.ndarray, block: int = 64) -> np.ndarray:
    """Separable convolution with the symmetric float32 taps ``k``, zero outside the image.

    Shifted slice additions in float32 (rows, then columns): faster than scipy's filters,
    which work in float64 line buffers. Done by blocks of ``block`` rows (the row pass reads
    ``r`` rows beyond the block), so each block's temporaries stay in the CPU cache; every
    output value gets the same additions in the same order as on the whole image.
    """
    r = k.size // 2
    ny = img.shape[0]
    out = np.empty(img.shape, dtype=np.result_type(img, k))
    for r0 in range(0, ny, block):
        r1 = min(ny, r0 + block)
        n = r1 - r0
        a = img[r0:r1] * k[r]
        for j in range(1, r + 1):
            s = max(0, j - r0)                 # rows i of the block with i - j >= 0
            if s < n:
                a[s:] += k[r - j] * img[r0 + s - j:r1 - j]
            e = min(n, ny - j - r0)            # rows i with i + j < ny
            if e > 0:
                a[:e] += k[r + j] * img[r0 + j:r0 + e + j]
        o = out[r0:r1]
        np.multiply(a, k[r], out=o)
        for j in range(1, r + 1):
            o[:, j:] += k[r - j] * a[:, :-j]
            o[:, :-j] += k[r + j] * a[:, j:]
    return out


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``img`` at (x, y) (array index units), clipped to the image."""
    ny, nx = img.shape
    x = np.clip(x, 0.0, nx - 1.001)
    y = np.clip(y, 0.0, ny - 1.001)
    x0 = x.astype(np.int64)
    y0 = y.astype(np.int64)
    fx = x - x0
    fy = y - y0
    i = y0 * nx + x0
    f = img.ravel()
    return ((f[i] * (1 - fx) + f[i + 1] * fx) * (1 - fy) +
            (f[i + nx] * (1 - fx) + f[i + nx + 1] * fx) * fy)


def classify_sources(data: np.ndarray, noise: float, geom: DriftGeometry, *,
                     psf_sigma: float, trail_x: np.ndarray, trail_y: np.ndarray,
                     mask: np.ndarray | None = None, saturated: np.ndarray | None = None,
                     gain: float | None = None,
                     detect_snr: float = 4.5, point_snr: float = 5.0, minarea: int = 5,
                     streak_factor: float = 2.0, sharp_factor: float = 0.55,
                     edge: int = 3, on_trail_px: float = 1.0,
                     star_ratio_max: float = 3.0, trail_var: float = 0.07,
                     glint_fwhm: float = 2.0, dq: np.ndarray | None = None,
                     binned: np.ndarray | None = None,
                     sky2: np.ndarray | None = None) -> Sources:
    """Detect and classify every source of a background-subtracted CCD image.

    Parameters
    ----------
    data : ndarray, float32, shape (ny, nx)
        Image minus the sky background (or with it, and ``sky2``), ADU (not modified).
    noise : float
        Per-pixel sky noise, ADU.
    geom : DriftGeometry
        Drift of the CCD (direction and trail length).
    psf_sigma : float
        PSF sigma, pixels.
    trail_x, trail_y : ndarray, shape (t,)
        Centres of the detected star trails.
    mask : ndarray, bool, shape (ny, nx), optional
        Pixels to ignore (bad, saturated, bleed: CP codes 1-4): they count zero.
    saturated : ndarray, bool, shape (ny, nx), optional
        Saturated and bleed pixels: no point source within 3 FWHM of them.
    gain : float, optional
        Electrons per ADU: the photon noise of a trail under a point source raises the noise
        of its excess (sky noise only when None).
    detect_snr : float
        Segmentation threshold on the PSF-matched-filter signal-to-noise ratio of a bin.
    point_snr : float
        Threshold of a point's excess over the light along the drift, in sigmas.
    minarea : int
        Smallest segment kept, pixels.
    on_trail_px : float
        A point this close (across the drift) to a detected trail's centre line lies on it.
    trail_var : float
        Relative variation of a star's light along its trail on the scale of a seeing
        crossing (transparency and seeing): part of the noise of a point's excess over it.
    binned : ndarray, float32, shape (ny // 2, nx // 2), optional
        ``bin2x2(data, mask, sky2)``, when the caller has it already.
    sky2 : ndarray, shape (ny // 2, nx // 2), optional
        Sky level (ADU per pixel) of each 2 x 2 block, when ``data`` still has the sky.
    star_ratio_max : float
        A point on a star's trail line brighter than this many times the star's own light
        under it (in the filtered image) is a flash, not the star's brightening: a star
        varying that much within a seeing crossing is far less likely than a coincidence.
    glint_fwhm : float
        A peak this many FWHM from a streak's line (its core, where a glint of the satellite
        is, the line's error included) is the streak's.
    dq : ndarray, uint8, shape (ny, nx), optional
        CP data-quality codes: a peak within 2 px of pixels flagged as a cosmic ray (code 5)
        is that cosmic ray (its charge spreads into unflagged pixels around them).
    """
    import scipy.ndimage as ndi

    data = np.asarray(data, dtype=np.float32)
    ny, nx = data.shape
    sig = float(psf_sigma)
    noise = float(noise)
    # --- detection on the 2 x 2 binned image ------------------------------------------------
    binned = bin2x2(data, mask, sky2) if binned is None else binned
    sb = float(np.sqrt(sig ** 2 + 0.25)) / 2.0       # PSF sigma in bins (pixel width included)
    k1 = _kernel1d(sb)
    filt = _smooth(binned, k1.astype(np.float32))
    fnoise = 2.0 * noise * float((k1 ** 2).sum())     # noise of the filtered 2 x 2 sums
    above = filt > detect_snr * fnoise
    seg, nlab = ndi.label(above, structure=np.ones((3, 3), bool))
    objs, bidx, blab = _moments(binned, seg, np.flatnonzero(above), nlab,
                                max(2, int(np.ceil(minarea / 4))))
    del above
    del binned
    k = objs.size
    lab_of = np.full(nlab + 1, -1, np.int64)
    lab_of[objs["label"]] = np.arange(k)
    x, y = objs["x"].copy(), objs["y"].copy()
    a, b, theta = objs["a"], objs["b"], objs["theta"].copy()
    length = np.sqrt(12.0) * a
    # trail membership: the segment under each trail centre
    txs = np.asarray(trail_x, float)
    tys = np.asarray(trail_y, float)
    trail_of = np.full(k, -1, dtype=np.int64)
    tseg = np.full(txs.size, -1, np.int64)
    if txs.size:
        tbx = np.floor(txs / 2).astype(np.int64)
        tby = np.floor(tys / 2).astype(np.int64)
        on = (tbx >= 0) & (tbx < seg.shape[1]) & (tby >= 0) & (tby < seg.shape[0])
        tseg[on] = lab_of[seg[tby[on], tbx[on]]]
        has = tseg >= 0
        trail_of[tseg[has]] = np.flatnonzero(has)
    dang = np.abs(np.angle(np.exp(2j * (theta - geom.angle_rad)))) / 2.0  # axis difference
    L = max(geom.length_px, 1.0)
    along = dang < np.radians(10.0)
    long_ = length > np.where(along, 4.0 * L, streak_factor * (L + 4 * sig))
    trail_shape = (np.abs(length - L) < 0.5 * L + 3 * sig) & along & (a > 2.0 * b)
    cls = np.full(k, "artefact", dtype=object)
    cls[trail_shape | (trail_of >= 0)] = "trail"
    cls[(b < sharp_factor * sig) & (trail_of < 0) & ~trail_shape] = "cosmic_ray"
    line_theta = np.full(k, np.nan)
    line_rho = np.full(k, np.nan)
    streak = np.zeros(k, bool)
    # a satellite's streak cut short by a corner of the CCD (shorter than twice a trail) is
    # a segment elongated at 20 degrees or more to the drift, where no single star trail
    # lies, whose line runs from the CCD's edge to its edge; blends of trails are elongated
    # at such angles too, but in the CCD's interior
    tilted = (dang >= np.radians(20.0)) & (a > 2.0 * b) & (length > L + 4 * sig) & ~long_
    border = 2 * 2.3548 * sig + 2.0
    for i in np.flatnonzero(long_ | tilted):  # long segments are rare: a few per CCD
        th, rho, span, fill = _hough_line(bidx, blab, int(objs["label"][i]), seg.shape[1],
                                          float(theta[i]))
        # a streak is a continuous line much longer than a trail (not along the drift, where
        # collinear trails merge): a segment as thin as the PSF, or, for a segment that has
        # absorbed the trails it crosses (its moments are theirs too), a line of six trail
        # lengths at least (a staircase of merged trails is neither)
        dl = np.abs(np.angle(np.exp(2j * (th + np.pi / 2 - geom.angle_rad)))) / 2.0
        if tilted[i]:
            if not (dl >= np.radians(20.0) and span > L + 4 * sig and fill >= 0.8):
                continue
            (xa, ya), (xb, yb) = _line_ends(bidx, blab, int(objs["label"][i]), seg.shape[1],
                                            th, rho)
            at_edge = [min(xe, ye, nx - 1 - xe, ny - 1 - ye) <= border
                       for xe, ye in ((xa, ya), (xb, yb))]
            if not all(at_edge):
                continue
        else:
            need = 4.0 * L if dl < np.radians(10.0) else streak_factor * (L + 4 * sig)
            if not (span > need and fill >= 0.8 and (b[i] < 2.0 * sig or span > 6.0 * L)):
                continue
        streak[i] = True
        line_theta[i], line_rho[i] = th, rho
        c, s_ = np.cos(th), np.sin(th)
        # the line's point nearest the barycentre, and its direction
        d = x[i] * c + y[i] * s_ - rho
        x[i], y[i] = x[i] - d * c, y[i] - d * s_
        theta[i] = th + np.pi / 2
    cls[streak] = "streak"
    # --- point sources: compact peaks standing out of the light along the drift --------------
    pk = _peaks(data, sky2, mask, filt, bidx, fnoise, noise, gain, geom, sig, point_snr,
                sharp_factor, trail_var)
    del filt
    px, py = pk["x"], pk["y"]
    margin = max(edge, int(np.ceil(2 * 2.3548 * sig)))
    keep = (px >= margin) & (px <= nx - 1 - margin) & (py >= margin) & (py <= ny - 1 - margin)
    if mask is not None and px.size:
        # next to masked pixels (a bad column's end, a bleed trail) a peak is an artefact
        iy, ix, _ = _stamp_index(px, py, 3, mask.shape)
        keep &= ~mask[iy, ix].any(axis=(1, 2))
    if saturated is not None and px.size:
        # the halo of a saturated star is structured (bleed, clipped core): 3 FWHM clear
        iy, ix, _ = _stamp_index(px, py, int(np.ceil(3 * 2.3548 * sig)), saturated.shape)
        keep &= ~saturated[iy, ix].any(axis=(1, 2))
    pk = {key: v[keep] for key, v in pk.items()}
    px, py = pk["x"], pk["y"]
    p_on, p_self = _trail_relation(px, py, txs, tys, geom, sig, on_trail_px,
                                   pk["steady_snr"] >= 3.0)
    # beside a detected trail (off its line) the steady light is that trail's wing; where no
    # trail was detected, the steady light itself says there is a star under the peak
    p_near = _trail_relation(px, py, txs, tys, geom, sig, 3.0 * sig,
                             np.ones(px.size, bool))[0] >= 0
    # a compact excess on a star's steady light, not far brighter than the star, may be the
    # star's own short brightening: it stays with the trail (its light curve decides)
    on_star = ((p_on >= 0) | ~p_near) & (pk["steady_snr"] >= 3.0) & \
        ~(pk["excess"] > star_ratio_max * pk["steady"])
    sharp = pk["sharp"]
    if dq is not None and px.size:
        # a cosmic ray the CP flagged (code 5) leaves charge in the unflagged pixels around
        # its core, on a trail's wing enough for a compact excess no sharper than the
        # seeing's: it is the cosmic ray, not a flash (a flash within 2 px of one is rarer by
        # far than the cosmic rays themselves)
        iy, ix, inside = _stamp_index(px, py, 2, dq.shape)
        sharp = sharp | ((dq[iy, ix] == 5) & inside).any(axis=(1, 2))
    pcls = np.where(sharp, "cosmic_ray", np.where(on_star, "trail", "point"))
    # longer than the PSF (two trails' overlapping ends, a blend): no point
    pcls = np.where((pcls == "point") & (pk["a"] > 1.35 * sig), "artefact", pcls)
    # inside the along-drift extent of two trails next to it (within 3 PSF sigma across):
    # where two trails' ends overlap, the light along the drift steps up by one trail's
    # light for the length of the overlap, a compact excess when it is shorter than the
    # comparison baseline, however round the sum looks; unless far brighter than the
    # light under it (``star_ratio_max``) it is that overlap
    two = (_covering_trails(px, py, txs, tys, geom, 3.0 * sig) >= 2) & \
        ~(pk["excess"] > star_ratio_max * pk["steady"])
    pcls = np.where((pcls == "point") & two, "artefact", pcls)
    # on a streak's line (its crossings with trails, a glint): the streak's; its core is
    # ~1 FWHM wide and its line ~1 px off at most, so beyond ``glint_fwhm`` a peak is no
    # light of the satellite (a flash beside the streak)
    for th, rho in zip(line_theta[streak], line_rho[streak]):
        on_line = np.abs(px * np.cos(th) + py * np.sin(th) - rho) <= glint_fwhm * 2.3548 * sig
        pcls = np.where(on_line, "streak", pcls)
        pk["theta"] = np.where(on_line, th + np.pi / 2, pk["theta"])
    pseg = lab_of[seg[np.clip(np.floor(py / 2).astype(np.int64), 0, seg.shape[0] - 1),
                      np.clip(np.floor(px / 2).astype(np.int64), 0, seg.shape[1] - 1)]]
    del seg
    # a peak takes over its segment's row when the segment is not a star trail (or the
    # segment's "trail" was the peak itself) nor a streak
    inseg = pseg >= 0
    s_ = np.maximum(pseg, 0)
    absorbs = inseg & (cls[s_] != "streak") & \
        ((cls[s_] != "trail") | ((trail_of[s_] == p_self) & (p_self >= 0)))
    absorbed = np.zeros(k, bool)
    absorbed[pseg[absorbs]] = True
    # a trail detection that was a point itself belongs to the point, not to a segment
    self_trail = p_self[p_self >= 0]
    trail_seg = trail_of.copy()
    trail_seg[np.isin(trail_seg, self_trail)] = -1
    rest = ~absorbed
    npt = px.size
    pnpix = np.where(absorbs, objs["npix"][s_], 0)
    return Sources(
        x=np.concatenate([x[rest], px]), y=np.concatenate([y[rest], py]),
        a=np.concatenate([a[rest], pk["a"]]), b=np.concatenate([b[rest], pk["b"]]),
        theta=np.concatenate([theta[rest], pk["theta"]]),
        length=np.concatenate([length[rest], np.sqrt(12.0) * pk["a"]]),
        npix=np.concatenate([objs["npix"][rest], pnpix]).astype(np.int64),
        flux=np.concatenate([objs["flux"][rest], pk["flux"]]),
        snr=np.concatenate([np.full(int(rest.sum()), np.nan), pk["snr"]]),
        psf_flux=np.concatenate([np.full(int(rest.sum()), np.nan), pk["flux"]]),
        cls=np.concatenate([cls[rest].astype(str), pcls.astype(str)]),
        trail=np.concatenate([trail_seg[rest], p_self]),
        on_trail=np.concatenate([np.full(int(rest.sum()), -1, np.int64), p_on]),
        line_theta=np.concatenate([line_theta[rest], np.full(npt, np.nan)]),
        line_rho=np.concatenate([line_rho[rest], np.full(npt, np.nan)]),
        extension=np.concatenate([np.zeros(int(rest.sum())), pk["excess_snr"]]))


def _moments(binned: np.ndarray, seg: np.ndarray, idx: np.ndarray, nlab: int,
             minbins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moments of every segment of the binned image, by bincounts over the segment bins only.

    Positive bin values weigh the moments (bin centres in full-resolution pixels, plus the
    0.25 px^2 variance of a pixel's position within its 2-px bin). Returns the objects
    (fields x, y, a, b, theta, npix, flux, label), and the flat indices and labels of all
    segment bins sorted by label.
    """
    nxb = seg.shape[1]
    lab = seg.ravel()[idx]          # idx: the flat indices of the segment bins
    # sort the segment bins by label (a radix sort when labels fit 16 bits)
    order = np.argsort(lab.astype(np.uint16) if nlab < 65536 else lab, kind="stable")
    idx = idx[order]
    lab = lab[order]
    yy, xx = np.divmod(idx, nxb)
    xx = 2.0 * xx + 0.5
    yy = 2.0 * yy + 0.5
    v = binned.ravel()[idx].astype(np.float64)
    w = np.maximum(v, 0.0)
    n = nlab + 1
    nb = np.bincount(lab, minlength=n)
    sw = np.bincount(lab, w, minlength=n)
    safe = np.where(sw > 0, sw, 1.0)
    xm = np.bincount(lab, w * xx, minlength=n) / safe
    ym = np.bincount(lab, w * yy, minlength=n) / safe
    dx = xx - xm[lab]
    dy = yy - ym[lab]
    x2 = np.bincount(lab, w * dx * dx, minlength=n) / safe + 0.25
    y2 = np.bincount(lab, w * dy * dy, minlength=n) / safe + 0.25
    xy = np.bincount(lab, w * dx * dy, minlength=n) / safe
    half = 0.5 * (x2 + y2)
    root = np.sqrt((0.5 * (x2 - y2)) ** 2 + xy * xy)
    keep = (nb >= minbins) & (sw > 0)
    keep[0] = False
    sel = np.flatnonzero(keep)
    objs = np.zeros(sel.size, dtype=[
        ("x", "f8"), ("y", "f8"), ("a", "f8"), ("b", "f8"), ("theta", "f8"), ("npix", "i8"),
        ("flux", "f8"), ("label", "i8")])
    objs["x"], objs["y"] = xm[sel], ym[sel]
    objs["a"] = np.sqrt(half + root)[sel]
    objs["b"] = np.sqrt(np.maximum(half - root, 0.0))[sel]
    objs["theta"] = (0.5 * np.arctan2(2 * xy, x2 - y2))[sel]
    objs["npix"] = 4 * nb[sel]
    objs["flux"] = np.bincount(lab, v, minlength=n)[sel]
    objs["label"] = sel
    return objs, idx, lab


def _peaks(data: np.ndarray, sky2: np.ndarray | None, mask: np.ndarray | None,
           filt: np.ndarray, bidx: np.ndarray,
           fnoise: float, noise: float, gain: float | None, geom: DriftGeometry, sig: float,
           point_snr: float, sharp_factor: float, trail_var: float) -> dict[str, np.ndarray]:
    """Compact peaks of the filtered binned image that stand out of the light along the drift.

    Returns per peak (full-resolution pixels): x, y, excess (filtered excess over the light
    along the drift), excess_snr, steady (the light along the drift beyond the peak's own
    wings, filtered units) and steady_snr, flux and snr (PSF fit of the full-resolution
    pixels, the light along the drift subtracted where there is some), a, b, theta (moments
    of that light), sharp (sharper than the PSF).
    """
    nyb, nxb = filt.shape
    f = filt.ravel()
    n = f.size
    # (the candidates shrink with each comparison: the later ones run on few pixels)
    p = bidx
    fc = f[p]
    for o in (1, nxb - 1, nxb, nxb + 1):  # strict on one side, so a plateau gives one peak
        keep = fc > f[np.minimum(p + o, n - 1)]
        p, fc = p[keep], fc[keep]
        keep = fc >= f[np.maximum(p - o, 0)]
        p, fc = p[keep], fc[keep]
    f0 = f[p]
    pby, pbx = np.divmod(p, nxb)
    fl, fr = f[np.maximum(p - 1, 0)], f[np.minimum(p + 1, n - 1)]
    fd, fu = f[np.maximum(p - nxb, 0)], f[np.minimum(p + nxb, n - 1)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ddx = np.nan_to_num(np.clip(0.5 * (fl - fr) / (fl - 2 * f0 + fr), -0.5, 0.5))
        ddy = np.nan_to_num(np.clip(0.5 * (fd - fu) / (fd - 2 * f0 + fu), -0.5, 0.5))
    xb = pbx + ddx
    yb = pby + ddy
    # the light along the drift k pixels before and after the peak
    kpx = 3.7 * sig
    kb = kpx / 2.0
    ux, uy = geom.unit
    ahead = _bilinear(filt, xb + kb * ux, yb + kb * uy)
    behind = _bilinear(filt, xb - kb * ux, yb - kb * uy)
    level = np.maximum(ahead, behind)
    excess = f0 - level
    # noise of the filtered image there: sky, plus the photon noise of the light under the
    # peak (the filtered 2 x 2 sums are four times the mean pixel value)
    var_pix = noise ** 2 + np.maximum(level, 0.0) / 4.0 / (gain if gain else np.inf)
    fsig = fnoise * np.sqrt(var_pix) / noise
    # a star's light varies along its trail with transparency and seeing (a few per cent
    # over a seeing crossing): an excess must stand out of that as well
    excess_snr = excess / np.hypot(fsig * np.sqrt(2.0), trail_var * np.maximum(level, 0.0))
    sel = np.flatnonzero(excess_snr >= point_snr)
    xb, yb, f0, excess, excess_snr, level, fsig = (
        v[sel] for v in (xb, yb, f0, excess, excess_snr, level, fsig))
    # compact in every direction: a streak's ridge keeps its light on both sides along its
    # own direction (a neighbouring trail on one side does not make a ridge)
    rmin = excess.copy()
    wing = np.zeros_like(excess)
    for j, th in enumerate(_DIRECTIONS[1:], start=1):
        cx = np.cos(geom.angle_rad + th)
        cy = np.sin(geom.angle_rad + th)
        nb = np.minimum(_bilinear(filt, xb + kb * cx, yb + kb * cy),
                        _bilinear(filt, xb - kb * cx, yb - kb * cy))
        rmin = np.minimum(rmin, f0 - nb)
        if j == _DIRECTIONS.size // 2:
            wing = nb  # across the drift: the peak's own wings
    compact = rmin >= 0.5 * excess
    sel = np.flatnonzero(compact)
    xb, yb, f0, excess, excess_snr, level, fsig, wing = (
        v[sel] for v in (xb, yb, f0, excess, excess_snr, level, fsig, wing))
    steady = np.maximum(level - wing, 0.0)
    steady_snr = steady / (fsig * np.sqrt(2.0))
    x = 2.0 * xb + 0.5
    y = 2.0 * yb + 0.5
    # full resolution: the light along the drift subtracted (where there is some), centroid,
    # PSF flux, moments and sharpness
    h = int(np.ceil(3 * sig))
    iy, ix, inside = _stamp_index(x, y, h, data.shape)
    iy, ix = np.broadcast_arrays(iy, ix)
    ny, nx = data.shape

    def pixels(iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
        v = data[iy, ix].astype(np.float64)
        if sky2 is not None:
            v -= sky2[np.minimum(iy // 2, sky2.shape[0] - 1), np.minimum(ix // 2, sky2.shape[1] - 1)]
        return v

    vals = pixels(iy, ix)
    # (a stamp's width away along the drift on both sides, clear of the peak's core)
    sx, sy = int(round((2 * h + 1) * ux)), int(round((2 * h + 1) * uy))
    sub = level / (fsig * np.sqrt(2.0)) >= 3.0
    if sub.any():
        a1 = pixels((iy + sy).clip(0, ny - 1), (ix + sx).clip(0, nx - 1))
        a2 = pixels((iy - sy).clip(0, ny - 1), (ix - sx).clip(0, nx - 1))
        vals = np.where(sub[:, None, None], vals - 0.5 * (a1 + a2), vals)
    if mask is not None:
        inside = inside & ~mask[iy, ix]
    # (a masked pixel a stamp's width away may be non-finite)
    vals = np.where(inside & np.isfinite(vals), vals, 0.0)
    x, y = _psf_peak(vals, ix[:, h, h], iy[:, h, h], sig, h)
    var_pix = noise ** 2 + np.maximum(level, 0.0) / 4.0 / (gain if gain else np.inf)
    pnoise = np.sqrt(var_pix) * np.where(sub, np.sqrt(1.5), 1.0)
    flux, snr = _psf_fit(vals, inside, ix, iy, x, y, sig, pnoise)
    # moments of the central 7 x 7 (positive pixels above 1 sigma)
    c7 = slice(h - 3, h + 4)
    w7 = np.where(vals[:, c7, c7] > pnoise[:, None, None], vals[:, c7, c7], 0.0)
    s7 = np.maximum(w7.sum(axis=(1, 2)), 1e-30)
    dx = ix[:, c7, c7] - x[:, None, None]
    dy = iy[:, c7, c7] - y[:, None, None]
    x2 = (w7 * dx * dx).sum(axis=(1, 2)) / s7
    y2 = (w7 * dy * dy).sum(axis=(1, 2)) / s7
    xy = (w7 * dx * dy).sum(axis=(1, 2)) / s7
    half = 0.5 * (x2 + y2)
    root = np.sqrt((0.5 * (x2 - y2)) ** 2 + xy * xy)
    pa = np.sqrt(half + root)
    pb = np.sqrt(np.maximum(half - root, 0.0))
    ptheta = 0.5 * np.arctan2(2 * xy, x2 - y2)
    peak = vals[:, h - 1:h + 2, h - 1:h + 2].max(axis=(1, 2))
    psf_peak = 1.0 / (2 * np.pi * sig ** 2)
    sharp = (pb < sharp_factor * sig) | (peak > 3.0 * psf_peak * np.maximum(flux, 1e-30))
    return {"x": x, "y": y, "excess": excess, "excess_snr": excess_snr, "steady": steady,
            "steady_snr": steady_snr, "flux": flux, "snr": snr, "a": pa, "b": pb,
            "theta": ptheta, "sharp": sharp}


def _psf_peak(vals: np.ndarray, x0: np.ndarray, y0: np.ndarray, sig: float,
              h: int) -> tuple[np.ndarray, np.ndarray]:
    """Position of the PSF-correlation maximum within +-2 px of each stamp's centre.

    ``vals`` (k, 2h+1, 2h+1) are stamps centred on pixels (x0, y0); the correlation with a
    Gaussian PSF is computed at integer offsets, its maximum refined by a parabola.
    """
    r = 3
    g = np.exp(-0.5 * np.arange(-r, r + 1) ** 2 / sig ** 2)
    kern = np.outer(g, g)
    score = np.empty((vals.shape[0], 5, 5))
    for oy in range(-2, 3):
        for ox in range(-2, 3):
            win = vals[:, h + oy - r:h + oy + r + 1, h + ox - r:h + ox + r + 1]
            score[:, oy + 2, ox + 2] = (win * kern).sum(axis=(1, 2))
    best = score.reshape(len(score), 25).argmax(axis=1)
    by, bx = np.divmod(best, 5)
    byc, bxc = by.clip(1, 3), bx.clip(1, 3)
    i = np.arange(len(score))
    c0 = score[i, byc, bxc]
    with np.errstate(divide="ignore", invalid="ignore"):
        dx = 0.5 * (score[i, byc, bxc - 1] - score[i, byc, bxc + 1]) / \
            (score[i, byc, bxc - 1] - 2 * c0 + score[i, byc, bxc + 1])
        dy = 0.5 * (score[i, byc - 1, bxc] - score[i, byc + 1, bxc]) / \
            (score[i, byc - 1, bxc] - 2 * c0 + score[i, byc + 1, bxc])
    dx = np.nan_to_num(np.clip(dx, -1.0, 1.0))
    dy = np.nan_to_num(np.clip(dy, -1.0, 1.0))
    return x0 + bxc - 2 + dx, y0 + byc - 2 + dy


def _pairs_within_x(px: np.ndarray, py: np.ndarray, tx: np.ndarray, ty: np.ndarray,
                    reach: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (peak, trail) pair whose trail centre is within ``reach`` px of the peak in x.

    Trails sorted by x, a window of them per peak (no peaks x trails matrix). Returns the
    peak index, the trail index (into ``tx``), and the trail centre's offset from the peak
    (dx, dy, px), each of shape (pairs,).
    """
    order = np.argsort(tx)
    txs, tys = tx[order], ty[order]
    lo = np.searchsorted(txs, px - reach)
    hi = np.searchsorted(txs, px + reach)
    cnt = hi - lo
    pid = np.repeat(np.arange(px.size), cnt)
    tid = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt) + np.repeat(lo, cnt)
    return pid, order[tid], txs[tid] - px[pid], tys[tid] - py[pid]


def _trail_relation(px: np.ndarray, py: np.ndarray, tx: np.ndarray, ty: np.ndarray,
                    geom: DriftGeometry, sig: float, on_px: float,
                    steady: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each peak, a detected trail whose centre line it lies on.

    Returns ``on_trail`` (a star's trail: light along the drift beyond the peak's wings) and
    ``self_trail`` (a trail detection that is the peak itself: no such light), -1 where none.
    """
    on_trail = np.full(px.size, -1, np.int64)
    self_trail = np.full(px.size, -1, np.int64)
    if px.size == 0 or tx.size == 0:
        return on_trail, self_trail
    ux, uy = geom.unit
    half = 0.5 * geom.length_px + 2 * sig
    # trails whose centre is within half a trail (plus PSF) in x
    pid, tid, dxs, dys = _pairs_within_x(px, py, tx, ty, half * abs(ux) + on_px + 1.0)
    along = np.abs(dxs * ux + dys * uy)
    across = np.abs(-dxs * uy + dys * ux)
    ok = (along <= half) & (across <= on_px)
    if not ok.any():
        return on_trail, self_trail
    pid, tid, across = pid[ok], tid[ok], across[ok]
    # the nearest line first: assign in order of decreasing distance so the nearest wins
    o = np.argsort(-across)
    best = np.full(px.size, -1, np.int64)
    best[pid[o]] = tid[o]
    hit = best >= 0
    on_trail[hit & steady] = best[hit & steady]
    self_trail[hit & ~steady] = best[hit & ~steady]
    return on_trail, self_trail


def _covering_trails(px: np.ndarray, py: np.ndarray, tx: np.ndarray, ty: np.ndarray,
                     geom: DriftGeometry, across_px: float) -> np.ndarray:
    """Number of detected trails whose extent along the drift covers each peak.

    Only trails within ``across_px`` of the peak across the drift count: their light is
    under the peak. Trails are windowed by x (:func:`_pairs_within_x`).
    """
    n = np.zeros(px.size, np.int64)
    if px.size == 0 or tx.size == 0:
        return n
    ux, uy = geom.unit
    half = 0.5 * geom.length_px
    pid, _, dxs, dys = _pairs_within_x(px, py, tx, ty,
                                       half * abs(ux) + across_px * abs(uy) + 1.0)
    ok = (np.abs(dxs * ux + dys * uy) <= half) & (np.abs(-dxs * uy + dys * ux) <= across_px)
    return np.bincount(pid[ok], minlength=px.size)


def _hough_line(bidx: np.ndarray, blab: np.ndarray, label: int, nxb: int, axis: float,
                max_pixels: int = 1500) -> tuple[float, float, float, float]:
    """Strongest straight line through a segment's bins: (theta, rho, span, fill).

    The line is ``x cos(theta) + y sin(theta) = rho`` (full-resolution pixels), searched
    within 30 degrees of the segment's major ``axis`` (radians; trails merged with a streak
    pull the axis by a few degrees); ``span`` is the extent along it of the bins within 2.5 px
    of it, ``fill`` the fraction of 2-px steps along that extent holding one of them.
    """
    lo, hi = np.searchsorted(blab, [label, label + 1])
    yy, xx = np.divmod(bidx[lo:hi], nxb)
    xx = 2.0 * xx + 0.5
    yy = 2.0 * yy + 0.5
    if xx.size > max_pixels:
        pick = np.linspace(0, xx.size - 1, max_pixels).astype(np.int64)
        xs, ys = xx[pick], yy[pick]
    else:
        xs, ys = xx, yy
    thetas = axis + np.pi / 2 + np.radians(np.arange(-30.0, 30.25, 0.5))
    rho = xs[:, None] * np.cos(thetas)[None, :] + ys[:, None] * np.sin(thetas)[None, :]
    rbin = 2.0
    rmin = rho.min()
    ri = ((rho - rmin) / rbin).astype(np.int64)
    nr = int(ri.max()) + 1
    votes = np.bincount((ri + nr * np.arange(thetas.size)[None, :]).ravel(),
                        minlength=nr * thetas.size)
    best = int(np.argmax(votes))
    ti, rj = divmod(best, nr)
    th, r0 = float(thetas[ti]), float(rmin + (rj + 0.5) * rbin)
    c, s_ = np.cos(th), np.sin(th)
    on = np.abs(xx * c + yy * s_ - r0) <= 2.5
    if not on.any():
        return th, r0, 0.0, 0.0
    th, r0 = _fit_line(xx[on], yy[on], th, r0)  # (theta back within [0, pi))
    c, s_ = np.cos(th), np.sin(th)
    t = -xx[on] * s_ + yy[on] * c
    span = float(t.max() - t.min())
    steps = np.unique(np.floor((t - t.min()) / 2.0)).size
    return th, r0, span, steps / (span / 2.0 + 1.0)


def _line_ends(bidx: np.ndarray, blab: np.ndarray, label: int, nxb: int, theta: float,
               rho: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The two extreme points (full-resolution pixels) of a segment's bins on its line.

    Bins within 2.5 px of ``x cos(theta) + y sin(theta) = rho``, as in :func:`_hough_line`.
    """
    lo, hi = np.searchsorted(blab, [label, label + 1])
    yy, xx = np.divmod(bidx[lo:hi], nxb)
    xx = 2.0 * xx + 0.5
    yy = 2.0 * yy + 0.5
    c, s_ = np.cos(theta), np.sin(theta)
    on = np.abs(xx * c + yy * s_ - rho) <= 2.5
    if not on.any():
        return (np.nan, np.nan), (np.nan, np.nan)
    xx, yy = xx[on], yy[on]
    t = -xx * s_ + yy * c
    i, j = int(np.argmin(t)), int(np.argmax(t))
    return (float(xx[i]), float(yy[i])), (float(xx[j]), float(yy[j]))


def _fit_line(x: np.ndarray, y: np.ndarray, theta: float, rho: float) -> tuple[float, float]:
    """Least-squares (principal-axis) line ``x cos(theta) + y sin(theta) = rho`` of points.

    Returns the given (theta, rho) when there are fewer than 3 points; theta stays within
    90 degrees of the given one (same orientation of the normal).
    """
    if x.size < 3:
        return theta, rho
    mx, my = float(x.mean()), float(y.mean())
    dx, dy = x - mx, y - my
    sxx, syy, sxy = float((dx * dx).sum()), float((dy * dy).sum()), float((dx * dy).sum())
    direction = 0.5 * np.arctan2(2 * sxy, sxx - syy)     # of the line itself
    t = direction + np.pi / 2                              # of its normal
    if np.cos(t - theta) < 0:
        t += np.pi
    t = float(np.mod(t, 2 * np.pi))
    r = mx * np.cos(t) + my * np.sin(t)
    if t >= np.pi:                                         # keep theta in [0, pi)
        t, r = t - np.pi, -r
    return t, float(r)


def streak_mask(shape: tuple[int, int], sources: Sources, *,
                half_width: float) -> np.ndarray:
    """Return a boolean mask of the pixels within ``half_width`` of every streak's line.

    Each ``streak`` source is its Hough line, across the whole CCD (a satellite crosses it).

    Parameters
    ----------
    shape : (ny, nx)
    sources : Sources
    half_width : float
        Pixels on each side of the line (e.g. 1.5 FWHM).
    """
    sel = (sources.cls == "streak") & np.isfinite(sources.line_theta)
    return line_mask(shape, sources.line_theta[sel], sources.line_rho[sel],
                     half_width=half_width)


@dataclass(frozen=True)
class StreakLines:
    """Straight streaks found by :func:`find_streaks` (``k`` lines).

    Attributes
    ----------
    theta, rho : ndarray, float64, shape (k,)
        Line ``x cos(theta) + y sin(theta) = rho`` (pixels, 0-based).
    x, y : ndarray, float64, shape (k,)
        Middle of the detected part of the line.
    length : ndarray, float64, shape (k,)
        Extent of the detected part, pixels.
    votes : ndarray, int64, shape (k,)
        Significant bins on the line.
    """

    theta: np.ndarray
    rho: np.ndarray
    x: np.ndarray
    y: np.ndarray
    length: np.ndarray
    votes: np.ndarray


#: Angles per block of the Hough accumulation of :func:`find_streaks`.
_HOUGH_ANGLES = 24


def find_streaks(data: np.ndarray, noise: float, masked: np.ndarray, *, bin_px: int = 4,
                 snr: float = 5.0, min_votes: int = 30, max_lines: int = 5,
                 drift_angle: float | None = None, drift_votes: int = 150,
                 min_fill: float = 0.5, binned2: np.ndarray | None = None,
                 known: tuple[np.ndarray, np.ndarray] | None = None) -> StreakLines:
    """Find long straight streaks (satellites) by a Hough transform of a binned image.

    Star trails, bright sources and bad pixels (``masked``) are set to zero, the image is
    binned ``bin_px`` x ``bin_px`` (a faint line gains ~``bin_px`` in signal-to-noise per bin,
    noise only ``sqrt``), bins above ``snr`` vote for lines through them (0.5 degree, one-bin
    rho cells), and lines with at least ``min_votes`` bins are taken, strongest first, their
    bins (and those within 3 bins of the line) removed before the next. Within 3 degrees of
    the drift direction (``drift_angle``, radians from +x), where rows of faint star trails
    line up, a line needs ``drift_votes``.

    Parameters
    ----------
    data : ndarray, shape (ny, nx)
        Background-subtracted image, ADU.
    noise : float
        Per-pixel noise, ADU.
    masked : ndarray, bool, shape (ny, nx)
        Pixels to ignore.
    binned2 : ndarray, float32, shape (ny // 2, nx // 2), optional
        The background-subtracted image already summed in 2 x 2 blocks (:func:`bin2x2`;
        ``bin_px`` even): reused, with a whole 2 x 2 block ignored where any of its pixels is
        ``masked``; ``data`` then only gives the CCD shape.
    known : (theta, rho) arrays, optional
        Lines found already (the streak segments of :func:`classify_sources`): bins within 3
        bins of them are left out, so they are not found again.
    """
    ny, nx = data.shape
    by, bx = ny // bin_px, nx // bin_px
    crop = (slice(0, by * bin_px), slice(0, bx * bin_px))
    if binned2 is not None and bin_px % 2 == 0:
        h = bin_px // 2
        m = masked[crop]
        if m.shape[1] % 2 == 0 and m.strides[1] == 1:
            # two neighbouring bool bytes read as one uint16: non-zero where either is
            # set, the column pairs without a copy; then the rows
            pair = m.view(np.uint16)
            bad = (pair[0::2] | pair[1::2]) != 0
        else:
            m = m.view(np.uint8)
            pair = m[:, 0::2] | m[:, 1::2]       # columns, then contiguous rows
            bad = (pair[0::2] | pair[1::2]).view(bool)
        del pair
        vals = np.where(bad, np.float32(0), binned2[:by * h, :bx * h])
        tot = _bin_sum(_bin_sum(vals, h, 1), h, 0)
        if h * h <= 255:
            # the masked bins counted in uint8 (h x h per block at most) and taken from the
            # block's size: the same int16 counts without the negated and widened copies
            n_bad = _bin_sum(_bin_sum(bad.view(np.uint8), h, 1), h, 0).astype(np.int16)
            cnt = 4 * (np.int16(h * h) - n_bad)
        else:
            cnt = 4 * _bin_sum(_bin_sum((~bad).view(np.uint8).astype(np.int16), h, 1), h, 0)
    else:
        # bin by adding strided slices (columns, then rows): a 4-d reshape-and-sum over
        # the short axes is several times slower on a full CCD
        vals = np.where(masked[crop], 0.0, data[crop])
        good = (~masked[crop]).view(np.uint8)
        tot = _bin_sum(_bin_sum(vals, bin_px, 1), bin_px, 0)
        cnt = _bin_sum(_bin_sum(good.astype(np.int16), bin_px, 1), bin_px, 0)
    z = tot / (noise * np.sqrt(np.maximum(cnt, 1)))
    iy, ix = np.nonzero((z > snr) & (cnt >= bin_px * bin_px // 2))
    empty = StreakLines(*(np.zeros(0) for _ in range(5)), votes=np.zeros(0, np.int64))
    if iy.size < min_votes:
        return empty
    px = (ix + 0.5) * bin_px - 0.5
    py = (iy + 0.5) * bin_px - 0.5
    if known is not None:
        # streaks found already (bright ones, by segmentation): their bins vote for nothing
        far = np.ones(px.size, bool)
        for th, r0 in zip(*known):
            far &= np.abs(px * np.cos(th) + py * np.sin(th) - r0) > 3.0 * bin_px
        px, py = px[far], py[far]
        if px.size < min_votes:
            return empty
    thetas = np.radians(np.arange(0.0, 180.0, 0.5))
    ct, st = np.cos(thetas), np.sin(thetas)
    out: list[tuple[float, float, float, float, float, int]] = []
    # one accumulator for all points; a found line's points are then taken out of it. The
    # cell index of every (point, angle) in one float32 multiply-add pass: rho / bin_px
    # offset by a lower bound of its minimum (from the points' bounding box) plus the
    # angle's block of cells
    x_lo, x_hi, y_lo, y_hi = px.min(), px.max(), py.min(), py.max()
    corners_x = np.array([x_lo, x_lo, x_hi, x_hi])[:, None]
    corners_y = np.array([y_lo, y_hi, y_lo, y_hi])[:, None]
    r_corner = corners_x * ct[None, :] + corners_y * st[None, :]
    rmin = float(r_corner.min()) - bin_px
    nr = int(np.ceil((float(r_corner.max()) - rmin) / bin_px)) + 2
    off = (np.arange(thetas.size) * nr - rmin / bin_px).astype(np.float32)[:, None]
    ct32, st32 = (ct / bin_px).astype(np.float32), (st / bin_px).astype(np.float32)
    px32, py32 = px.astype(np.float32), py.astype(np.float32)

    def cells(pts: np.ndarray | slice, angles: slice = slice(None)) -> np.ndarray:
        """Accumulator cells of points ``pts`` at ``angles``, (angles, points), int64."""
        # angle-major, so the votes of one angle fall in one block of cells (the bincount
        # then works in a few kB of its accumulator at a time: ~40% faster than
        # point-major); int64, which bincount takes without converting
        ri = np.multiply.outer(ct32[angles], px32[pts])
        ri += np.multiply.outer(st32[angles], py32[pts])
        ri += off[angles]
        return ri.astype(np.int64)

    # by blocks of angles, whose cells are one run of the accumulator (the block's cell
    # indices stay in the CPU cache between their computation and their count)
    acc = np.zeros(nr * thetas.size, np.int64)
    for a0 in range(0, thetas.size, _HOUGH_ANGLES):
        ri = cells(slice(None), slice(a0, a0 + _HOUGH_ANGLES))
        ri -= a0 * nr
        votes = np.bincount(ri.ravel())
        acc[a0 * nr:a0 * nr + votes.size] += votes
    # votes each angle's cells need (cell k has angle k // nr)
    need = np.full(thetas.size, min_votes, np.int64)
    if drift_angle is not None:
        # the line's direction is theta + 90 degrees
        dang = np.abs(np.angle(np.exp(2j * (thetas + np.pi / 2 - drift_angle)))) / 2
        need = np.where(dang < np.radians(3.0), drift_votes, min_votes).astype(np.int64)
    # a cell below its need never gets there (votes are only taken away)
    acc2 = acc[:nr * thetas.size].reshape(thetas.size, nr)
    acc2[acc2 < need[:, None]] = 0
    alive = np.ones(px.size, bool)
    for _ in range(max_lines):
        if alive.sum() < min_votes:
            break
        x, y = px[alive], py[alive]
        best = int(np.argmax(acc))
        while 0 < acc[best] < need[best // nr]:   # fell below its need as lines were removed
            acc[best] = 0
            best = int(np.argmax(acc))
        if acc[best] < min_votes:
            break
        ti, rj = divmod(best, nr)
        r0 = rmin + (rj + 0.5) * bin_px
        dist = np.abs(x * ct[ti] + y * st[ti] - r0)
        on = dist <= 1.5 * bin_px
        near = dist <= 3.0 * bin_px
        # the line through the supporting bins (the Hough cell is 0.5 deg x bin_px coarse)
        th, r0 = _fit_line(x[on], y[on], float(thetas[ti]), r0)
        c_, s_ = np.cos(th), np.sin(th)
        tight = np.abs(x * c_ + y * s_ - r0) <= bin_px     # once more, in a narrower band
        th, r0 = _fit_line(x[tight], y[tight], th, r0)
        c_, s_ = np.cos(th), np.sin(th)
        # along-line extent of the supporting bins
        along = -x[on] * s_ + y[on] * c_
        a0, a1 = float(along.min()), float(along.max())
        am = 0.5 * (a0 + a1)
        idx = np.flatnonzero(alive)
        alive[idx[near]] = False
        np.subtract.at(acc, cells(idx[near]).ravel(), 1)   # (recomputed: the same cells)
        # a streak is continuous: most usable bins along it (across +-1 bin) are significant;
        # a chance alignment of faint sources is not
        a = np.arange(a0, a1 + bin_px, bin_px / 2)
        lx = r0 * c_ - a[:, None] * s_ + np.array([-1, 0, 1])[None, :] * bin_px * c_
        ly = r0 * s_ + a[:, None] * c_ + np.array([-1, 0, 1])[None, :] * bin_px * s_
        bxi = np.clip(((lx + 0.5) / bin_px).astype(np.int64), 0, bx - 1)
        byi = np.clip(((ly + 0.5) / bin_px).astype(np.int64), 0, by - 1)
        usable = (cnt[byi, bxi] >= bin_px * bin_px // 2).any(axis=1)
        signif = ((z[byi, bxi] > snr - 1.0) & (cnt[byi, bxi] >= bin_px * bin_px // 2)).any(axis=1)
        if usable.sum() == 0 or signif.sum() < min_fill * usable.sum():
            continue
        out.append((th, r0, r0 * c_ - am * s_, r0 * s_ + am * c_,
                    a1 - a0 + bin_px, int(on.sum())))
    if not out:
        return empty
    a = np.asarray(out)
    return StreakLines(theta=a[:, 0], rho=a[:, 1], x=a[:, 2], y=a[:, 3], length=a[:, 4],
                       votes=a[:, 5].astype(np.int64))


def _bin_sum(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Sum each run of ``n`` consecutive elements of ``a`` along ``axis`` (length divisible)."""
    sl = [slice(None)] * a.ndim
    sl[axis] = slice(0, None, n)
    out = a[tuple(sl)].copy()
    for j in range(1, n):
        sl[axis] = slice(j, None, n)
        out += a[tuple(sl)]
    return out


def line_mask(shape: tuple[int, int], theta: np.ndarray, rho: np.ndarray, *,
              half_width: float, out: np.ndarray | None = None) -> np.ndarray:
    """Return a boolean mask of the pixels within ``half_width`` (+0.5) of lines (theta, rho).

    Lines are ``x cos(theta) + y sin(theta) = rho`` across the whole CCD; each is filled as
    one run of pixels per row (per column for a line closer to the x axis). ``out`` (bool,
    ``shape``) is marked in place and returned when given. The pixels are those of
    :func:`line_pixels`.
    """
    mask = np.zeros(shape, dtype=bool) if out is None else out
    mask.reshape(-1)[line_pixels(shape, theta, rho, half_width=half_width)] = True
    return mask


def line_pixels(shape: tuple[int, int], theta: np.ndarray, rho: np.ndarray, *,
                half_width: float) -> np.ndarray:
    """Return the flat indices of the pixels within ``half_width`` (+0.5) of lines (theta, rho).

    The pixels :func:`line_mask` marks, int64, shape (k,) (a pixel near several lines is
    listed once per line): for a caller that changes only those pixels of a CCD-size image,
    without a full-size mask and full-size passes over it.
    """
    ny, nx = shape
    hw = float(half_width) + 0.5  # a pixel touched by the band counts
    parts = [np.zeros(0, np.int64)]
    for th, r0 in zip(np.atleast_1d(theta), np.atleast_1d(rho)):  # a few lines per CCD
        c, s_ = float(np.cos(th)), float(np.sin(th))
        # runs along the axis the line crosses more steeply
        if abs(c) >= abs(s_):
            n_run, n_len, a, b = ny, nx, c, s_      # rows: x from x c = r0 - y s
        else:
            n_run, n_len, a, b = nx, ny, s_, c      # columns: y from y s = r0 - x c
        u = np.arange(n_run, dtype=float)
        lo = (r0 - u * b - hw) / a
        hi = (r0 - u * b + hw) / a
        v0 = np.clip(np.ceil(np.minimum(lo, hi)), 0, n_len).astype(np.int64)
        v1 = np.clip(np.floor(np.maximum(lo, hi)), -1, n_len - 1).astype(np.int64)
        n = np.maximum(v1 - v0 + 1, 0)
        if n.sum() == 0:
            continue
        run = np.repeat(np.arange(n_run), n)
        pos = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + np.repeat(v0, n)
        parts.append(run * nx + pos if abs(c) >= abs(s_) else pos * nx + run)
    return np.concatenate(parts)
