"""Write small CP-like DECam files (image + DQ mask per exposure, pointed g/r) and configs."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.time import Time

from driftwatch.config import Config, config_from_dict

CCDS = ("S4", "S5", "N4", "N5")


def write_exposure(path: Path, expnum: int, date_obs: datetime, band: str, *,
                   ccds=CCDS, prodtype: str = "image", obstype: str = "object",
                   obj: str = "field1", shape=(32, 48), seed: int = 0,
                   nite: str | None = None) -> Path:
    """Write one small multi-extension file with the primary keywords the planner reads."""
    rng = np.random.default_rng(seed + expnum)
    hdr = fits.Header()
    iso = date_obs.strftime("%Y-%m-%dT%H:%M:%S.%f")
    hdr.update({"EXPNUM": expnum, "DATE-OBS": iso, "MJD-OBS": Time(iso).mjd, "EXPTIME": 20.0,
                "FILTER": f"{band} DECam c0007 6300.0 2600.0", "OBSTYPE": obstype,
                "OBJECT": obj, "PROPID": "2026B-0001", "PRODTYPE": prodtype,
                "PROCTYPE": "InstCal", "CENTRA": 150.0, "CENTDEC": -30.0,
                "NEXTEND": len(ccds)})
    if nite:
        hdr["NITE"] = nite
    hdus = [fits.PrimaryHDU(header=hdr)]
    for ccd in ccds:
        if prodtype == "dqmask":
            data = np.zeros(shape, np.int16)
            data[0, :] = 1
        else:
            data = rng.normal(1000, 10, shape).astype(np.float32)
            data[rng.integers(0, shape[0], 5), rng.integers(0, shape[1], 5)] += 500
        hdus.append(fits.ImageHDU(data, name=ccd))
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def write_night(folder: Path, n_exposures: int = 5, *, night: str = "2026-11-20",
                pointed: bool = True, masks: bool = True, ccds=CCDS, expnum0: int = 1000,
                shape=(32, 48)) -> list[Path]:
    """Write a night: pointed g and r of 'field1', then n drift VR exposures with masks.

    DATE-OBS falls after local midnight at CTIO (UTC 05:00+), so the night is the day before.
    """
    start = datetime.fromisoformat(night) + timedelta(days=1, hours=5)
    paths = []
    if pointed:
        for i, band in enumerate(("g", "r")):
            t = start - timedelta(minutes=10 - i)
            paths.append(write_exposure(
                folder / f"c4d_{t:%y%m%d_%H%M%S}_ooi_{band}_v1.fits", expnum0 - 2 + i, t, band,
                ccds=ccds, shape=shape))
    for k in range(n_exposures):
        t = start + timedelta(seconds=45 * k)
        name = f"c4d_{t:%y%m%d_%H%M%S}_%s_VR_v1.fits"
        paths.append(write_exposure(folder / (name % "ooi"), expnum0 + k, t, "VR", ccds=ccds,
                                    shape=shape))
        if masks:
            paths.append(write_exposure(folder / (name % "ood"), expnum0 + k, t, "VR",
                                        ccds=ccds, prodtype="dqmask", shape=shape))
    return paths


def config_text(root: Path, *, ccds=CCDS, skip=("N5",), count: int = 2,
                backend: str = "local", max_attempts: int = 3) -> str:
    ccd_list = ", ".join(ccds)
    skip_list = ", ".join(skip)
    return f"""\
paths:
  watch: [{root / 'incoming'}]
  products: {root / 'products'}
  state: {root / 'state'}
pipeline:
  ccds: [{ccd_list}]
  skip_ccds: [{skip_list}]
workers:
  backend: {backend}
  count: {count}
  max_attempts: {max_attempts}
  retry_backoff_s: 0
  grace_period_s: 5
alerts:
  enabled: true
"""


def make_config(root: Path, **kw) -> Config:
    """Write driftwatch.yaml under ``root`` and return it validated."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    path = root / "driftwatch.yaml"
    path.write_text(config_text(root, **kw))
    return config_from_dict(yaml.safe_load(path.read_text()), base=root, source=path, environ={})
