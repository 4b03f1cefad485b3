"""Render one simulated CCD: drifted Moffat trails, events, sky, noise, saturation, defects.

Pure: a :class:`~driftwatch.simulate.scene.CcdScene` in, a :class:`CcdRender` (image, DQ mask,
truth tables) out; no files.

How a trail is drawn (vectorised over all stars of a CCD):

1. The PSF centre's path comes from :func:`driftwatch.science.geometry.drift_positions` on the
   TRUE WCS at a few times, interpolated to sub-steps of <= 0.25 px along the trail.
2. Each sub-step carries the flux of its time slice: star rate x dt x transparency(t) x
   scintillation(t) x magnification(t) (microlensing).
3. The sub-steps of every star are deposited (linear weights) on a fine grid of the star's stamp:
   1/4 px along x, 1/8 px in y offset, and two seeing "bases" (the FWHM at each sub-step is a
   linear mix of two Moffat widths bracketing the range of the exposure; for a few-percent
   seeing change the mixing error is < 1e-3 of the profile).
4. The fine grid is convolved along x with pixel-integrated Moffat kernels (one table per CCD,
   batched FFT over stars, a sum over y offsets and seeing bases), then sampled at pixel
   centres. Kernels are normalised over the stamp, so a stamp holds exactly the trail's flux.
5. Stamps of equal size are added to the image with one ``bincount``. Stars are batched by
   stamp radius (3 FWHM for most; up to 16 FWHM for bright stars, so that the truncated wing
   stays below 0.2 sigma of the sky noise).

Noise: electrons = ADU x gain; Poisson noise is drawn as its normal approximation where the
expected count exceeds 50 e- (exact Poisson below), plus Gaussian read noise, once per CCD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.fft as sfft

from driftwatch.io.decam import CP_DQ
from driftwatch.science.geometry import drift_geometry, drift_positions
from driftwatch.simulate.scene import CcdScene, RenderOptions, Streak, paczynski_magnification

__all__ = ["CcdRender", "moffat_alpha", "render_ccd", "SUBSTEP_PX"]

SUBSTEP_PX = 0.25     # sub-step along the trail, pixels
_FINE_X = 4           # fine grid: 1/4 px along x
_FINE_Y = 0.125       # fine grid: y offsets every 1/8 px
_R_FACTORS = (3.0, 4.5, 7.0, 11.0, 16.0)  # stamp radii in FWHM
_R_MAX = 80
_PIXEL_CM2 = 0.0015 ** 2  # 15 um pixels


@dataclass(frozen=True)
class CcdRender:
    """The rendered CCD and its truth.

    ``image`` float32 (ny, nx) ADU with the sky kept (noiseless with ``noise=False``); ``dq``
    uint8 CP codes; ``trails``, ``events`` and ``atmosphere`` DataFrames with the columns
    documented in TRUTH.md; ``sky_adu`` the mean sky and ``sky_sigma_adu`` its noise.
    """

    image: np.ndarray
    dq: np.ndarray
    trails: pd.DataFrame
    events: pd.DataFrame
    atmosphere: pd.DataFrame
    sky_adu: float
    sky_sigma_adu: float


def moffat_alpha(fwhm: float | np.ndarray, beta: float) -> float | np.ndarray:
    """Moffat core width alpha (px) for a FWHM (px)."""
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _moffat(dx: np.ndarray, dy: np.ndarray, fwhm: float, beta: float) -> np.ndarray:
    alpha = moffat_alpha(fwhm, beta)
    r2 = (dx * dx + dy * dy) * np.float32(1.0 / (alpha * alpha))
    r2 += np.float32(1.0)
    if beta == 3.0:  # the default: a cube is much cheaper than a power
        prof = 1.0 / (r2 * r2 * r2)
    else:
        prof = r2 ** np.float32(-beta)
    return prof * np.float32((beta - 1.0) / (math.pi * alpha * alpha))


_CORE_PX = 14  # pixel-integrate (3 x 3 sub-samples) within this distance; point-sample beyond


def _kernel_table(deltas: np.ndarray, fwhms: list[float], beta: float, radius: int,
                  nfft: int) -> np.ndarray:
    """Pixel-integrated Moffat kernels on the fine x grid, wrapped for a circular FFT.

    Returns float32 array (J * B, H, nfft): for y offset delta_j and seeing basis b, row r and
    fine offset v, the PSF integral over the pixel centred at (v / 4, r - R - delta_j) from the
    PSF centre; each (j, b) table sums to 1 over rows and one fine phase. Within _CORE_PX of
    the centre the pixel integral is a 3 x 3 sub-sample mean; beyond, where the profile is
    smooth on the pixel scale (relative curvature term < 1%), the pixel-centre value.
    """
    m = _FINE_X
    h = 2 * radius + 1
    v = np.arange(-m * radius, m * radius + 1)
    rows = (np.arange(h) - radius).astype(np.float32)
    dxs = (v / m).astype(np.float32)
    offs = ((np.arange(3) + 0.5) / 3 - 0.5).astype(np.float32)
    core_r = min(radius, _CORE_PX)
    rsel = slice(radius - core_r, radius + core_r + 1)
    vsel = slice(m * (radius - core_r), m * (radius + core_r) + 1)
    out = np.zeros((len(deltas) * len(fwhms), h, nfft), np.float32)
    for j, delta in enumerate(deltas):
        dy = rows - np.float32(delta)
        for b, fwhm in enumerate(fwhms):
            k = _moffat(dxs[None, :], dy[:, None], fwhm, beta)
            sub = _moffat(dxs[None, vsel, None, None] + offs[None, None, None, :],
                          dy[rsel, None, None, None] + offs[None, None, :, None], fwhm, beta)
            k[rsel, vsel] = sub.mean(axis=(2, 3))
            k /= k.sum() / m
            out[j * len(fwhms) + b][:, v % nfft] = k
    return out


def _good_fft(n: int) -> int:
    return sfft.next_fast_len(n, real=True)


class _Canvas:
    """Collects (flat pixel index, flux) contributions; one ``bincount`` makes the image."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idx: list[np.ndarray] = []
        self.w: list[np.ndarray] = []

    def add(self, idx: np.ndarray, w: np.ndarray) -> None:
        self.idx.append(idx)
        self.w.append(w)

    def image(self) -> np.ndarray:
        if not self.idx:
            return np.zeros(self.size, np.float32)
        return np.bincount(np.concatenate(self.idx), weights=np.concatenate(self.w),
                           minlength=self.size).astype(np.float32)


def _render_batch(acc: _Canvas, shape: tuple[int, int], xs: np.ndarray, ys: np.ndarray,
                  w: np.ndarray, mix: np.ndarray | None, fwhms: list[float], beta: float,
                  radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Add trails of n stars (sub-step positions/fluxes (n, K)) into ``acc`` (flat, ny*nx).

    ``mix`` (K,) is the weight of seeing basis 1 at each sub-step (None: one basis).
    Returns (on-CCD flux, peak pixel) per star.
    """
    ny, nx = shape
    n, k = xs.shape
    m = _FINE_X
    nb = len(fwhms)
    y_ref = np.rint(ys.mean(axis=1)).astype(np.int64)
    delta = ys - y_ref[:, None]
    dmin = math.floor(delta.min() / _FINE_Y) * _FINE_Y
    dmax = math.ceil(delta.max() / _FINE_Y) * _FINE_Y
    nj = int(round((dmax - dmin) / _FINE_Y)) + 2
    deltas = dmin + _FINE_Y * np.arange(nj)
    x_start = np.floor(xs.min(axis=1)).astype(np.int64) - radius
    span = int(np.max(np.ceil(xs.max(axis=1)) - np.floor(xs.min(axis=1))))
    width = span + 2 * radius + 2
    nfft = _good_fft(m * width)
    h = 2 * radius + 1

    # deposit sub-steps on the (star, y offset, basis, fine x) grid with linear weights
    u = (xs - x_start[:, None]) * m
    ui = np.floor(u).astype(np.int64)
    fu = (u - ui).astype(np.float32)
    jv = (delta - dmin) / _FINE_Y
    ji = np.clip(np.floor(jv).astype(np.int64), 0, nj - 2)
    fj = (jv - ji).astype(np.float32)
    star = np.arange(n, dtype=np.int64)[:, None]
    idx_parts, wt_parts = [], []
    basis_w = [np.ones(k, np.float32)] if nb == 1 else [1.0 - mix, mix]
    for dj, wj in ((0, 1.0 - fj), (1, fj)):
        for b in range(nb):
            for du, wu in ((0, 1.0 - fu), (1, fu)):
                q = (ji + dj) * nb + b
                idx_parts.append(((star * (nj * nb) + q) * nfft + ui + du).ravel())
                wt_parts.append((w * wj * wu * basis_w[b][None, :]).ravel())
    g = np.bincount(np.concatenate(idx_parts), weights=np.concatenate(wt_parts),
                    minlength=n * nj * nb * nfft).astype(np.float32).reshape(n, nj * nb, nfft)

    kern = _kernel_table(deltas, fwhms, beta, radius, nfft)           # (Q, H, N)
    gf = sfft.rfft(g, axis=-1)                                        # (n, Q, F)
    kf = sfft.rfft(kern, axis=-1)                                     # (Q, H, F)
    prod = np.matmul(gf.transpose(2, 0, 1), kf.transpose(2, 0, 1))    # (F, n, H)
    stamps = sfft.irfft(prod.transpose(1, 2, 0), n=nfft, axis=-1)[..., : m * width : m]
    stamps = stamps[:, :, :width]                                     # (n, H, W)

    rows = y_ref[:, None, None] - radius + np.arange(h)[None, :, None]
    cols = x_start[:, None, None] + np.arange(width)[None, None, :]
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    flat = (rows * nx + cols)[inside]
    acc.add(flat, stamps[inside])
    kept = np.where(inside, stamps, 0.0)
    on_ccd = kept.sum(axis=(1, 2))
    peak = kept.max(axis=(1, 2))
    return on_ccd, peak


def _radius_class(peak_est: np.ndarray, fwhm: float, beta: float, drifting: bool,
                  noise_floor: float) -> np.ndarray:
    """Smallest stamp radius (px) at which the profile's edge is < 0.2 sigma of the sky."""
    alpha = moffat_alpha(fwhm, beta)
    expo = (0.5 - beta) if drifting else -beta
    radii = np.array([min(_R_MAX, math.ceil(f * fwhm)) for f in _R_FACTORS])
    edge = np.array([(1.0 + (r / alpha) ** 2) ** expo for r in radii])
    ok = peak_est[:, None] * edge[None, :] < 0.2 * noise_floor
    choice = np.where(ok.any(axis=1), ok.argmax(axis=1), len(radii) - 1)
    return radii[choice]


def _streak_image(acc: _Canvas, shape: tuple[int, int], s: Streak, fwhm: float, beta: float) -> None:
    """Add a straight line of ``s.adu_per_px`` per pixel length, Moffat line-spread profile."""
    ny, nx = shape
    alpha = moffat_alpha(fwhm, beta)
    rad = int(math.ceil(5 * fwhm))
    dx, dy = s.x1 - s.x0, s.y1 - s.y0
    length = math.hypot(dx, dy)
    if length == 0:
        return
    offs = np.arange(-rad, rad + 1)
    if abs(dx) >= abs(dy):  # one column at a time, profile across rows
        major = np.arange(max(0, math.ceil(min(s.x0, s.x1))), min(nx, math.floor(max(s.x0, s.x1)) + 1))
        centre = s.y0 + (major - s.x0) * dy / dx
        cos = abs(dx) / length
        minor = np.rint(centre).astype(int)[:, None] + offs[None, :]
        d = (minor - centre[:, None]) * cos
        per_step = s.adu_per_px / cos
    else:
        major = np.arange(max(0, math.ceil(min(s.y0, s.y1))), min(ny, math.floor(max(s.y0, s.y1)) + 1))
        centre = s.x0 + (major - s.y0) * dx / dy
        cos = abs(dy) / length
        minor = np.rint(centre).astype(int)[:, None] + offs[None, :]
        d = (minor - centre[:, None]) * cos
        per_step = s.adu_per_px / cos
    prof = (1.0 + (d / alpha) ** 2) ** (0.5 - beta)
    prof = prof / prof.sum(axis=1, keepdims=True) * per_step
    majors = np.broadcast_to(major[:, None], minor.shape)
    if abs(dx) >= abs(dy):
        rows, cols = minor, majors
    else:
        rows, cols = majors, minor
    ok = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    acc.add((rows * nx + cols)[ok], prof[ok])


def _bleed(img: np.ndarray, sat: float, dq: np.ndarray) -> None:
    """Clip pixels above ``sat`` and move their excess charge along the column (both ways)."""
    over = img > sat
    if not over.any():
        return
    ny = img.shape[0]
    for c in np.unique(np.nonzero(over)[1]):
        col = img[:, c]
        hit = np.nonzero(col > sat)[0]
        excess = float((col[hit] - sat).sum())
        col[hit] = sat
        dq[hit, c] = CP_DQ["saturated"]
        lo, hi = int(hit.min()), int(hit.max())
        for seg, share in ((np.arange(hi + 1, ny), 0.5), (np.arange(lo - 1, -1, -1), 0.5)):
            if seg.size == 0:
                continue
            room = np.maximum(sat - col[seg], 0.0)
            filled = np.cumsum(room)
            want = excess * share
            full = filled <= want
            nfull = int(full.sum())
            col[seg[:nfull]] = sat
            dq[seg[:nfull], c] = np.where(dq[seg[:nfull], c] == 0, CP_DQ["bleed"], dq[seg[:nfull], c])
            if nfull < seg.size:
                rest = want - (filled[nfull - 1] if nfull else 0.0)
                col[seg[nfull]] += rest
                if rest > 0.5 * room[nfull]:
                    dq[seg[nfull], c] = CP_DQ["bleed"]


def _cosmics(rng: np.random.Generator, scene: CcdScene, img: np.ndarray, dq: np.ndarray,
             flag: bool) -> list[dict]:
    """Add sharp cosmic-ray tracks (1-12 px, 1 px wide); most are flagged DQ 5."""
    ny, nx = img.shape
    area = ny * nx * _PIXEL_CM2
    n = rng.poisson(scene.cosmic_rate_cm2_s * area * (scene.exptime + 20.0))  # + readout
    rows = []
    for _ in range(n):
        x, y = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        length = rng.choice([1, 1, 2, 3, 5, 8, 12])
        ang = rng.uniform(0, np.pi)
        t = np.linspace(0, length, max(2, int(length * 2)))
        px = np.clip(np.rint(x + t * np.cos(ang)).astype(int), 0, nx - 1)
        py = np.clip(np.rint(y + t * np.sin(ang)).astype(int), 0, ny - 1)
        pix = np.unique(py * nx + px)
        energy_e = rng.uniform(800, 8000) * max(1, length) ** 0.5
        dep = energy_e / scene.gain / pix.size * rng.uniform(0.6, 1.4, pix.size)
        img.ravel()[pix] += dep.astype(np.float32)
        flagged = bool(flag and rng.uniform() < scene.cosmic_flag_fraction)
        if flagged:
            sub = dq.ravel()
            sub[pix] = np.where(sub[pix] == 0, CP_DQ["cosmic"], sub[pix])
        rows.append({"kind": "cosmic", "x": float(px.mean()), "y": float(py.mean()),
                     "amplitude": float(dep.sum()), "npix": int(pix.size), "dq_flagged": flagged})
    return rows


def _bad_columns(rng: np.random.Generator, scene: CcdScene, img: np.ndarray,
                 dq: np.ndarray) -> list[int]:
    """Mark a few (partial) bad columns DQ 1 and give them wrong values (hot or dead)."""
    ny, nx = img.shape
    cols = rng.choice(nx, size=min(scene.n_bad_columns, nx), replace=False)
    for c in cols:
        start = int(rng.integers(0, ny // 2)) if rng.uniform() < 0.5 else 0
        seg = slice(start, ny)
        if rng.uniform() < 0.5:
            img[seg, c] = scene.sky_adu * rng.uniform(0.0, 0.2) + 0.0 * img[seg, c]
        else:
            img[seg, c] += rng.uniform(100, 3000)
        dq[seg, c] = CP_DQ["bad"]
    return [int(c) for c in cols]


def render_ccd(scene: CcdScene, options: RenderOptions = RenderOptions()) -> CcdRender:
    """Render one CCD of one exposure.

    Parameters
    ----------
    scene : CcdScene
        Stars, events, atmosphere, detector and the TRUE WCS at shutter open.
    options : RenderOptions
        Switches (noise, cosmics, bad columns, saturation, events, streaks, atmosphere, ...).

    Returns
    -------
    CcdRender
        ``image`` float32 (ny, nx) ADU, native byte order, sky kept; ``dq`` uint8 CP codes;
        truth tables ``trails``, ``events``, ``atmosphere``.
    """
    rng = np.random.default_rng(scene.seed)
    ny, nx = scene.shape
    exptime = scene.exptime
    beta = scene.moffat_beta
    rate = scene.drift_rate_arcsec_s
    n = len(scene.star_id)

    # --- time sampling and atmosphere
    if scene.drifting:
        geom = drift_geometry(scene.wcs, rate, exptime)
        nk = max(2, math.ceil(geom.length_px / SUBSTEP_PX))
    else:
        nk = 1
    t_k = (np.arange(nk) + 0.5) * exptime / nk
    dt = exptime / nk
    if options.atmosphere and scene.atmosphere is not None:
        atm = scene.atmosphere
        trans_k = np.interp(t_k, atm.t_s, atm.transparency)
        fwhm_k = np.interp(t_k, atm.t_s, atm.fwhm_px)
        if not scene.drifting:  # a pointed exposure integrates the whole series
            trans_k = np.array([np.mean(atm.transparency)])
            fwhm_k = np.array([np.mean(atm.fwhm_px)])
        atm_df = pd.DataFrame({"t_s": atm.t_s, "transparency": atm.transparency,
                               "fwhm_px": atm.fwhm_px})
    else:
        trans_k = np.ones(nk)
        fwhm_k = np.full(nk, scene.fwhm_px)
        atm_df = pd.DataFrame({"t_s": [0.0, exptime], "transparency": [1.0, 1.0],
                               "fwhm_px": [scene.fwhm_px] * 2})
    f_lo, f_hi = float(fwhm_k.min()), float(fwhm_k.max())
    if f_hi - f_lo > 1e-3 * f_lo:
        fwhms = [f_lo, f_hi]
        mix = ((fwhm_k - f_lo) / (f_hi - f_lo)).astype(np.float32)
    else:
        fwhms, mix = [float(fwhm_k.mean())], None

    sky = scene.sky_adu if options.sky else 0.0
    sky_sigma = math.sqrt(max(scene.sky_adu, 0.0) * scene.gain + scene.read_noise_e ** 2) / scene.gain

    acc = _Canvas(ny * nx)
    trails = _empty_trails()
    if n:
        # --- sub-step positions: WCS at a few times, linear in between
        nw = 9 if scene.drifting else 1
        tw = np.linspace(0.0, exptime, nw) if scene.drifting else np.array([0.0])
        xw, yw = drift_positions(scene.wcs, scene.ra[:, None], scene.dec[:, None],
                                 tw[None, :], rate)
        if scene.drifting:
            pos = t_k / exptime * (nw - 1)
            i0 = np.minimum(np.floor(pos).astype(int), nw - 2)
            f = pos - i0
            xs = xw[:, i0] * (1 - f) + xw[:, i0 + 1] * f
            ys = yw[:, i0] * (1 - f) + yw[:, i0 + 1] * f
        else:
            xs, ys = xw.copy(), yw.copy()

        # --- flux of every sub-step
        w = scene.flux_adu_s[:, None] * dt * trans_k[None, :]
        if options.scintillation and scene.scintillation_rms > 0:
            if scene.drifting:
                nc = max(2, int(exptime / 0.25) + 1)
                coarse = rng.normal(0.0, scene.scintillation_rms, (n, nc))
                pos = t_k / exptime * (nc - 1)
                i0 = np.minimum(np.floor(pos).astype(int), nc - 2)
                f = pos - i0
                w = w * (1.0 + coarse[:, i0] * (1 - f) + coarse[:, i0 + 1] * f)
            else:
                w = w * (1.0 + rng.normal(0.0, scene.scintillation_rms / math.sqrt(exptime / 0.25), (n, 1)))
        if options.events and scene.brightenings:
            where = {int(s): i for i, s in enumerate(scene.star_id)}
            for ev in scene.brightenings:
                if ev.star_id in where:
                    i = where[ev.star_id]
                    if scene.drifting:
                        w[i] *= paczynski_magnification(t_k, ev.t_peak_s, ev.amplitude, ev.duration_s)
                    else:  # a pointed exposure sees the mean magnification
                        tt = np.linspace(0, exptime, 2001)
                        w[i] *= paczynski_magnification(tt, ev.t_peak_s, ev.amplitude, ev.duration_s).mean()
        total = w.sum(axis=1)

        # --- batch by stamp radius
        length = float(np.max(np.hypot(xs[:, -1] - xs[:, 0], ys[:, -1] - ys[:, 0]))) if scene.drifting else 0.0
        fwhm0 = float(np.mean(fwhms))
        alpha = moffat_alpha(fwhm0, beta)
        if scene.drifting:
            peak_est = total / max(length, 1.0) * 0.75 / alpha
        else:
            peak_est = total * (beta - 1) / (math.pi * alpha * alpha)
        radii = _radius_class(peak_est, max(fwhms), beta, scene.drifting, sky_sigma)
        on_ccd = np.zeros(n)
        peak = np.zeros(n)
        for r in np.unique(radii):
            sel = np.nonzero(radii == r)[0]
            for chunk in np.array_split(sel, max(1, math.ceil(sel.size / 1500))):
                o, p = _render_batch(acc, (ny, nx), xs[chunk], ys[chunk], w[chunk].astype(np.float32),
                                     mix, fwhms, beta, int(r))
                on_ccd[chunk], peak[chunk] = o, p
        trails = pd.DataFrame({
            "star_id": scene.star_id.astype(np.int64),
            "x0": xw[:, 0], "y0": yw[:, 0], "x1": xw[:, -1], "y1": yw[:, -1],
            "flux_adu": total, "peak_adu": peak,
            "on_ccd": np.where(total > 0, on_ccd / np.where(total > 0, total, 1), 0.0),
        })

    events: list[dict] = []
    if options.events:
        for ev in scene.brightenings:
            row = trails.loc[trails.star_id == ev.star_id]
            if row.empty:
                continue
            i = int(np.nonzero(scene.star_id == ev.star_id)[0][0])
            x, y = drift_positions(scene.wcs, scene.ra[i:i + 1], scene.dec[i:i + 1], ev.t_peak_s, rate)
            events.append({"kind": "brightening", "star_id": ev.star_id, "ra": float(scene.ra[i]),
                           "dec": float(scene.dec[i]), "x": float(x[0]), "y": float(y[0]),
                           "t_peak_s": ev.t_peak_s, "duration_s": ev.duration_s,
                           "amplitude": ev.amplitude})
        if scene.flashes:
            fx = np.array([[f.x] for f in scene.flashes])
            fy = np.array([[f.y] for f in scene.flashes])
            fw = np.array([[f.flux_adu] for f in scene.flashes], np.float32)
            fl_fwhm = float(np.interp(np.mean([f.t_peak_s for f in scene.flashes]),
                                      atm_df.t_s, atm_df.fwhm_px))
            alpha = moffat_alpha(fl_fwhm, beta)
            radii = _radius_class(fw[:, 0] * (beta - 1) / (math.pi * alpha ** 2), fl_fwhm, beta,
                                  False, sky_sigma)
            _render_batch(acc, (ny, nx), fx, fy, fw, None, [fl_fwhm], beta, int(radii.max()))
            for f in scene.flashes:
                ra, dec = scene.wcs.all_pix2world([f.x], [f.y], 0)
                events.append({"kind": "flash", "star_id": -1, "ra": float(ra[0]),
                               "dec": float(dec[0]) - rate * f.t_peak_s / 3600.0,
                               "x": f.x, "y": f.y, "t_peak_s": f.t_peak_s,
                               "duration_s": f.duration_s, "amplitude": f.flux_adu})
    if options.streaks:
        for s in scene.streaks:
            _streak_image(acc, (ny, nx), s, float(np.mean(fwhms)), beta)
            xm, ym = (s.x0 + s.x1) / 2, (s.y0 + s.y1) / 2
            ra, dec = scene.wcs.all_pix2world([xm], [ym], 0)
            events.append({"kind": "streak", "star_id": -1, "ra": float(ra[0]), "dec": float(dec[0]),
                           "x": xm, "y": ym, "t_peak_s": s.t_peak_s, "duration_s": s.duration_s,
                           "amplitude": s.adu_per_px, "x_start": s.x0, "y_start": s.y0,
                           "x_end": s.x1, "y_end": s.y1})

    img = acc.image().reshape(ny, nx)
    if sky:
        grad = 1.0 + scene.sky_gradient * (np.arange(ny) / max(ny - 1, 1) - 0.5)
        img += (sky * grad[:, None]).astype(np.float32)
    dq = np.zeros((ny, nx), np.uint8)
    sat = scene.saturate_adu
    if options.saturation:
        _bleed(img, sat, dq)
    if options.noise:
        gain = np.float32(scene.gain)
        expected_e = np.maximum(img, np.float32(0.0)) * gain
        z = rng.standard_normal((ny, nx), dtype=np.float32)
        sigma = np.sqrt(expected_e + np.float32(scene.read_noise_e ** 2))
        sigma *= z
        sigma /= gain
        low = expected_e < 50.0
        img = img + sigma
        if low.any():
            pois = rng.poisson(expected_e[low]) + rng.normal(0, scene.read_noise_e, int(low.sum()))
            img[low] = (pois / scene.gain).astype(np.float32)
    image = img.astype(np.float32)
    if options.saturation:
        image[dq == CP_DQ["saturated"]] = sat
        image[dq == CP_DQ["bleed"]] = np.minimum(image[dq == CP_DQ["bleed"]], sat)
    if options.cosmics and scene.cosmic_rate_cm2_s > 0:
        for row in _cosmics(rng, scene, image, dq, True):
            row.update(star_id=-1, ra=np.nan, dec=np.nan, t_peak_s=np.nan, duration_s=np.nan)
            events.append(row)
    if options.saturation:
        over = image > sat
        dq[over & (dq == 0)] = CP_DQ["saturated"]
        np.minimum(image, np.float32(sat), out=image)
    if options.bad_columns and scene.n_bad_columns > 0:
        _bad_columns(rng, scene, image, dq)
    if trails.size:
        trails["saturated"] = trails.peak_adu + sky >= sat
    return CcdRender(image=np.ascontiguousarray(image), dq=dq, trails=trails,
                     events=pd.DataFrame(events), atmosphere=atm_df, sky_adu=float(sky),
                     sky_sigma_adu=sky_sigma)


def _empty_trails() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
        ("star_id", "int64"), ("x0", "float64"), ("y0", "float64"), ("x1", "float64"),
        ("y1", "float64"), ("flux_adu", "float64"), ("peak_adu", "float64"),
        ("on_ccd", "float64"), ("saturated", "bool"))})
