"""What one simulated CCD image contains: stars, injected events, atmosphere and detector.

Pure data: frozen dataclasses built by :mod:`driftwatch.simulate.generate` (or by hand in a
test) and turned into pixels by :func:`driftwatch.simulate.render.render_ccd`.

Microlensing brightening model (documented in TRUTH.md): a point-lens (Paczynski) magnification

    A(t) = (u^2 + 2) / (u sqrt(u^2 + 4)),  u(t) = sqrt(u0^2 + ((t - t_peak) / t_E)^2)

with u0 chosen so that A(t_peak) - 1 = ``amplitude`` and t_E so that the full width at half
maximum of A(t) - 1 equals ``duration_s``. The profile is symmetric about t_peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from astropy.wcs import WCS
from scipy.optimize import brentq

__all__ = [
    "Atmosphere", "Brightening", "CcdScene", "Flash", "RenderOptions", "Streak",
    "paczynski_magnification",
]


def _amp(u: np.ndarray | float) -> np.ndarray:
    u = np.asarray(u, dtype=float)
    return (u * u + 2.0) / (u * np.sqrt(u * u + 4.0))


def _lens_params(amplitude: float, duration_s: float) -> tuple[float, float]:
    """Return (u0, t_E) giving a peak A - 1 = amplitude and a FWHM of A - 1 = duration_s."""
    if not 0 < amplitude < 100 or duration_s <= 0:
        raise ValueError(f"bad brightening amplitude {amplitude} or duration {duration_s}")
    u0 = brentq(lambda u: float(_amp(u)) - 1.0 - amplitude, 1e-6, 1e3)
    u_half = brentq(lambda u: float(_amp(u)) - 1.0 - amplitude / 2.0, u0, 1e4)
    t_e = duration_s / (2.0 * math.sqrt(u_half * u_half - u0 * u0))
    return u0, t_e


def paczynski_magnification(t: np.ndarray, t_peak: float, amplitude: float,
                            duration_s: float) -> np.ndarray:
    """Return the point-lens magnification A(t) (>= 1) of a brightening.

    Parameters
    ----------
    t : ndarray
        Times in seconds since shutter open.
    t_peak, amplitude, duration_s : float
        Time of the peak (s), A(t_peak) - 1, and the FWHM of A(t) - 1 (s).
    """
    u0, t_e = _lens_params(amplitude, duration_s)
    tau = (np.asarray(t, dtype=float) - t_peak) / t_e
    return _amp(np.sqrt(u0 * u0 + tau * tau))


@dataclass(frozen=True)
class Brightening:
    """A microlensing brightening of one star (see the module docstring for the profile)."""

    star_id: int
    t_peak_s: float
    duration_s: float
    amplitude: float


@dataclass(frozen=True)
class Flash:
    """A millisecond flash: an undrifted PSF of ``flux_adu`` total counts at pixel (x, y)."""

    x: float
    y: float
    t_peak_s: float
    flux_adu: float
    duration_s: float = 0.001


@dataclass(frozen=True)
class Streak:
    """A satellite streak: a straight PSF-wide line between two points on the CCD edges.

    ``adu_per_px`` is the flux per pixel of streak length; (x0, y0), (x1, y1) are 0-based pixels.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    adu_per_px: float
    t_peak_s: float
    duration_s: float


@dataclass(frozen=True)
class Atmosphere:
    """Transparency (multiplier, mean ~1) and seeing FWHM (px) sampled over the exposure.

    Arrays of equal shape (m,); ``t_s`` increasing from 0 to the exposure time.
    """

    t_s: np.ndarray
    transparency: np.ndarray
    fwhm_px: np.ndarray


@dataclass(frozen=True)
class RenderOptions:
    """Switches for what :func:`render_ccd` adds (tests turn parts off)."""

    noise: bool = True           # Poisson (electrons) + read noise
    cosmics: bool = True
    bad_columns: bool = True
    saturation: bool = True      # clip at SATURATE and bleed along columns
    events: bool = True          # brightenings, flashes
    streaks: bool = True
    atmosphere: bool = True      # time-varying transparency and seeing
    scintillation: bool = True
    sky: bool = True

    @classmethod
    def noiseless(cls, sky: bool = True) -> "RenderOptions":
        """Expected counts only: no noise, cosmic rays or bad columns (events, streaks kept)."""
        return cls(noise=False, cosmics=False, bad_columns=False, sky=sky)

    def without_events(self) -> "RenderOptions":
        """The same switches with no injected brightenings, flashes or streaks."""
        return replace(self, events=False, streaks=False)


@dataclass(frozen=True)
class CcdScene:
    """Everything needed to render one CCD of one exposure (no randomness left but the seed).

    ``wcs`` is the TRUE WCS at shutter open; ``flux_adu_s`` the stars' count rates in this band
    (ADU/s, transparency 1); ``sky_adu`` the mean sky per pixel over the exposure (ADU);
    ``sky_gradient`` the fractional sky change across the CCD along y.
    """

    ccd: str
    shape: tuple[int, int]
    wcs: WCS
    exptime: float
    drift_rate_arcsec_s: float
    star_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    flux_adu_s: np.ndarray
    fwhm_px: float
    sky_adu: float
    gain: float
    read_noise_e: float
    saturate_adu: float
    seed: int
    moffat_beta: float = 3.0
    atmosphere: Atmosphere | None = None
    scintillation_rms: float = 0.005
    brightenings: tuple[Brightening, ...] = ()
    flashes: tuple[Flash, ...] = ()
    streaks: tuple[Streak, ...] = ()
    cosmic_rate_cm2_s: float = 0.03
    n_bad_columns: int = 3
    sky_gradient: float = 0.004
    cosmic_flag_fraction: float = 0.9

    @property
    def drifting(self) -> bool:
        return self.drift_rate_arcsec_s != 0.0
