"""Write simulated exposures as CP InstCal files: image (ooi) and data-quality mask (ood).

Headers follow the real CP InstCal header in reference/decam-headers (keyword names, value
formats, INHERIT = T in each CCD). Files are written one CCD at a time (append mode), so a
62-CCD full-size exposure never sits in memory at once; every HDU carries CHECKSUM/DATASUM.
RICE compression uses a dither seed derived from the data (DITHER_SEED_CHECKSUM), so the bytes
are deterministic.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from driftwatch.io.decam import CCDNUM
from driftwatch.simulate.generate import BANDS, Detector
from driftwatch.simulate.focalplane import ccd_wcs_header

__all__ = ["ExposureMeta", "cp_file_names", "primary_header", "ccd_header", "FitsWriter"]

PLVER = "V4.1"
_CHECKSUM_COMMENT = "HDU checksum"


@dataclass(frozen=True)
class ExposureMeta:
    """Primary-header facts of one simulated exposure."""

    expnum: int
    band: str
    date_obs: datetime       # shutter open, UTC
    exptime: float
    night: str               # 'YYYY-MM-DD'
    field: str
    propid: str
    ra_deg: float            # pointing written to the header (with any pointing error)
    dec_deg: float
    airmass: float
    n_ccds: int
    drift: bool

    @property
    def mjd_obs(self) -> float:
        epoch = datetime(1858, 11, 17)
        return (self.date_obs - epoch).total_seconds() / 86400.0

    @property
    def date_obs_str(self) -> str:
        return self.date_obs.strftime("%Y-%m-%dT%H:%M:%S.%f")


def cp_file_names(date_obs: datetime, band: str, compress: bool) -> tuple[str, str]:
    """CP names of the image and its mask: c4d_YYMMDD_hhmmss_{ooi,ood}_{band}_v1.fits[.fz]."""
    stamp = date_obs.strftime("%y%m%d_%H%M%S")
    ext = ".fits.fz" if compress else ".fits"
    return f"c4d_{stamp}_ooi_{band}_v1{ext}", f"c4d_{stamp}_ood_{band}_v1{ext}"


def _sexa(value: float, hours: bool) -> str:
    v = value / 15.0 if hours else value
    sign = "-" if v < 0 else ""
    v = abs(v)
    d = int(v)
    m = int((v - d) * 60)
    s = (v - d - m / 60.0) * 3600.0
    return f"{sign}{d:02d}:{m:02d}:{s:06.3f}" if hours else f"{sign}{d:02d}:{m:02d}:{s:05.2f}"


def primary_header(meta: ExposureMeta, prodtype: str) -> fits.Header:
    """The primary header of an image ('image') or mask ('dqmask') file."""
    band = BANDS[meta.band]
    img_name, _ = cp_file_names(meta.date_obs, meta.band, True)
    h = fits.Header()
    cards = [
        ("DATE", (meta.date_obs + timedelta(days=14)).strftime("%Y-%m-%dT%H:%M:%S"), "processing date"),
        ("OBJECT", meta.field, "field name"),
        ("PROCTYPE", "InstCal", "data processing type"),
        ("PRODTYPE", prodtype, "data product type"),
        ("PIXSCAL1", 0.27, "[arcsec/pixel] nominal pixel scale"),
        ("PIXSCAL2", 0.27, "[arcsec/pixel] nominal pixel scale"),
        ("OBS-LONG", 70.81489, "[deg] observatory longitude (W)"),
        ("TELESCOP", "CTIO 4.0-m telescope", ""),
        ("OBSERVAT", "CTIO", ""),
        ("OBS-LAT", -30.16606, "[deg] observatory latitude"),
        ("OBS-ELEV", 2215.0, "[m] observatory elevation"),
        ("INSTRUME", "DECam", ""),
        ("EXPREQ", meta.exptime, "[s] requested exposure time"),
        ("EXPTIME", meta.exptime, "[s] exposure time"),
        ("EXPDUR", meta.exptime, "[s] exposure duration"),
        ("DARKTIME", meta.exptime + 0.76, "[s] dark time"),
        ("OBSID", f"ct4m{meta.date_obs.strftime('%Y%m%dt%H%M%S')}", ""),
        ("DATE-OBS", meta.date_obs_str, "UTC of shutter open"),
        ("TIME-OBS", meta.date_obs.strftime("%H:%M:%S.%f"), ""),
        ("MJD-OBS", round(meta.mjd_obs, 8), "MJD of shutter open"),
        ("MJD-END", round(meta.mjd_obs + meta.exptime / 86400.0, 9), ""),
        ("OPENSHUT", meta.date_obs_str, ""),
        ("TIMESYS", "UTC", ""),
        ("EXPNUM", meta.expnum, "exposure number"),
        ("OBSTYPE", "object", ""),
        ("CAMSHUT", "Open", ""),
        ("PROGRAM", "driftwatch simulated drift-scan survey", ""),
        ("OBSERVER", "driftwatch", ""),
        ("PROPOSER", "driftwatch", ""),
        ("DTPI", "driftwatch", ""),
        ("PROPID", meta.propid, "proposal id"),
        ("FILTER", band.filter_string, "filter"),
        ("INSTANCE", f"DECam_{meta.night.replace('-', '')}", ""),
        ("TELEQUIN", 2000.0, ""),
        ("TELSTAT", "Track", ""),
        ("TELRA", _sexa(meta.ra_deg, hours=True), "telescope RA"),
        ("TELDEC", _sexa(meta.dec_deg, hours=False), "telescope Dec"),
        ("AIRMASS", round(meta.airmass, 3), ""),
        ("DTPROPID", meta.propid, ""),
        ("ODATEOBS", meta.date_obs_str, ""),
        ("DTCALDAT", meta.night, "calendar date of the night start"),
        ("DTINSTRU", "decam", ""),
        ("DTSITE", "ct", ""),
        ("DTTELESC", "ct4m", ""),
        ("DTACQNAM", f"/data_local/images/DTS/{meta.propid}/DECam_{meta.expnum:08d}.fits.fz", ""),
        ("DTNSANAM", img_name if prodtype == "image" else img_name.replace("_ooi_", "_ood_"), ""),
        ("RADESYS", "ICRS", ""),
        ("EQUINOX", 2000.0, ""),
        ("BAND", meta.band, ""),
        ("NITE", meta.night.replace("-", ""), "observing night"),
        ("NEXTEND", meta.n_ccds, "number of extensions"),
        ("PLVER", PLVER, "CP version"),
        ("RA", _sexa(meta.ra_deg, hours=True), ""),
        ("DEC", _sexa(meta.dec_deg, hours=False), ""),
        ("CENTRA", round(meta.ra_deg, 6), "[deg] field centre RA"),
        ("CENTDEC", round(meta.dec_deg, 6), "[deg] field centre Dec"),
    ]
    for key, value, comment in cards:
        h[key] = (value, comment)
    h.add_comment("Simulated by driftwatch (drift-scan exposure)" if meta.drift
                  else "Simulated by driftwatch (pointed exposure)")
    return h


def ccd_header(meta: ExposureMeta, ccd: str, shape: tuple[int, int], det: Detector,
               fwhm_px: float, sky_adu: float, sky_sigma_adu: float, magzpt: float,
               wcs_ra: float, wcs_dec: float, image: bool) -> fits.Header:
    """One CCD extension header (image: calibration keywords too; mask: identity + WCS)."""
    h = fits.Header()
    h["EXTNAME"] = (ccd, "extension name")
    h["INHERIT"] = (True, "inherit the primary header")
    h["CCDNUM"] = (CCDNUM[ccd], "CCD number")
    h["DETPOS"] = (ccd, "detector position")
    if image:
        for key, value in (("GAINA", det.gain_a), ("RDNOISEA", det.rdnoise_a),
                           ("SATURATA", det.saturate_a), ("GAINB", det.gain_b),
                           ("RDNOISEB", det.rdnoise_b), ("SATURATB", det.saturate_b),
                           ("SATURATE", det.saturate)):
            h[key] = round(float(value), 6)
    wcs = ccd_wcs_header(ccd, wcs_ra, wcs_dec, shape)
    for card in wcs.cards:
        h[card.keyword] = card.value
    if image:
        h["FWHM"] = (round(float(fwhm_px), 4), "[pixel] mean seeing FWHM")
        h["ELLIPTIC"] = (0.05, "")
        h["AVSKY"] = (round(float(sky_adu), 4), "[ADU] average sky")
        h["AVSIG"] = (round(float(sky_sigma_adu), 4), "[ADU] sky noise")
        h["MAGZPT"] = (round(float(magzpt), 4), "magnitude giving 1 ADU/s")
        h["PHOTREF"] = "simulated"
        h["WCSCAL"] = "Successful"
    return h


class FitsWriter:
    """Write one multi-extension file CCD by CCD (primary first, then :meth:`add`).

    Each extension is serialised on its own (with CHECKSUM/DATASUM) and appended as raw bytes:
    FITS HDUs are self-contained, and only one CCD is in memory at a time.
    """

    def __init__(self, path: Path, primary: fits.Header, compress: bool) -> None:
        self.path = path
        self.compress = compress
        hdu = fits.PrimaryHDU(header=primary)
        hdu.add_checksum(when=_CHECKSUM_COMMENT)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            fits.HDUList([hdu]).writeto(path, overwrite=True)

    def add(self, data: np.ndarray, header: fits.Header) -> None:
        name = header["EXTNAME"]
        hdu: fits.ImageHDU | fits.CompImageHDU
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            if self.compress and data.dtype == np.float32:
                hdu = fits.CompImageHDU(data, header=header, name=name, compression_type="RICE_1",
                                        quantize_level=4.0, quantize_method=1, dither_seed=-1)
            elif self.compress:
                hdu = fits.CompImageHDU(data, header=header, name=name, compression_type="RICE_1")
            else:
                hdu = fits.ImageHDU(data, header=header, name=name)
            buf = io.BytesIO()
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
            if self.compress:
                # checksum the on-disk BINTABLE (as fpack does), with a fixed comment: astropy's
                # default comment is the wall-clock time, which would break determinism
                buf.seek(0)
                with fits.open(buf, disable_image_compression=True) as raw_hl:
                    table = raw_hl[1]
                    table.add_checksum(when=_CHECKSUM_COMMENT)
                    out = io.BytesIO()
                    fits.HDUList([fits.PrimaryHDU(), table]).writeto(out)
                buf = out
            else:
                buf.seek(0)
                hdu.add_checksum(when=_CHECKSUM_COMMENT)
                buf = io.BytesIO()
                fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
        raw = buf.getbuffer()
        start = _first_hdu_size(raw)
        with open(self.path, "ab") as fh:
            fh.write(raw[start:])


def _first_hdu_size(raw: memoryview) -> int:
    """Bytes of a data-less primary HDU at the start of ``raw`` (its header blocks)."""
    for pos in range(0, len(raw), 80):
        if bytes(raw[pos:pos + 8]) == b"END     ":
            return (pos // 2880 + 1) * 2880
    raise ValueError("no END card")
