"""The catalogue job end to end on simulated files, and Science I on a drift CCD with truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from driftwatch.config import PipelineConfig
from driftwatch.io.catalogue import read_catalogue, read_catalogue_provenance
from driftwatch.io.decam import read_ccd, read_dq
from driftwatch.pipeline.catalogue import build_catalogue, dq_path_for
from driftwatch.science.catalogue import sky_to_unit
from driftwatch.science.locate import locate_trails
from driftwatch.simulate.night import NightSpec, simulate_night
from driftwatch.tasks import CatalogueTask


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("night")
    spec = NightSpec(shape=(1024, 512), ccds=("S4", "N4"), n_drift=1, stars_per_ccd=150,
                     seed=3, pointing_error_arcsec=5.0, field="SMALL")
    truth = simulate_night(out, spec)
    ex = truth.exposures
    files = {b: str(out / ex.loc[ex.band == b, "file"].iloc[0]) for b in ("g", "r", "VR")}
    return out, truth, files


def _task(files, out_path, ccds=("S4", "N4")):
    return CatalogueTask(g_path=files["g"], r_path=files["r"], out_path=str(out_path),
                         ccds=ccds, pipeline=PipelineConfig(), field="SMALL")


def test_build_catalogue_writes_a_field_catalogue_with_truthful_stars(night, tmp_path):
    _, truth, files = night
    summary = build_catalogue(_task(files, tmp_path / "SMALL.parquet"))
    assert summary.ok, summary.error
    cat = read_catalogue(summary.out_path)
    assert cat.n == summary.n_stars > 200
    assert set(cat.ccd) == {"S4", "N4"}
    prov = read_catalogue_provenance(summary.out_path)
    assert prov["field"] == "SMALL" and prov["pipeline_version"] and prov["config_hash"]
    st = truth.stars
    d, j = cKDTree(sky_to_unit(st.ra.values, st.dec.values)).query(sky_to_unit(cat.ra, cat.dec))
    sep = d * 180 / math.pi * 3600
    assert np.median(sep) < 0.1 and (sep < 0.5).mean() > 0.9
    ok = (sep < 0.5) & cat.reference
    # References: magnitudes from MAGZPT agree with the truth (aperture loss of a Moffat PSF
    # is a common offset), and their colours too.
    dm = cat.mag_r[ok] - st.r.values[j[ok]]
    mad = np.median(np.abs(dm - np.median(dm)))
    assert abs(np.median(dm)) < 0.1 and mad < 0.03 and (np.abs(dm - np.median(dm)) < 0.1).mean() > 0.95
    dgr = cat.g_r[ok] - (st.g.values - st.r.values)[j[ok]]
    assert np.median(np.abs(dgr - np.median(dgr))) < 0.03


def test_science_one_on_a_drift_ccd_with_a_pointing_error(night, tmp_path):
    out, truth, files = night
    summary = build_catalogue(_task(files, tmp_path / "SMALL.parquet"))
    cat = read_catalogue(summary.out_path)
    ccd = "S4"
    data = read_ccd(files["VR"], ccd)
    dq = read_dq(dq_path_for(files["VR"]), ccd)
    cfg = PipelineConfig()
    loc = locate_trails(data.image, data.wcs, exptime=data.exptime, fwhm_px=data.fwhm_px,
                        saturate=data.saturate, dq=dq, catalogue=cat, field_name="SMALL",
                        drift_rate_arcsec_s=cfg.drift_rate_arcsec_s, gain=data.gain)
    m, det = loc.match, loc.detections
    assert m.mode == "catalogue" and m.refined and m.n_matched > 0.8 * det.n
    # Right IDs: the catalogue star's truth ID equals the truth trail under the detection.
    st = truth.stars
    d, j = cKDTree(sky_to_unit(st.ra.values, st.dec.values)).query(sky_to_unit(cat.ra, cat.dec))
    cat_truth = dict(zip(cat.star_id, np.where(d < 1e-5, st.star_id.values[j], -1)))
    tr = truth.trails[(truth.trails.ccd == ccd) & (truth.trails.expnum == data.expnum)]
    dd, k = cKDTree(np.column_stack([tr.x0, tr.y0])).query(np.column_stack([det.x0, det.y0]))
    matched = (m.cat_index >= 0) & (dd < 3)
    got = np.array([cat_truth[s] for s in m.star_id[matched]])
    assert (got == tr.star_id.values[k[matched]]).mean() >= 0.99
    # The refined WCS puts the true star positions on their true t=0 trail ends.
    s = st.set_index("star_id").loc[tr.star_id.values[k[matched]]]
    px, py = m.wcs.all_world2pix(s.ra.values, s.dec.values, 0)
    hx, hy = data.wcs.all_world2pix(s.ra.values, s.dec.values, 0)
    tx, ty = tr.x0.values[k[matched]], tr.y0.values[k[matched]]
    assert np.median(np.hypot(hx - tx, hy - ty)) > 10          # the header is ~5" off
    assert np.median(np.hypot(px - tx, py - ty)) < 0.1
    # Without a catalogue: detection only, and the result says so.
    alone = locate_trails(data.image, data.wcs, exptime=data.exptime, fwhm_px=data.fwhm_px,
                          saturate=data.saturate, dq=None, catalogue=None, field_name="SMALL",
                          drift_rate_arcsec_s=cfg.drift_rate_arcsec_s)
    assert alone.match.mode == "detection-only" and alone.match.notes
    assert abs(alone.detections.n - det.n) <= 0.1 * det.n


def test_bad_inputs_give_a_failed_summary_not_an_exception(night, tmp_path):
    _, _, files = night
    s = build_catalogue(_task({**files, "g": str(tmp_path / "missing.fits")},
                              tmp_path / "x.parquet"))
    assert not s.ok and "missing.fits" in s.error and not s.retryable
    s = build_catalogue(_task(files, tmp_path / "x.parquet", ccds=("S4", "S5")))
    assert s.ok                                                   # S5 skipped, S4 kept
    assert "S5" in " ".join(read_catalogue_provenance(s.out_path)["skipped"])
    s = build_catalogue(_task(files, tmp_path / "y.parquet", ccds=("S5",)))
    assert not s.ok and "S5" in s.error
    assert not Path(tmp_path / "y.parquet").exists()


def test_catalogue_command(night, tmp_path):
    from driftwatch.cli import main

    _, _, files = night
    out = tmp_path / "cli.parquet"
    assert main(["catalogue", "--g", files["g"], "--r", files["r"], "--out", str(out),
                 "--ccd", "S4"]) == 0
    assert read_catalogue(out).field == "cli"
    assert main(["catalogue", "--g", "nope.fits", "--r", files["r"], "--out", str(out)]) == 1
    assert main(["catalogue", "--g", files["g"], "--r", files["r"], "--out", str(out),
                 "--ccd", "X9"]) == 2


REAL = (Path(__file__).resolve().parents[1] / "io" / "data"
        / "instcal-VR-c4d_190402_050618_ooi_VR_v1.yaml")


@pytest.mark.parametrize("compress", [False, True])
def test_science_one_on_a_file_with_the_real_instcal_header(tmp_path, compress):
    """Trails drawn through the real CP header's TPV WCS (S29, EXPTIME 120 s, MAGZPT, FWHM)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from driftwatch.science.catalogue import Catalogue, star_ids
    from driftwatch.science.geometry import drift_geometry, drift_positions
    from driftwatch.simulate.realheader import headers_from_yaml, write_real_header_file

    from ..science._synth import render

    _, hdr = headers_from_yaml(REAL)
    ny, nx = 1200, 700                    # a corner of S29, real CRPIX and distortion
    wcs = WCS(hdr, naxis=2, relax=True).celestial
    wcs.pixel_shape = (nx, ny)
    exptime = float(fits.Header(headers_from_yaml(REAL)[0])["EXPTIME"])
    fwhm = float(hdr["FWHM"])
    rng = np.random.default_rng(11)
    n = 30
    geom = drift_geometry(wcs, 0.5, exptime)
    lo = max(5.0, -geom.dx_dt * exptime + 10)
    x0 = rng.uniform(lo, nx - 10, n)
    y0 = np.linspace(20, ny - 20, n) + rng.uniform(-3, 3, n)     # unblended
    ra, dec = wcs.all_pix2world(x0, y0, 0)
    x1, y1 = drift_positions(wcs, ra, dec, exptime, 0.5)
    flux = rng.uniform(4e5, 1.5e6, n)             # S/N ~ 100-300 over 228 px
    image = render(ny, nx, list(zip(x0, x1, (y0 + y1) / 2, flux)), sigma=fwhm / 2.3548,
                   sky=float(hdr["AVSKY"]), noise=float(hdr["AVSIG"]), seed=12)
    path = write_real_header_file(REAL, tmp_path / "c4d_190402_050618_ooi_VR_v1.fits", image,
                                  compress=compress)
    data = read_ccd(path, "S29")
    assert data.magzpt and data.fwhm_px and "PV1_10" in data.header   # TPV distortion
    f32 = np.float32
    mag = (26.0 - 2.5 * np.log10(flux / exptime)).astype(f32)
    cat = Catalogue(star_id=star_ids("REAL", ra, dec), ccd=np.full(n, "S29"), ra=ra, dec=dec,
                    mag_g=mag, mag_r=mag, magerr_g=np.zeros(n, f32), magerr_r=np.zeros(n, f32),
                    g_r=np.zeros(n, f32), flux_g=flux, flux_r=flux,
                    saturated=np.zeros(n, bool), reference=np.ones(n, bool), field="REAL")
    loc = locate_trails(data.image, data.wcs, exptime=data.exptime, fwhm_px=data.fwhm_px,
                        saturate=data.saturate, dq=None, catalogue=cat, field_name="REAL",
                        drift_rate_arcsec_s=0.5, gain=data.gain)
    det, m = loc.detections, loc.match
    assert det.n == n
    assert abs(det.geometry.length_px - 228) < 3             # 60" at ~0.263"/px, from the WCS
    order = np.argsort(m.cat_index)
    assert (m.star_id[order].astype(str) == cat.star_id).all()
    assert np.median(np.hypot(det.x0[order] - x0, det.y0[order] - y0)) < 0.15
