"""Write a FITS file under a real DECam header dump (reference/decam-headers/*.yaml).

The dumps hold one primary header followed (from ``XTENSION`` on) by one CCD extension header,
as a YAML mapping keyword -> value (COMMENT/HISTORY as lists). Files made here let tests check
that the reading layer handles real CP headers (TPV WCS, INHERIT, long FILTER strings), not only
the ones the simulator writes.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

__all__ = ["headers_from_yaml", "write_real_header_file"]

# Structure and compression keywords of the dumped (compressed) file: astropy writes its own.
_DROP = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|TFIELDS|T(TYPE|FORM)\d+"
    r"|Z(IMAGE|TILE\d+|CMPTYPE|NAME\d+|VAL\d+|TENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|QUANTIZ"
    r"|DITHER0)|CHECKSUM|DATASUM)$"
)


def _fill(header: fits.Header, items: list[tuple[str, Any]]) -> None:
    for key, value in items:
        if not key or _DROP.match(key):
            continue
        if key in ("COMMENT", "HISTORY"):
            for line in value if isinstance(value, list) else [value]:
                (header.add_comment if key == "COMMENT" else header.add_history)(str(line))
            continue
        if isinstance(value, float) and not np.isfinite(value):
            value = str(value)  # FITS has no NaN literal; the CP writes 'NaN' for missing values
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)  # >8-char keys become HIERARCH
            header[key] = value


def headers_from_yaml(path: str | Path) -> tuple[fits.Header, fits.Header]:
    """Return (primary, CCD extension) headers parsed from a header dump, structure keys dropped."""
    data = yaml.safe_load(Path(path).read_text())
    items = [(str(k) if k is not None else "", v) for k, v in data.items()]
    split = next((i for i, (k, _) in enumerate(items) if k == "XTENSION"), len(items))
    primary, ccd = fits.Header(), fits.Header()
    _fill(primary, items[:split])
    _fill(ccd, items[split:])
    return primary, ccd


def write_real_header_file(yaml_path: str | Path, out: str | Path, image: np.ndarray,
                           compress: bool = False) -> Path:
    """Write ``image`` as the single CCD of a file carrying a real header dump's headers.

    ``image`` (float32, shape (ny, nx)) may be smaller than the real 4094 x 2046 CCD; the WCS
    keeps the real CRPIX, so pixel (x, y) maps to the sky as in the real exposure.
    """
    primary, ccd = headers_from_yaml(yaml_path)
    primary["NEXTEND"] = 1
    name = str(ccd.get("EXTNAME", "S29"))
    data = np.asarray(image, dtype=np.float32)
    hdu: fits.ImageHDU | fits.CompImageHDU
    if compress:
        hdu = fits.CompImageHDU(data, header=ccd, name=name, compression_type="RICE_1",
                                quantize_level=4.0)
    else:
        hdu = fits.ImageHDU(data, header=ccd, name=name)
    out = Path(out)
    fits.HDUList([fits.PrimaryHDU(header=primary), hdu]).writeto(out, overwrite=True,
                                                                 output_verify="fix")
    return out
