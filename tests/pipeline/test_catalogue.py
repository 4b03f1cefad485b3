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
