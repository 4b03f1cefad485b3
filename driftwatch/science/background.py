"""Sky background and noise of one CCD, measured with sep on a coarse mesh.

The background is a smooth function (sep's mesh of ``box`` x ``box`` pixel cells, median
filtered, spline interpolated). Because it is smooth, the mesh statistics can be measured on every
``step``-th pixel in each direction without loss of accuracy for a sky-limited image: pixels are
independent, so the per-pixel noise of the subsample is the per-pixel noise of the image, and
the work drops by ``step**2``. The maps are then evaluated on the subsampled grid; callers that
need full resolution use :meth:`Background.full_back` / :meth:`Background.full_rms` (nearest
sample, adequate for a field that varies on the scale of ``box`` pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

from driftwatch.errors import ScienceError

__all__ = ["Background", "RowScaling", "measure_background", "mask_from_dq", "dq_in",
           "MASK_CODES"]

#: CP data-quality codes treated as unusable for detection and centroiding:
#: 1 bad pixel, 2 no data, 3 saturated, 4 bleed trail, 5 cosmic ray. A cosmic-ray hit is a few
#: pixels of large signal and must not become a "trail"; codes 6 (low weight), 7 (difference
#: detection) and 8 (streak) keep their pixels, which are still measurements.
MASK_CODES: tuple[int, ...] = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Background:
    """Sky level and per-pixel noise of one CCD.

    Attributes
    ----------
    back, rms : ndarray, float32, shape (ceil(ny/step), ceil(nx/step))
        Sky level and per-pixel noise (ADU) at pixels ``[::step, ::step]`` of the CCD; a
        full-resolution pixel takes the sample at or below it.
    step : int
        Subsampling step of the maps (1 = full resolution).
    shape : tuple of int
        (ny, nx) of the full CCD.
    global_back, global_rms : float
        sep's global sky level and per-pixel noise (ADU).
    box : int
        Mesh cell size in full-resolution pixels.
    """

    back: np.ndarray
    rms: np.ndarray
    step: int
    shape: tuple[int, int]
    global_back: float
    global_rms: float
    box: int

    def full_back(self) -> np.ndarray:
        """Return the sky level at full resolution, float32, shape (ny, nx), ADU."""
        return self._full(self.back)

    def full_rms(self) -> np.ndarray:
        """Return the per-pixel noise at full resolution, float32, shape (ny, nx), ADU."""
        return self._full(self.rms)

    def apply(self, data: np.ndarray, which: str, op: str) -> None:
        """Subtract (``op="sub"``) or divide by (``"div"``) the ``back``/``rms`` map in place.

        ``data`` is a C-contiguous float32 array of the CCD shape. Works through a broadcast
        view of the subsampled map, without building the full-resolution map.
        """
        m = self.back if which == "back" else self.rms
        ny, nx = self.shape
        st = self.step
        if st > 1 and ny % st == 0 and nx % st == 0 and data.flags.c_contiguous:
            view = data.reshape(ny // st, st, nx // st, st)
            rhs = m[:, None, :, None]
        else:
            view, rhs = data, self._full(m)
        if op == "sub":
            view -= rhs
        else:
            view /= rhs

    def back_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Return the sky level (ADU) at pixel positions ``x, y`` (any shape, nearest sample)."""
        return self.back[self._iy(y), self._ix(x)]

    def rms_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Return the per-pixel noise (ADU) at pixel positions ``x, y`` (nearest sample)."""
        return self.rms[self._iy(y), self._ix(x)]

    # The sample at or below a position (floor), so full-resolution rows map onto the
    # subsampled maps by plain repetition (see ``rows``).
    def _ix(self, x: np.ndarray) -> np.ndarray:
        i = np.floor(np.asarray(x, dtype=float) / self.step + 1e-9).astype(np.intp)
        return np.clip(i, 0, self.back.shape[1] - 1)

    def _iy(self, y: np.ndarray) -> np.ndarray:
        i = np.floor(np.asarray(y, dtype=float) / self.step + 1e-9).astype(np.intp)
        return np.clip(i, 0, self.back.shape[0] - 1)

    def rows_at_columns(self, which: str, x: np.ndarray) -> np.ndarray:
        """Return the ``back`` or ``rms`` map at every CCD row and columns ``x``, shape (ny, m).

        Rows take the sample at or below them; columns are interpolated linearly. (The
        filter uses :meth:`subtract_divide_rows`, which applies the maps in place by blocks
        of rows; this plain form is its reference.)
        """
        m = self.back if which == "back" else self.rms
        # Linear in x between samples (the box centre of an even-length box is half-integer).
        u = np.clip(np.asarray(x, dtype=float) / self.step, 0.0, m.shape[1] - 1.0)
        i0 = np.floor(u).astype(np.intp)
        i1 = np.minimum(i0 + 1, m.shape[1] - 1)
        f = (u - i0).astype(np.float32)
        cols = m[:, i0] * (np.float32(1.0) - f) + m[:, i1] * f
        return np.repeat(cols, self.step, axis=0)[: self.shape[0]] if self.step > 1 else cols

    def subtract_divide_rows(self, data: np.ndarray, x: np.ndarray, back_scale: np.ndarray,
                             rms_scale: np.ndarray, block: int = 16) -> None:
        """In place: ``data = (data - back * back_scale) / (rms * rms_scale)``.

        ``data`` (ny, m) float32 holds values at every CCD row and the columns ``x``;
        ``back_scale`` and ``rms_scale`` (ny,) are per-row factors. The maps are interpolated
        linearly in x and taken at the first row of each ``block`` of rows (a whole number
        of mesh steps, >= ``block`` rows): they vary on the mesh scale (64 px), so within 16
        rows they change by a few thousandths of their variation, and reading them once per
        block saves interpolating (ny, m) maps. (:meth:`row_scaling` does the same by parts.)
        """
        sc = self.row_scaling(x, back_scale, rms_scale, block)
        sc.apply(data, 0)
        sc.finish(data)

    def row_scaling(self, x: np.ndarray, back_scale: np.ndarray, rms_scale: np.ndarray,
                    block: int = 16) -> "RowScaling":
        """Return :meth:`subtract_divide_rows` split into parts that can follow row blocks."""
        ny = self.shape[0]
        st = self.step
        blk = st * max(1, -(-block // st))
        u = np.clip(np.asarray(x, dtype=float) / st, 0.0, self.back.shape[1] - 1.0)
        i0 = np.floor(u).astype(np.intp)
        i1 = np.minimum(i0 + 1, self.back.shape[1] - 1)
        f = (u - i0).astype(np.float32)
        rows = np.arange(0, ny, blk) // st                                   # (nb,)
        cb = self.back[rows][:, i0] * (np.float32(1.0) - f) + self.back[rows][:, i1] * f
        cr = self.rms[rows][:, i0] * (np.float32(1.0) - f) + self.rms[rows][:, i1] * f
        # the column gathers above leave these in Fortran order: :meth:`RowScaling.apply`
        # reads them a row at a time, ~6x slower with a stride of one row per element
        cb, cr = np.ascontiguousarray(cb), np.ascontiguousarray(cr)
        # the factors are constant but in the few rows near the top and bottom (a truncated
        # filter): the constant is applied by blocks, those rows are then corrected
        ks0, rs0 = np.float32(np.max(back_scale)), np.float32(np.max(rms_scale))
        cb *= ks0
        cr *= rs0
        return RowScaling(blk=blk, cb=cb, cr=cr, ks0=ks0, rs0=rs0,
                          back_scale=np.asarray(back_scale), rms_scale=np.asarray(rms_scale))

    def _full(self, m: np.ndarray) -> np.ndarray:
        ny, nx = self.shape
        if self.step == 1:
            return m
        return np.repeat(np.repeat(m, self.step, axis=0), self.step, axis=1)[:ny, :nx]


@dataclass(frozen=True)
class RowScaling:
    """:meth:`Background.subtract_divide_rows` in parts: :meth:`apply` on any run of rows
    starting at a multiple of ``blk`` (in any order), then :meth:`finish` once.

    Attributes
    ----------
    blk : int
        Rows sharing one sample of the maps.
    cb, cr : ndarray, float32, shape (ceil(ny / blk), m)
        Sky times the constant back factor, noise times the constant rms factor, per block.
    ks0, rs0 : float32
        The constant factors (the largest ``back_scale`` and ``rms_scale``).
    back_scale, rms_scale : ndarray, shape (ny,)
        The per-row factors.
    """

    blk: int
    cb: np.ndarray
    cr: np.ndarray
    ks0: np.float32
    rs0: np.float32
    back_scale: np.ndarray
    rms_scale: np.ndarray

    def apply(self, rows: np.ndarray, r0: int) -> None:
        """In place on ``rows`` (k, m), CCD rows ``r0 .. r0 + k``: subtract, divide."""
        blk = self.blk
        if r0 % blk:
            raise ValueError(f"row {r0} does not start a block of {blk} rows")
        k0, nfull = r0 // blk, rows.shape[0] // blk
        view = rows[:nfull * blk].reshape(nfull, blk, rows.shape[1])
        view -= self.cb[k0:k0 + nfull, None, :]
        view /= self.cr[k0:k0 + nfull, None, :]
        if nfull * blk < rows.shape[0]:     # the CCD's last, partial block
            rows[nfull * blk:] -= self.cb[k0 + nfull][None, :]
            rows[nfull * blk:] /= self.cr[k0 + nfull][None, :]

    def odd_rows(self) -> np.ndarray:
        """Return the rows whose factors differ from the constant ones (those :meth:`finish`
        rewrites), int, shape (k,)."""
        return np.flatnonzero((self.back_scale != self.ks0) | (self.rms_scale != self.rs0))

    def finish(self, data: np.ndarray) -> None:
        """Correct the rows whose factors differ from the constant ones, ``data`` (ny, m)."""
        ks0, rs0, blk = self.ks0, self.rs0, self.blk
        bs, rsc = self.back_scale, self.rms_scale
        odd = self.odd_rows()
        if odd.size:
            b = self.cb[np.minimum(odd // blk, self.cb.shape[0] - 1)] / ks0
            r = self.cr[np.minimum(odd // blk, self.cr.shape[0] - 1)] / rs0
            # from (d - k0 b) / (r0 r) to (d - k b) / (r_s r) for those rows
            orig = data[odd] * (rs0 * r) + ks0 * b
            data[odd] = (orig - bs[odd, None] * b) / (rsc[odd, None] * r)


def dq_in(dq: np.ndarray, codes: tuple[int, ...]) -> np.ndarray:
    """Return where the DQ codes ``dq`` (uint8, any shape) are one of ``codes``, bool.

    A run of consecutive codes is one unsigned comparison (``dq - lo`` wraps below ``lo``),
    several times faster than a look-up table indexed by 8 M codes; other sets OR equalities.
    """
    dq = np.asarray(dq)
    if dq.dtype != np.uint8:
        dq = dq.astype(np.uint8)
    cs = sorted({int(c) for c in codes if 0 <= int(c) <= 255})
    if not cs:
        return np.zeros(dq.shape, dtype=bool)
    lo, hi = cs[0], cs[-1]
    if cs == list(range(lo, hi + 1)):
        if lo == 0:
            return dq <= np.uint8(hi)
        # the comparison written over the difference (bool and uint8 are both one byte):
        # one 8 MB temporary for a full CCD instead of two
        t = np.subtract(dq, np.uint8(lo))
        return np.less_equal(t, np.uint8(hi - lo), out=t.view(bool))
    out = dq == np.uint8(cs[0])
    for c in cs[1:]:
        out |= dq == np.uint8(c)
    return out


def mask_from_dq(dq: np.ndarray | None, image: np.ndarray, saturate: float | None,
                 codes: tuple[int, ...] = MASK_CODES, *,
                 saturated: np.ndarray | None = None) -> np.ndarray:
    """Return the boolean mask of pixels unusable for detection.

    Parameters
    ----------
    dq : ndarray of int, shape (ny, nx), or None
        CP data-quality codes (0 good). None: no mask available (only NaN/saturation masked).
    image : ndarray, shape (ny, nx)
        The CCD in ADU; non-finite pixels are masked.
    saturate : float or None
        Saturation level in ADU; pixels at or above it are masked.
    codes : tuple of int
        The DQ codes that mask a pixel.
    saturated : ndarray of bool, shape (ny, nx), optional
        Filled with ``image >= saturate`` (all False when ``saturate`` is None): taken from
        the saturation comparison made for the mask when the image has no NaN, instead of a
        second whole-image comparison.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        True where the pixel must get zero weight.
    """
    if dq is not None and dq.shape != image.shape:
        raise ScienceError(f"DQ mask shape {dq.shape} differs from image shape {image.shape}")
    img = np.asarray(image)
    if dq is not None:
        mask = dq_in(dq, codes)
    else:
        mask = np.zeros(img.shape, dtype=bool)
    if saturate is not None and np.isfinite(saturate):
        # one comparison masks NaN, +inf and the saturated pixels alike (NaN < s is False);
        # only -inf escapes it, and a min() (no temporary) tells whether any is there
        below = np.less(img, saturate)
        lo = img.min() if img.size else 0.0
        if saturated is not None and not np.isnan(lo):
            # without NaN (a NaN minimum says whether there is one), not below is at or above
            # saturation: the masked pixels are those too
            np.logical_not(below, out=saturated)
            mask |= saturated
        else:
            if saturated is not None:
                np.greater_equal(img, saturate, out=saturated)
            mask |= np.logical_not(below, out=below)
        if np.isnan(lo) or np.isneginf(lo):
            mask |= ~np.isfinite(img)
    else:
        if saturated is not None:
            if saturate is None:
                saturated[...] = False
            else:
                np.greater_equal(img, saturate, out=saturated)
        mask |= ~np.isfinite(img)
    return mask


def measure_background(image: np.ndarray, mask: np.ndarray | None = None, *, box: int = 64,
                       filter_size: int = 3, step: int = 2) -> Background:
    """Measure the sky level and noise of a CCD.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        CCD pixels in ADU, sky included (any float dtype or byte order).
    mask : ndarray of bool, shape (ny, nx), optional
        True for pixels to ignore (masked pixels, NaN).
    box : int
        Mesh cell size in pixels of the full-resolution image.
    filter_size : int
        Median filter size over mesh cells (suppresses cells dominated by a bright star).
    step : int
        Measure on every ``step``-th pixel in both axes (1 = all pixels).

    Returns
    -------
    Background

    Raises
    ------
    ScienceError
        The image has no usable pixel (all NaN or all masked) or is not 2-D.
    """
    if image.ndim != 2:
        raise ScienceError(f"expected a 2-D image, got shape {image.shape}")
    step = max(1, int(step))
    sub = image[::step, ::step]
    # sep wants native byte order and C-contiguous float32/64 (FITS data are big-endian).
    sub = np.ascontiguousarray(sub, dtype=np.float32)
    bad = ~np.isfinite(sub)
    if mask is not None:
        bad |= np.ascontiguousarray(mask[::step, ::step], dtype=bool)
    n_good = int(bad.size - np.count_nonzero(bad))
    if n_good < 0.01 * bad.size or n_good < 100:
        raise ScienceError(f"no usable pixels for the background ({n_good} of {bad.size} sampled)")
    if bad.any():
        if np.may_share_memory(sub, image):   # step 1 on a float32 image: the caller's pixels
            sub = sub.copy()
        sub[bad] = np.float32(0)
    # a constant image has no sky noise: two different good values in a coarse sample
    # (any real CCD) prove it is not, without the two whole-map masked reductions (~2 ms)
    coarse = sub[::31, ::29][~bad[::31, ::29]]
    if not (coarse.size and coarse.min() != coarse.max()):
        good = ~bad
        hi = float(np.max(sub, where=good, initial=-np.inf))
        lo = float(np.min(sub, where=good, initial=np.inf))
        if hi == lo:
            raise ScienceError(f"the image is constant ({lo} ADU): no sky noise")
    cell = max(4, int(round(box / step)))
    try:
        bkg = sep.Background(sub, mask=bad, bw=cell, bh=cell, fw=filter_size, fh=filter_size)
        back = bkg.back(dtype=np.float32)
        rms = bkg.rms(dtype=np.float32)
    except Exception as exc:  # sep raises plain Exceptions with C error texts
        raise ScienceError(f"background estimation failed: {exc}") from exc
    gback, grms = float(bkg.globalback), float(bkg.globalrms)
    if not (np.isfinite(gback) and np.isfinite(grms)) or grms <= 0:
        raise ScienceError(f"background has no noise (global rms {grms}): constant or empty image")
    # Cells with no good pixel get sep's global values; guard rms against zeros.
    rms[~(rms > 0)] = np.float32(grms)   # (in place: rms is sep's new float32 map)
    return Background(back=back, rms=rms, step=step, shape=(int(image.shape[0]),
                      int(image.shape[1])), global_back=gback, global_rms=grms, box=int(box))
