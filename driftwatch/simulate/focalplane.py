"""The DECam focal plane: where each science CCD sits, and the TPV WCS of a CCD for a pointing.

Layout: 12 rows of CCDs (6 south S1-S31, 6 north N1-N31) stacked along pixel x with a pitch of
33.816 mm (2254.4 px of 15 um: 2048 px plus the 201 px long-edge gap), CCDs within a row along
pixel y with a pitch of 63.89 mm (4259.3 px: 4096 px plus the 153 px short-edge gap). Rows hold
7, 6, 6, 5, 4, 3 CCDs from the centre outwards; south rows at -x, north rows at +x, and within a
row the numbering runs from -y to +y. This reproduces the real S29 header (CRPIX1 = 13422.2,
CRPIX2 = 6306.3 against 13422.7 and 6306.8 from this table) and the published DECam CCD-centre
table in focal-plane millimetres.

The WCS has DECam's orientation (CD1_2 = +7.286e-5, CD2_1 = -7.286e-5 deg/px: +Dec toward -x,
RA along y) and a mild field-wide radial TPV distortion (pixel scale ~0.4% smaller at 1 deg).
"""

from __future__ import annotations

import math
import warnings

from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from driftwatch.io.decam import CCDNUM

__all__ = ["CCD_CENTRES_PX", "FULL_SHAPE", "ccd_wcs", "ccd_wcs_header", "shift_pointing"]

FULL_SHAPE = (4094, 2046)  # (ny, nx) of a CP InstCal CCD
ROW_PITCH_PX = 33.816 / 0.015
COL_PITCH_PX = 63.89 / 0.015
CD_SCALE = 7.286e-5  # deg/px
# Radial TPV term: xi' = xi (1 + K r^2), r in degrees
TPV_K = -0.0012

_ROWS: tuple[tuple[int, int], ...] = ((1, 7), (8, 6), (14, 6), (20, 5), (25, 4), (29, 3))


def _centres() -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for side, sign in (("S", -1.0), ("N", 1.0)):
        for row, (first, count) in enumerate(_ROWS):
            x = sign * (row + 0.5) * ROW_PITCH_PX
            for i in range(count):
                out[f"{side}{first + i}"] = (x, (i - (count - 1) / 2.0) * COL_PITCH_PX)
    return out


#: Focal-plane position of each CCD centre (x, y) in pixels from the optical axis.
CCD_CENTRES_PX: dict[str, tuple[float, float]] = _centres()
assert set(CCD_CENTRES_PX) == set(CCDNUM)


def ccd_wcs_header(ccd: str, ra_deg: float, dec_deg: float,
                   shape: tuple[int, int] = FULL_SHAPE) -> fits.Header:
    """Return the WCS cards of one CCD for a field centre (the tangent point) at (ra, dec).

    A CCD smaller than full size (tests) is the central (ny, nx) part of the real CCD.
    """
    if ccd not in CCD_CENTRES_PX:
        raise ValueError(f"{ccd!r} is not a DECam science CCD")
    ny, nx = shape
    xc, yc = CCD_CENTRES_PX[ccd]
    h = fits.Header()
    h["WCSAXES"] = 2
    h["CTYPE1"], h["CTYPE2"] = "RA---TPV", "DEC--TPV"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CRVAL1"], h["CRVAL2"] = float(ra_deg % 360.0), float(dec_deg)
    # 1-based FITS pixel of the tangent point: CCD centre (nx+1)/2 minus the CCD offset
    h["CRPIX1"], h["CRPIX2"] = (nx + 1) / 2.0 - xc, (ny + 1) / 2.0 - yc
    h["CD1_1"], h["CD1_2"] = -1.97e-7, CD_SCALE
    h["CD2_1"], h["CD2_2"] = -CD_SCALE, -1.90e-7
    for axis in (1, 2):
        for k in range(11):
            h[f"PV{axis}_{k}"] = 0.0
        h[f"PV{axis}_1"] = 1.0
        # axis 1: xi^3 (7) and xi*eta^2 (9); axis 2 swaps the roles of xi and eta
        h[f"PV{axis}_7"] = TPV_K
        h[f"PV{axis}_9"] = TPV_K
    return h


def ccd_wcs(ccd: str, ra_deg: float, dec_deg: float,
            shape: tuple[int, int] = FULL_SHAPE) -> WCS:
    """Return the TPV WCS of one CCD with ``pixel_shape`` set."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(ccd_wcs_header(ccd, ra_deg, dec_deg, shape))
    wcs.pixel_shape = (shape[1], shape[0])
    return wcs


def shift_pointing(ra_deg: float, dec_deg: float, dra_arcsec: float,
                   ddec_arcsec: float) -> tuple[float, float]:
    """Return the pointing moved on the sky by (dRA cos Dec, dDec) arcseconds."""
    return (ra_deg + dra_arcsec / 3600.0 / math.cos(math.radians(dec_deg)),
            dec_deg + ddec_arcsec / 3600.0)
