"""A simulated night on disk: names, headers, FITS validity, the reader, determinism, truth."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import fitsio
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from driftwatch.cli import main
from driftwatch.io.decam import CCDNUM, read_ccd, read_dq, read_exposure_info
from driftwatch.simulate.night import NightSpec, simulate_night

SPEC = NightSpec(shape=(256, 128), stars_per_ccd=40, n_drift=2, ccds=("N4", "S29"), seed=3,
                 compress=True, pointing_error_arcsec=4.0, night="2026-03-05",
                 start_expnum=900100)


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("night")
    return out, simulate_night(out, SPEC)


def test_files_and_names(night) -> None:
    out, truth = night
    ex = truth.exposures
    assert list(ex.band) == ["g", "r", "VR", "VR"]
    assert list(ex.expnum) == [900100, 900101, 900102, 900103]
    for _, row in ex.iterrows():
        stamp = row.date_obs[2:4] + row.date_obs[5:7] + row.date_obs[8:10] + "_" + \
            row.date_obs[11:13] + row.date_obs[14:16] + row.date_obs[17:19]
        assert row.file == f"c4d_{stamp}_ooi_{row.band}_v1.fits.fz"
        assert row.dq_file == row.file.replace("_ooi_", "_ood_")
        assert (out / row.file).exists() and (out / row.dq_file).exists()
    drift = ex[ex.drift]
    gaps = np.diff(drift.mjd_obs.to_numpy()) * 86400
    assert np.allclose(gaps, 45.0, atol=1.0)
    for name in ("stars", "exposures", "trails", "events", "atmosphere"):
        df = pd.read_parquet(out / "truth" / f"{name}.parquet")
        assert len(df) > 0


def test_files_valid_fits_read_by_astropy_fitsio_and_our_reader(night) -> None:
    out, truth = night
    for path in sorted(out.glob("c4d_*")):
        with fits.open(path, checksum=True) as hl:
            hl.verify("exception")
            assert [h.name for h in hl[1:]] == ["N4", "S29"]
        with fitsio.FITS(str(path)) as f:
            data = f["S29"].read()
            assert data.shape == (256, 128)
            for hdu in f:
                hdu.verify_checksum()  # raises on a mismatch; every HDU carries CHECKSUM
        info = read_exposure_info(path)
        assert info.nite == "2026-03-05" and info.ccds == ("N4", "S29")
        assert info.prodtype == ("dqmask" if "_ood_" in path.name else "image")
        assert info.obstype == "object" and info.proctype == "InstCal"
        assert info.object == SPEC.field and info.nextend == 2
    img = out / truth.exposures.file.iloc[2]
    ccd = read_ccd(img, "S29")
    assert ccd.ccdnum == CCDNUM["S29"] == 1 and ccd.band == "VR" and ccd.exptime == 20.0
    assert ccd.header["CTYPE1"] == "RA---TPV"
    assert ccd.wcs.wcs.cd[0, 1] == pytest.approx(7.286e-5) and ccd.wcs.wcs.cd[1, 0] == pytest.approx(-7.286e-5)
    assert 3.5 < ccd.gain < 4.5 and 5 < ccd.read_noise < 8 and 28000 < ccd.saturate < 58000
    assert ccd.fwhm_px == pytest.approx(truth.exposures.fwhm_px.iloc[2], rel=1e-3)
    assert ccd.magzpt == pytest.approx(26.03, abs=0.1)
    dq = read_dq(out / truth.exposures.dq_file.iloc[2], "S29")
    assert dq.dtype == np.uint8 and dq.shape == (256, 128)
    assert set(np.unique(dq)) <= {0, 1, 3, 4, 5}
    assert (dq == 1).any()


def test_pointing_error_and_true_positions(night) -> None:
    out, truth = night
    for _, row in truth.exposures.iterrows():
        err = math.hypot(row.pointing_error_ra_arcsec, row.pointing_error_dec_arcsec)
        assert err == pytest.approx(4.0 if row.drift else 0.0, abs=1e-9)
        ccd = read_ccd(out / row.file, "N4")
        trails = truth.trails[(truth.trails.expnum == row.expnum) & (truth.trails.ccd == "N4")]
        stars = truth.stars.set_index("star_id").loc[trails.star_id]
        x, y = ccd.wcs.all_world2pix(stars.ra, stars.dec, 0)
        # the header WCS is off the truth by the pointing error (0.2623"/px)
        offset = np.hypot(x - trails.x0, y - trails.y0) * 0.2623
        assert np.median(offset) == pytest.approx(err, abs=0.2)


def test_same_stars_in_every_exposure(night) -> None:
    _, truth = night
    n4 = truth.trails[truth.trails.ccd == "N4"]
    per_exp = [tuple(g.star_id) for _, g in n4.groupby("expnum")]
    assert len(per_exp) == 4 and len(set(per_exp)) == 1  # the same stars, same IDs
    on = n4[n4.on_ccd > 0.99]
    pointed = on[on.expnum == 900100].set_index("star_id")
    drift = on[on.expnum == 900102].set_index("star_id")
    both = pointed.index.intersection(drift.index)
    assert np.allclose(pointed.loc[both, "x0"], drift.loc[both, "x0"], atol=1e-6)
    stars = truth.stars
    assert np.allclose(stars.vr, stars.r + 0.15 * (stars.g - stars.r))


def test_events_are_inside_the_exposures(night) -> None:
    _, truth = night
    ev = truth.events
    assert set(ev.kind) >= {"brightening", "flash"}
    b = ev[ev.kind == "brightening"]
    assert 0 < len(b) <= 2 * 2 * 2  # up to 2 per CCD and drift exposure (eligible stars permitting)
    assert ((b.t_peak_s > 0) & (b.t_peak_s < 20)).all()
    assert ((b.amplitude >= 0.05) & (b.amplitude <= 0.5)).all()
    assert ((b.duration_s >= 0.3) & (b.duration_s <= 5)).all()
    assert not ev[ev.expnum.isin([900100, 900101])].kind.isin(["brightening", "flash", "streak"]).any()


def test_deterministic(night, tmp_path: Path) -> None:
    out, truth = night
    again = simulate_night(tmp_path, SPEC)
    for a, b in zip(truth.files, again.files):
        assert a.name == b.name
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    for name in ("stars", "exposures", "trails", "events", "atmosphere"):
        pd.testing.assert_frame_equal(getattr(truth, name), getattr(again, name))


def test_cli_summary_and_bad_usage(tmp_path: Path, capsys) -> None:
    rc = main(["simulate", str(tmp_path / "n"), "--shape", "64x48", "--stars", "5",
               "--exposures", "1", "--ccds", "S4", "--seed", "1",
               "--deliver-to", str(tmp_path / "in"), "--cadence", "0.2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "exposures: 3" in out and "6 files" in out and "CCDs: 1 (S4)" in out
    assert re.search(r"events: \d+ brightening, \d+ flash", out)
    made = sorted(p.name for p in (tmp_path / "n").glob("c4d_*"))
    assert len(made) == 6 and sorted(p.name for p in (tmp_path / "in").iterdir()) == made
    assert "delivered 6 files" in out
    assert main(["simulate", str(tmp_path / "m"), "--ccds", "S99"]) == 2
    assert "S99" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "m"), "--night", "2026-13-01"]) == 2
    with pytest.raises(SystemExit):
        main(["simulate", str(tmp_path / "m"), "--shape", "big"])
