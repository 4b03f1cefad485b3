"""Random ingredients of a simulated night: stars, detector constants, atmosphere, events.

Every function takes a numpy Generator, so a seed fixes everything. :func:`quick_scene` builds a
complete :class:`~driftwatch.simulate.scene.CcdScene` in one call for tests and benchmarks.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from scipy.ndimage import gaussian_filter1d

from driftwatch.io.decam import CCDNUM
from driftwatch.science.geometry import drift_positions
from driftwatch.simulate.focalplane import ccd_wcs
from driftwatch.simulate.scene import Atmosphere, Brightening, CcdScene, Flash, Streak

__all__ = [
    "BANDS", "Detector", "StarCatalogue", "detector_for", "make_atmosphere", "quick_scene",
    "random_events", "random_stars",
]


@dataclass(frozen=True)
class BandModel:
    """Photometric model of a band: zero point (mag giving 1 ADU/s), sky rate, FILTER string."""

    name: str
    magzpt: float
    sky_adu_s: float
    filter_string: str


BANDS: dict[str, BandModel] = {
    "g": BandModel("g", 25.05, 2.4, "g DECam SDSS c0001 4720.0 1520.0"),
    "r": BandModel("r", 25.30, 4.6, "r DECam SDSS c0002 6415.0 1480.0"),
    "VR": BandModel("VR", 26.03, 6.0, "VR DECam c0007 6300.0 2600.0"),
}
#: VR = r + VR_COLOUR * (g - r): VR is a broad filter spanning r and the red half of g.
VR_COLOUR = 0.15


@dataclass(frozen=True)
class StarCatalogue:
    """True stars of the field: ids, sky positions (deg) and magnitudes, arrays of shape (n,)."""

    star_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    g: np.ndarray
    r: np.ndarray
    vr: np.ndarray

    def mag(self, band: str) -> np.ndarray:
        return {"g": self.g, "r": self.r, "VR": self.vr}[band]

    def flux_adu_s(self, band: str) -> np.ndarray:
        return 10.0 ** (-0.4 * (self.mag(band) - BANDS[band].magzpt))

    def __len__(self) -> int:
        return len(self.star_id)

    def select(self, idx: np.ndarray) -> "StarCatalogue":
        return StarCatalogue(*(a[idx] for a in (self.star_id, self.ra, self.dec, self.g, self.r, self.vr)))

    @staticmethod
    def concat(parts: list["StarCatalogue"]) -> "StarCatalogue":
        return StarCatalogue(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                               ("star_id", "ra", "dec", "g", "r", "vr")))


@dataclass(frozen=True)
class Detector:
    """Electronics of one CCD: per-amplifier gain (e-/ADU), read noise (e-), saturation (ADU)."""

    gain_a: float
    gain_b: float
    rdnoise_a: float
    rdnoise_b: float
    saturate_a: float
    saturate_b: float

    @property
    def gain(self) -> float:
        return 0.5 * (self.gain_a + self.gain_b)

    @property
    def read_noise(self) -> float:
        return 0.5 * (self.rdnoise_a + self.rdnoise_b)

    @property
    def saturate(self) -> float:
        return min(self.saturate_a, self.saturate_b)


def detector_for(ccd: str, seed: int) -> Detector:
    """Fixed electronics of a CCD (same in every exposure), in DECam's measured ranges."""
    rng = np.random.default_rng([seed, CCDNUM[ccd], 7])
    g = rng.uniform(3.6, 4.4, 2)
    rn = rng.uniform(5.6, 7.6, 2)
    sat = rng.uniform(33000, 52000, 2)
    return Detector(float(g[0]), float(g[1]), float(rn[0]), float(rn[1]), float(sat[0]), float(sat[1]))


def _smooth(rng: np.random.Generator, n: int, dt: float, rms: float, timescale: float) -> np.ndarray:
    white = rng.standard_normal(n + 200)
    s = gaussian_filter1d(white, timescale / dt, mode="wrap")[100:-100]
    return (s - s.mean()) / (s.std() or 1.0) * rms


def make_atmosphere(rng: np.random.Generator, exptime: float, fwhm_px: float,
                    transparency_rms: float = 0.02, seeing_rms: float = 0.03,
                    timescale_s: float | None = None, dt: float = 0.05) -> Atmosphere:
    """Smooth transparency and seeing series (correlation time 1-5 s, a few percent rms)."""
    n = int(round(exptime / dt)) + 1
    t = np.linspace(0.0, exptime, n)
    ts = timescale_s if timescale_s is not None else float(rng.uniform(1.0, 5.0))
    trans = 1.0 + _smooth(rng, n, dt, transparency_rms, ts)
    fwhm = fwhm_px * (1.0 + _smooth(rng, n, dt, seeing_rms, ts))
    return Atmosphere(t_s=t, transparency=trans, fwhm_px=fwhm)


def random_stars(rng: np.random.Generator, wcs: WCS, shape: tuple[int, int], n: int,
                 first_id: int = 0, margin_px: tuple[float, float] = (60.0, 30.0),
                 vr_range: tuple[float, float] = (10.5, 22.5), slope: float = 0.25) -> StarCatalogue:
    """Draw ~n stars per CCD area over the CCD plus a margin (x, y) px, uniform on the sky.

    VR magnitudes follow dN/dm ~ 10^(slope m) (a few saturated stars per thousand), g - r is
    normal(0.55, 0.25) clipped to [-0.3, 1.5], and VR = r + 0.15 (g - r).
    """
    ny, nx = shape
    mx, my = margin_px
    area_ratio = (nx + 2 * mx) * (ny + 2 * my) / (nx * ny)
    count = int(rng.poisson(n * area_ratio)) if n > 0 else 0
    x = rng.uniform(-mx, nx - 1 + mx, count)
    y = rng.uniform(-my, ny - 1 + my, count)
    ra, dec = wcs.all_pix2world(x, y, 0)
    lo, hi = (10.0 ** (slope * m) for m in vr_range)
    vr = np.log10(lo + rng.uniform(0, 1, count) * (hi - lo)) / slope
    gr = np.clip(rng.normal(0.55, 0.25, count), -0.3, 1.5)
    r = vr - VR_COLOUR * gr
    return StarCatalogue(star_id=np.arange(first_id, first_id + count, dtype=np.int64),
                         ra=np.asarray(ra, float), dec=np.asarray(dec, float), g=r + gr, r=r, vr=vr)


def random_events(rng: np.random.Generator, wcs: WCS, shape: tuple[int, int], stars: StarCatalogue,
                  exptime: float, rate: float, n_brightenings: int, n_flashes: int,
                  n_streaks: int) -> tuple[tuple[Brightening, ...], tuple[Flash, ...], tuple[Streak, ...]]:
    """Pick brightenings on stars whose whole trail is on the CCD (VR 14-19.5), flashes and streaks."""
    ny, nx = shape
    bright: list[Brightening] = []
    if n_brightenings and len(stars):
        x0, y0 = drift_positions(wcs, stars.ra, stars.dec, 0.0, rate)
        x1, y1 = drift_positions(wcs, stars.ra, stars.dec, exptime, rate)
        pad = 15
        ok = ((np.minimum(x0, x1) > pad) & (np.maximum(x0, x1) < nx - 1 - pad)
              & (np.minimum(y0, y1) > pad) & (np.maximum(y0, y1) < ny - 1 - pad)
              & (stars.vr > 14.0) & (stars.vr < 19.5))
        cand = np.nonzero(ok)[0]
        pick = rng.choice(cand, size=min(n_brightenings, cand.size), replace=False) if cand.size else []
        for i in pick:
            dur = float(np.exp(rng.uniform(np.log(0.3), np.log(5.0))))
            t_peak = float(rng.uniform(min(dur, exptime / 2 - 0.5), max(exptime - dur, exptime / 2 + 0.5)))
            bright.append(Brightening(star_id=int(stars.star_id[i]), t_peak_s=t_peak,
                                      duration_s=dur, amplitude=float(rng.uniform(0.05, 0.5))))
    mx, my = min(20.0, nx / 4), min(20.0, ny / 4)
    flashes = tuple(
        Flash(x=float(rng.uniform(mx, nx - 1 - mx)), y=float(rng.uniform(my, ny - 1 - my)),
              t_peak_s=float(rng.uniform(0, exptime)), flux_adu=float(rng.uniform(3000, 60000)))
        for _ in range(n_flashes))
    streaks = []
    for _ in range(n_streaks):
        cx, cy = rng.uniform(0, nx - 1), rng.uniform(0, ny - 1)
        ang = rng.uniform(0, np.pi)
        ends = _clip_line(cx, cy, math.cos(ang), math.sin(ang), nx, ny)
        speed_px_s = rng.uniform(2000, 20000)
        length = math.hypot(ends[2] - ends[0], ends[3] - ends[1])
        streaks.append(Streak(*ends, adu_per_px=float(rng.uniform(30, 400)),
                              t_peak_s=float(rng.uniform(0, exptime)),
                              duration_s=float(length / speed_px_s)))
    return tuple(bright), flashes, tuple(streaks)


def _clip_line(cx: float, cy: float, ux: float, uy: float, nx: int, ny: int) -> tuple[float, float, float, float]:
    """End points where the line through (cx, cy) along (ux, uy) leaves the CCD."""
    ts = []
    for c, u, size in ((cx, ux, nx - 1), (cy, uy, ny - 1)):
        if abs(u) > 1e-12:
            ts += [(0 - c) / u, (size - c) / u]
    pts = []
    for t in ts:
        x, y = cx + t * ux, cy + t * uy
        if -1e-6 <= x <= nx - 1 + 1e-6 and -1e-6 <= y <= ny - 1 + 1e-6:
            pts.append((t, x, y))
    pts.sort()
    (_, xa, ya), (_, xb, yb) = pts[0], pts[-1]
    return float(xa), float(ya), float(xb), float(yb)


def seed_for(*parts: object) -> int:
    """A stable 32-bit seed from a tuple of values (run seed, expnum, CCD name, ...)."""
    return zlib.crc32(repr(parts).encode())


def quick_scene(shape: tuple[int, int] = (512, 256), n_stars: int = 50, seed: int = 0,
                ccd: str = "N4", drift: bool = True, exptime: float = 20.0,
                rate_arcsec_s: float = 0.5, band: str = "VR", fwhm_px: float = 4.5,
                n_brightenings: int = 0, n_flashes: int = 0, n_streaks: int = 0,
                stars: StarCatalogue | None = None, ra0: float = 150.0,
                dec0: float = -20.0) -> tuple[CcdScene, StarCatalogue]:
    """Build one CCD scene from a seed (tests, benchmarks). Returns (scene, the stars on it)."""
    rng = np.random.default_rng(seed)
    wcs = ccd_wcs(ccd, ra0, dec0, shape)
    if stars is None:
        stars = random_stars(rng, wcs, shape, n_stars)
    rate = rate_arcsec_s if drift else 0.0
    det = detector_for(ccd, seed)
    bright, flashes, streaks = random_events(rng, wcs, shape, stars, exptime, rate,
                                             n_brightenings, n_flashes, n_streaks)
    scene = CcdScene(
        ccd=ccd, shape=shape, wcs=wcs, exptime=exptime, drift_rate_arcsec_s=rate,
        star_id=stars.star_id, ra=stars.ra, dec=stars.dec, flux_adu_s=stars.flux_adu_s(band),
        fwhm_px=fwhm_px, sky_adu=BANDS[band].sky_adu_s * exptime, gain=det.gain,
        read_noise_e=det.read_noise, saturate_adu=det.saturate, seed=seed_for(seed, ccd, "render"),
        atmosphere=make_atmosphere(rng, exptime, fwhm_px), brightenings=bright, flashes=flashes,
        streaks=streaks)
    return scene, stars
