"""Drift-scan geometry: where a star's image is on the CCD at each moment of the exposure.

Convention (shared by the simulator and the reduction): the CCD's WCS describes the pointing at
shutter open (t = 0). During the exposure the star's image moves in Declination at
``rate_arcsec_s`` (its sign is the direction of the Declination change), so a star at sky
position (ra, dec) is at pixel ``wcs.world_to_pixel(ra, dec + rate * t / 3600)`` at time t
seconds. The trail runs from its t = 0 end to its t = EXPTIME end. Direction, length and sign all
come from the WCS, never from PIXSCAL1 or a fixed axis: on DECam the trail lies along pixel x with
+Dec toward -x, but nothing here assumes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

__all__ = ["DriftGeometry", "drift_geometry", "drift_positions"]


@dataclass(frozen=True)
class DriftGeometry:
    """The straight-line motion of a star's image on one CCD.

    Attributes
    ----------
    dx_dt, dy_dt : float
        Image velocity in pixels per second (x is the FITS NAXIS1 axis, numpy axis 1).
    exptime : float
        Exposure time in seconds.
    """

    dx_dt: float
    dy_dt: float
    exptime: float

    @property
    def speed_px_s(self) -> float:
        """Speed of the image along the trail, pixels per second."""
        return math.hypot(self.dx_dt, self.dy_dt)

    @property
    def length_px(self) -> float:
        """Trail length (start to end of the PSF centre's path), pixels."""
        return self.speed_px_s * self.exptime

    @property
    def angle_rad(self) -> float:
        """Direction of motion, radians counter-clockwise from +x."""
        return math.atan2(self.dy_dt, self.dx_dt)

    @property
    def unit(self) -> tuple[float, float]:
        """Unit vector (ux, uy) of the direction of motion."""
        s = self.speed_px_s
        return (self.dx_dt / s, self.dy_dt / s) if s > 0 else (1.0, 0.0)

    @property
    def seconds_per_px(self) -> float:
        """Time the image takes to move one pixel along the trail, seconds."""
        return 1.0 / self.speed_px_s if self.speed_px_s > 0 else math.inf

    @property
    def along_x(self) -> bool:
        """True when the trail is within 1 degree of the pixel x axis (separable filters)."""
        return abs(math.sin(self.angle_rad)) < math.sin(math.radians(1.0))


def drift_positions(wcs: WCS, ra: np.ndarray, dec: np.ndarray, t: np.ndarray | float,
                    rate_arcsec_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the pixel positions of stars at times ``t`` of the exposure.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS of the CCD at shutter open (TPV distortion included).
    ra, dec : ndarray, shape (n,)
        Sky positions, degrees.
    t : float or ndarray broadcastable with ``ra``
        Seconds since shutter open.
    rate_arcsec_s : float
        Drift rate of the image in Declination, arcsec/s (signed).

    Returns
    -------
    x, y : ndarray
        Zero-based pixel coordinates (numpy axis 1 and axis 0).
    """
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float) + rate_arcsec_s * np.asarray(t, dtype=float) / 3600.0
    ra, dec = np.broadcast_arrays(ra, dec)
    x, y = wcs.all_world2pix(ra.ravel(), dec.ravel(), 0)
    return x.reshape(ra.shape), y.reshape(ra.shape)


def drift_geometry(wcs: WCS, rate_arcsec_s: float, exptime: float,
                   x: float | None = None, y: float | None = None) -> DriftGeometry:
    """Measure the trail motion of one CCD from its WCS at pixel (x, y) (default: the centre).

    The velocity is the pixel displacement of a point whose Declination changes by
    ``rate * exptime``, divided by ``exptime``; it therefore includes the local plate scale and
    the distortion, and its sign follows the WCS.
    """
    if exptime <= 0:
        raise ValueError(f"exposure time must be positive, got {exptime}")
    if x is None or y is None:
        ny, nx = wcs.pixel_shape[::-1] if wcs.pixel_shape else (4094, 2046)
        x, y = (nx - 1) / 2.0, (ny - 1) / 2.0
    ra, dec = wcs.all_pix2world([x], [y], 0)
    x1, y1 = drift_positions(wcs, ra, dec, exptime, rate_arcsec_s)
    return DriftGeometry(dx_dt=float(x1[0] - x) / exptime, dy_dt=float(y1[0] - y) / exptime,
                         exptime=float(exptime))
