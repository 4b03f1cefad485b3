"""Read DECam exposures: primary-header facts, CCD pixels with their WCS, and CP data-quality masks.

The same code reads real Community Pipeline (CP) InstCal products and the simulator's files,
uncompressed ``.fits`` or RICE-compressed ``.fits.fz``. Headers are read with fitsio, which finds
an extension of a 61-extension file several times faster than astropy
(``driftwatch/bench/simulate.py`` measures it). Pixels too, except in the two common layouts
read directly in half the time and bit-identical: uncompressed float32, and CP's RICE_1
row tiles (:mod:`driftwatch.io.rice`). Headers are turned
into :class:`astropy.io.fits.Header` objects so that :class:`astropy.wcs.WCS` reads the TPV
distortion.

CCD extensions set ``INHERIT = T``: a keyword missing from the CCD header is looked up in the
primary header (MAGZPT, EXPTIME, ... live there in real CP files).

Every problem (missing file, truncated file, missing CCD, missing keyword, unreadable WCS) raises
:class:`~driftwatch.errors.InputError` naming the file, the CCD and the problem.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import fitsio
import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

from driftwatch.errors import InputError
from driftwatch.io.rice import decode_rice_rows

__all__ = [
    "CCDNUM", "CCD_NAMES", "CP_DQ", "CcdData", "ExposureInfo", "band_from_filter",
    "read_ccd", "read_dq", "read_exposure_info", "read_header",
]

log = logging.getLogger(__name__)

#: The real CCDNUM of every DECam science CCD, keyed by EXTNAME = DETPOS (reference/decam.md).
CCDNUM: dict[str, int] = {
    "S29": 1, "S30": 2, "S31": 3, "S25": 4, "S26": 5, "S27": 6, "S28": 7, "S20": 8, "S21": 9,
    "S22": 10, "S23": 11, "S24": 12, "S14": 13, "S15": 14, "S16": 15, "S17": 16, "S18": 17,
    "S19": 18, "S8": 19, "S9": 20, "S10": 21, "S11": 22, "S12": 23, "S13": 24, "S1": 25, "S2": 26,
    "S3": 27, "S4": 28, "S5": 29, "S6": 30, "S7": 31,
    **{f"N{i}": 31 + i for i in range(1, 32)},
}
#: Science CCD names in CCDNUM order.
CCD_NAMES: tuple[str, ...] = tuple(sorted(CCDNUM, key=CCDNUM.__getitem__))

#: CP data-quality codes (integer codes, CP V3.5 and later).
CP_DQ: dict[str, int] = {
    "good": 0, "bad": 1, "nodata": 2, "saturated": 3, "bleed": 4, "cosmic": 5, "lowweight": 6,
    "diffdet": 7, "streak": 8,
}

# Keywords that describe the file structure or its compression, not the image: dropped when a
# fitsio header becomes an astropy Header (a compressed CCD's raw header is a BINTABLE's).
_STRUCTURAL = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|TFIELDS|T(TYPE|FORM|UNIT|DIM)\d+"
    r"|Z(IMAGE|SIMPLE|EXTEND|BLOCKED|TENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|TILE\d+|CMPTYPE"
    r"|NAME\d+|VAL\d+|QUANTIZ|DITHER0|HECKSUM|DATASUM)|CHECKSUM|DATASUM|BZERO|BSCALE)$"
)


def band_from_filter(filter_value: str) -> str:
    """Return the band of a DECam FILTER string: its first token.

    >>> band_from_filter('VR DECam c0007 6300.0 2600.0')
    'VR'
    """
    tokens = str(filter_value).split()
    return tokens[0] if tokens else ""


@dataclass(frozen=True)
class ExposureInfo:
    """What the primary header and the extension names say about one file (no pixels read).

    ``nite`` is the observing night 'YYYY-MM-DD' (from NITE, else DTCALDAT, else None);
    ``ccds`` the EXTNAMEs of the science-CCD extensions in file order; ``ra_deg``/``dec_deg``
    the pointing from CENTRA/CENTDEC, else RA/DEC, else TELRA/TELDEC (sexagesimal).
    """

    path: Path
    expnum: int
    date_obs: str
    mjd_obs: float
    exptime: float
    band: str
    obstype: str
    object: str
    propid: str
    nite: str | None
    prodtype: str
    proctype: str
    ccds: tuple[str, ...]
    nextend: int | None
    ra_deg: float | None
    dec_deg: float | None


@dataclass(frozen=True)
class CcdData:
    """One CCD of an exposure: pixels (float32 ADU, native byte order), WCS and calibration.

    ``image`` has shape (ny, nx) = (NAXIS2, NAXIS1), (4094, 2046) for a full CP CCD, with the
    sky kept. ``wcs`` is the celestial TPV WCS with ``pixel_shape`` set; ``header`` the CCD
    extension header. ``gain`` e-/ADU (mean of GAINA/GAINB), ``read_noise`` e- (mean of
    RDNOISEA/B), ``saturate`` ADU (SATURATE, else min(SATURATA, SATURATB)), ``fwhm_px`` (FWHM),
    ``sky_adu`` (AVSKY), ``sky_sigma_adu`` (AVSIG), ``magzpt`` (MAGZPT, magnitude giving
    1 ADU/s) are None when the header does not have them.
    """

    name: str
    ccdnum: int
    image: np.ndarray
    wcs: WCS
    header: fits.Header
    gain: float
    read_noise: float
    saturate: float
    fwhm_px: float | None
    sky_adu: float | None
    sky_sigma_adu: float | None
    magzpt: float | None
    exptime: float
    mjd_obs: float
    date_obs: str
    expnum: int
    band: str


# ---------------------------------------------------------------------------------------------
# header helpers


def _to_astropy(hdr: fitsio.FITSHDR) -> fits.Header:
    """Convert a fitsio header to an astropy Header without the structural keywords."""
    out = fits.Header()
    for rec in hdr.records():
        name = rec.get("name") or ""
        if _STRUCTURAL.match(name):
            continue
        value = rec.get("value")
        comment = rec.get("comment") or ""
        if name == "HISTORY":
            out.add_history(str(value or comment))
        elif name == "COMMENT":
            out.add_comment(str(value or comment))
        elif name:
            if isinstance(value, str):
                value = value.rstrip()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # long keywords become HIERARCH cards
                out.append((name, value, comment), end=True)
    return out


T = TypeVar("T")


class _Keys:
    """Keyword look-up in a CCD header with INHERIT fall-back to the primary header."""

    def __init__(self, where: str, *headers: Mapping[str, Any]) -> None:
        self.where = where
        self.headers = headers

    def get(self, key: str, default: Any = None) -> Any:
        for h in self.headers:
            if key in h and h[key] is not None and not (isinstance(h[key], str) and not h[key].strip()):
                return h[key]
        return default

    def require(self, key: str, conv: Callable[[Any], T]) -> T:
        value = self.get(key)
        if value is None:
            raise InputError(f"{self.where}: header keyword {key} is missing")
        return self._conv(key, value, conv)

    def optional(self, key: str, conv: Callable[[Any], T]) -> T | None:
        value = self.get(key)
        if value is None:
            return None
        out = self._conv(key, value, conv)
        if isinstance(out, float) and not math.isfinite(out):
            return None
        return out

    def _conv(self, key: str, value: Any, conv: Callable[[Any], T]) -> T:
        try:
            return conv(value)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{self.where}: header keyword {key}={value!r} is invalid: {exc}") from None


def _int(value: Any) -> int:
    """EXPNUM is sometimes a string, sometimes a float: coerce to an exact integer."""
    f = float(value)
    if not f.is_integer():
        raise ValueError("not an integer")
    return int(f)


def _sexagesimal(value: Any, hours: bool) -> float:
    """Degrees from 'dd:mm:ss.s' (or 'hh:mm:ss.s' when ``hours``) or a plain number."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    parts = re.split(r"[:\s]+", text)
    if len(parts) == 1:
        return float(text)
    sign = -1.0 if text.startswith("-") else 1.0
    d, m, s = (abs(float(parts[0])), float(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0)
    deg = sign * (d + m / 60.0 + s / 3600.0)
    return deg * 15.0 if hours else deg


def _nite(keys: _Keys) -> str | None:
    nite = keys.get("NITE")
    if nite is not None:
        text = str(nite).strip()
        if re.fullmatch(r"\d{8}", text):
            return f"{text[:4]}-{text[4:6]}-{text[6:]}"
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return text
    cal = keys.get("DTCALDAT")
    if cal is not None and re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(cal).strip()):
        return str(cal).strip()
    return None


def _band(keys: _Keys) -> str:
    band = keys.get("BAND")
    if band is not None:
        return str(band).strip()
    filt = keys.get("FILTER")
    return band_from_filter(filt) if filt is not None else ""


def _mjd(keys: _Keys, date_obs: str) -> float:
    mjd = keys.optional("MJD-OBS", float)
    if mjd is not None:
        return mjd
    try:
        return float(Time(date_obs, format="isot", scale="utc").mjd)
    except ValueError:
        raise InputError(f"{keys.where}: MJD-OBS is missing and DATE-OBS={date_obs!r} "
                         "is not an ISO time") from None


def _pointing(keys: _Keys) -> tuple[float | None, float | None]:
    for rk, dk, sexa in (("CENTRA", "CENTDEC", False), ("RA", "DEC", True),
                         ("TELRA", "TELDEC", True)):
        ra, dec = keys.get(rk), keys.get(dk)
        if ra is None or dec is None:
            continue
        try:
            ra_deg = _sexagesimal(ra, hours=sexa and isinstance(ra, str))
            dec_deg = _sexagesimal(dec, hours=False)
        except (ValueError, IndexError):
            continue
        if math.isfinite(ra_deg) and math.isfinite(dec_deg):
            return ra_deg, dec_deg
    return None, None


def _open(path: Path) -> fitsio.FITS:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return fitsio.FITS(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable FITS file: {exc}") from None


def read_header(path: str | Path, ext: str | int = 0) -> fits.Header:
    """Return one header of a FITS file as an astropy Header (structural keywords dropped)."""
    path = Path(path)
    with _open(path) as f:
        try:
            return _to_astropy(f[ext].read_header())
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise InputError(f"{path}[{ext}]: cannot read the header: {exc}") from None


# ---------------------------------------------------------------------------------------------
# public readers


def read_exposure_info(path: str | Path) -> ExposureInfo:
    """Read the primary header and the extension names of a DECam file (no pixels).

    Required keywords: EXPNUM, DATE-OBS, EXPTIME (MJD-OBS is computed from DATE-OBS when
    absent). ``band`` is BAND, else the first token of FILTER, else ''.

    Raises
    ------
    InputError
        The file is missing, unreadable or truncated, or a required keyword is missing/invalid.
    """
    path = Path(path)
    with _open(path) as f:
        try:
            primary = f[0].read_header()
            names = []
            for hdu in f[1:]:
                name = hdu.get_extname().strip()
                if name in CCDNUM and hdu.get_exttype() == "IMAGE_HDU":
                    names.append(name)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise InputError(f"{path}: cannot read the headers (truncated?): {exc}") from None
    keys = _Keys(str(path), primary)
    date_obs = str(keys.require("DATE-OBS", str)).strip()
    return ExposureInfo(
        path=path,
        expnum=keys.require("EXPNUM", _int),
        date_obs=date_obs,
        mjd_obs=_mjd(keys, date_obs),
        exptime=keys.require("EXPTIME", float),
        band=_band(keys),
        obstype=str(keys.get("OBSTYPE", "")).strip(),
        object=str(keys.get("OBJECT", "")).strip(),
        propid=str(keys.get("PROPID", keys.get("DTPROPID", ""))).strip(),
        nite=_nite(keys),
        prodtype=str(keys.get("PRODTYPE", "image")).strip() or "image",
        proctype=str(keys.get("PROCTYPE", "")).strip(),
        ccds=tuple(names),
        nextend=keys.optional("NEXTEND", _int),
        ra_deg=_pointing(keys)[0],
        dec_deg=_pointing(keys)[1],
    )


def _read_hdu(path: Path, ccd: str) -> tuple[np.ndarray, fitsio.FITSHDR, fitsio.FITSHDR]:
    """Return (pixels, CCD header, primary header) of one CCD extension."""
    with _open(path) as f:
        try:
            primary = f[0].read_header()
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read the primary header: {exc}") from None
        if ccd not in f:
            raise InputError(f"{path}: no extension named {ccd!r}")
        try:
            hdu = f[ccd]
            header = hdu.read_header()
            data = _read_float32(path, hdu, header)
            if data is None and hdu.is_compressed():
                with open(path, "rb") as fh:
                    data = decode_rice_rows(fh, header, int(hdu.get_offsets()["data_start"]))
            if data is None:
                data = hdu.read()
        except (OSError, ValueError, RuntimeError) as exc:
            raise InputError(f"{path}[{ccd}]: cannot read the pixels (truncated?): {exc}") from None
    if data is None or data.ndim != 2:
        raise InputError(f"{path}[{ccd}]: the extension holds no 2-d image")
    return data, header, primary


# rows per read of _read_float32: 1 MB blocks, so each is byte-swapped while still in cache
_BLOCK_BYTES = 1 << 20


def _read_float32(path: Path, hdu: Any, header: fitsio.FITSHDR) -> np.ndarray | None:
    """Return an uncompressed, unscaled 2-d float32 image read directly, else ``None``.

    fitsio reads such an image in ~22 ms for a DECam CCD (zeroed output, then cfitsio's
    conversion); reading the big-endian bytes in 1 MB blocks into a native float32 array
    gives the same values in ~9 ms. Compressed or scaled images (and any other type) return
    ``None`` and are left to fitsio.

    Raises
    ------
    OSError
        The file ends before the image does (truncated).
    """
    if hdu.is_compressed() or header.get("BITPIX") != -32 or header.get("NAXIS") != 2:
        return None
    if header.get("BZERO", 0) not in (0, 0.0) or header.get("BSCALE", 1) not in (1, 1.0):
        return None
    nx, ny = int(header["NAXIS1"]), int(header["NAXIS2"])
    out = np.empty((ny, nx), np.float32)
    if out.size == 0:
        return out
    rows = max(1, _BLOCK_BYTES // (4 * nx))
    buf = np.empty((rows, nx), ">f4")
    with open(path, "rb", buffering=0) as fh:
        fh.seek(int(hdu.get_offsets()["data_start"]))
        for r0 in range(0, ny, rows):
            block = buf[: min(rows, ny - r0)]
            if fh.readinto(block) != block.nbytes:
                raise OSError("the file ends inside the image")
            out[r0:r0 + len(block)] = block
    return out


def read_ccd(path: str | Path, ccd: str) -> CcdData:
    """Read one CCD of an image file (``.fits`` or RICE ``.fits.fz``), its WCS and calibration.

    Raises
    ------
    InputError
        Missing file or CCD, truncated data, a required keyword missing (GAINA/B or GAIN,
        RDNOISEA/B or RDNOISE, SATURATE or SATURATA/B, EXPNUM, EXPTIME, DATE-OBS), or a WCS
        that astropy cannot read or that has no celestial axes.
    """
    path = Path(path)
    data, raw_header, raw_primary = _read_hdu(path, ccd)
    header = _to_astropy(raw_header)
    primary = _to_astropy(raw_primary)
    where = f"{path}[{ccd}]"
    inherit = bool(header.get("INHERIT", True))
    keys = _Keys(where, header, primary) if inherit else _Keys(where, header)
    pkeys = _Keys(where, header, primary)  # exposure facts always come from the primary

    ny, nx = data.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2, relax=True).celestial
        except Exception as exc:  # astropy raises many types for a bad WCS
            raise InputError(f"{where}: unreadable WCS: {exc}") from None
    if not wcs.has_celestial or wcs.naxis != 2:
        raise InputError(f"{where}: the header has no celestial WCS")
    wcs.pixel_shape = (nx, ny)

    def mean_of(a: str, b: str, single: str) -> float:
        va, vb = keys.optional(a, float), keys.optional(b, float)
        if va is not None and vb is not None:
            return 0.5 * (va + vb)
        if va is not None or vb is not None:
            return float(va if va is not None else vb)
        return keys.require(single, float)

    saturate = keys.optional("SATURATE", float)
    if saturate is None:
        sa, sb = keys.optional("SATURATA", float), keys.optional("SATURATB", float)
        if sa is None and sb is None:
            raise InputError(f"{where}: header keyword SATURATE (or SATURATA/SATURATB) is missing")
        saturate = min(v for v in (sa, sb) if v is not None)

    date_obs = str(pkeys.require("DATE-OBS", str)).strip()
    image = np.ascontiguousarray(data, dtype=np.float32)
    if not image.dtype.isnative:  # fitsio returns native order; keep the guarantee for sep
        image = image.astype(image.dtype.newbyteorder("="))
    return CcdData(
        name=ccd,
        ccdnum=keys.optional("CCDNUM", _int) or CCDNUM.get(ccd, 0),
        image=image,
        wcs=wcs,
        header=header,
        gain=mean_of("GAINA", "GAINB", "GAIN"),
        read_noise=mean_of("RDNOISEA", "RDNOISEB", "RDNOISE"),
        saturate=saturate,
        fwhm_px=keys.optional("FWHM", float),
        sky_adu=keys.optional("AVSKY", float),
        sky_sigma_adu=keys.optional("AVSIG", float),
        magzpt=keys.optional("MAGZPT", float),
        exptime=pkeys.require("EXPTIME", float),
        mjd_obs=_mjd(pkeys, date_obs),
        date_obs=date_obs,
        expnum=pkeys.require("EXPNUM", _int),
        band=_band(pkeys),
    )


def read_dq(path: str | Path, ccd: str) -> np.ndarray:
    """Read one CCD of a CP data-quality mask as uint8 codes (see :data:`CP_DQ`).

    Raises
    ------
    InputError
        Missing file or CCD, truncated data, or values outside 0..255.
    """
    path = Path(path)
    data, _, _ = _read_hdu(path, ccd)
    if data.size and (data.min() < 0 or data.max() > 255):
        raise InputError(f"{path}[{ccd}]: mask values outside 0..255 "
                         f"(min {data.min()}, max {data.max()})")
    return np.ascontiguousarray(data, dtype=np.uint8)
