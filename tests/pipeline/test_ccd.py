"""reduce_ccd on simulated CCDs: products, an injected event found, bad input never raises."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftwatch.bench.science2 import _task, write_exposure
from driftwatch.io.catalogue import write_catalogue
from driftwatch.pipeline.ccd import reduce_ccd
from driftwatch.science.catalogue import Catalogue
from driftwatch.science.geometry import drift_positions
from driftwatch.simulate.generate import quick_scene
from driftwatch.simulate.render import render_ccd
from driftwatch.simulate.scene import Brightening

STAGES = {"read", "background", "detect", "match", "classify", "sky", "extract", "normalise",
          "events", "write"}


@pytest.fixture(scope="module")
def event_exposure(tmp_path_factory):
    """A 700 x 500 CCD with one strong brightening on a bright, isolated star."""
    folder = tmp_path_factory.mktemp("sim")
    scene, stars = quick_scene(shape=(700, 500), n_stars=200, seed=21)
    x0, y0 = drift_positions(scene.wcs, scene.ra, scene.dec, 0.0, scene.drift_rate_arcsec_s)
    x1, _ = drift_positions(scene.wcs, scene.ra, scene.dec, scene.exptime,
                            scene.drift_rate_arcsec_s)
    inside = (np.minimum(x0, x1) > 30) & (np.maximum(x0, x1) < 470) & (y0 > 30) & (y0 < 670)
    d = np.where(np.abs(y0[:, None] - y0[None, :]) < 15, np.abs(x0[:, None] - x0[None, :]),
                 np.inf)
    np.fill_diagonal(d, np.inf)
    ok = inside & (d.min(axis=1) > 60) & (scene.flux_adu_s > 300) & (scene.flux_adu_s < 3000)
    i = int(np.flatnonzero(ok)[0])
    ev = Brightening(star_id=int(scene.star_id[i]), t_peak_s=9.0, duration_s=2.5, amplitude=0.5)
    scene = dataclasses.replace(scene, brightenings=(ev,))
    render = render_ccd(scene)
    img, dq = write_exposure(folder, scene, render, expnum=4242)
    # the reference catalogue the pointed exposures would give: the simulator's stars
    n = len(stars.star_id)
    nan = np.full(n, np.nan, np.float32)
    cat = Catalogue(star_id=np.array([f"F-{i:05d}" for i in stars.star_id]),
                    ccd=np.full(n, scene.ccd), ra=stars.ra, dec=stars.dec,
                    mag_g=stars.g.astype(np.float32), mag_r=stars.r.astype(np.float32),
                    magerr_g=nan, magerr_r=nan, g_r=(stars.g - stars.r).astype(np.float32),
                    flux_g=np.zeros(n), flux_r=10 ** (-0.4 * (stars.r - 26.0)),
                    saturated=np.zeros(n, bool), reference=np.ones(n, bool), field="F")
    catalogue = write_catalogue(cat, folder / "field.parquet")
    return scene, render, img, dq, (float(x0[i]), float(y0[i])), catalogue, int(scene.star_id[i])


def test_reduce_writes_products_and_finds_the_event(event_exposure, tmp_path):
    scene, render, img, dq, (ex, ey), catalogue, sid = event_exposure
    task = dataclasses.replace(_task(img, dq, tmp_path, scene.ccd, 4242, alerts=True),
                               catalogue_path=str(catalogue))
    s = reduce_ccd(task)
    assert s.ok, s.error
    assert STAGES <= set(s.timings)
    assert s.n_trails > 50 and s.product_dir == str(tmp_path / scene.ccd)
    folder = Path(s.product_dir)
    for name in ("trails", "lightcurves", "candidates", "sources"):
        assert not pd.read_parquet(folder / f"{name}.parquet").empty
    lc = pd.read_parquet(folder / "lightcurves.parquet")
    assert {"t_s", "mjd", "flux", "flux_err", "norm_flux", "norm_flux_err", "flags"} <= set(lc)
    assert np.isfinite(lc.loc[lc.good, ["norm_flux", "norm_flux_err"]].to_numpy()).all()
    hits = [c for c in s.candidates if c.kind == "brightening"
            and abs(c.t_peak_s - 9.0) < 0.5 and abs(c.y - ey) < 3]
    assert len(hits) == 1
    assert hits[0].star_id == f"F-{sid:05d}"          # the catalogue ID of the star
    assert s.n_matched > 0.8 * s.n_trails
    trails = pd.read_parquet(folder / "trails.parquet")
    assert (trails.star_id != "").sum() == s.n_matched
    assert hits[0].stamp_path and Path(hits[0].stamp_path).is_file()
    assert all(Path(c.stamp_path).is_file() for c in s.candidates)


def test_bad_inputs_give_an_error_and_no_product(event_exposure, tmp_path):
    scene, render, img, dq = event_exposure[:4]
    cut = tmp_path / "cut.fits"
    cut.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    cases = {
        "missing": _task(tmp_path / "nope.fits", None, tmp_path / "o1", scene.ccd, 1),
        "truncated": _task(cut, None, tmp_path / "o2", scene.ccd, 1),
        "wrong ccd": _task(img, dq, tmp_path / "o3", "S4", 1),
        "garbage": _task(dq.with_name("x.fits"), None, tmp_path / "o4", scene.ccd, 1),
    }
    dq.with_name("x.fits").write_bytes(b"SIMPLE  = not a fits file" * 200)
    for name, task in cases.items():
        s = reduce_ccd(task)
        assert not s.ok and s.error and task.image_path in s.error, name
        assert not s.retryable, name
        assert not Path(task.out_dir, task.ccd).exists(), name


def test_no_dq_mask_is_noted(event_exposure, tmp_path):
    scene, render, img, dq = event_exposure[:4]
    s = reduce_ccd(_task(img, None, tmp_path, scene.ccd, 4242))
    assert s.ok and "no DQ mask" in s.notes


@pytest.mark.slow
def test_full_size_ccd(tmp_path):
    from driftwatch.bench.science2 import simulated_ccd
    from driftwatch.simulate.focalplane import FULL_SHAPE

    scene, render, img, dq = simulated_ccd(tmp_path, seed=5, shape=FULL_SHAPE, n_stars=2300,
                                           n_streaks=1)
    s = reduce_ccd(_task(img, dq, tmp_path / "out", scene.ccd, 1000001))
    assert s.ok, s.error
    assert s.n_trails > 700
    assert len(s.candidates) <= 3   # no events injected: at most a stray one


def test_a_reduction_leaves_none_of_its_arrays_behind(event_exposure, tmp_path, monkeypatch):
    # Libraries raise and catch exceptions that stay in reference cycles (exception ->
    # traceback -> frame -> exception), and a frame reaches the reduction's frame, with its
    # full-size arrays, through f_back: reduce_ccd must free them before it returns, or the
    # worker's next CCD peaks that much higher. A stage that leaves such a cycle stands in.
    import gc

    import driftwatch.science.sky as sky

    real = sky.local_sky

    def cyclic_local_sky(*args, **kwargs):
        try:
            raise ValueError("caught and kept, as astropy's date parsing does")
        except ValueError as exc:
            kept = exc  # noqa: F841 - the cycle: this frame -> kept -> traceback -> frame
        return real(*args, **kwargs)

    monkeypatch.setattr(sky, "local_sky", cyclic_local_sky)
    scene, _, img, dq, _, _, _ = event_exposure
    gc.collect()
    gc.disable()  # no automatic collection may do reduce_ccd's work for it
    try:
        s = reduce_ccd(_task(img, dq, tmp_path / "p", scene.ccd, 4242))
        alive = [o for o in gc.get_objects() if type(o).__name__ == "frame" and
                 o.f_code.co_name == "_reduce" and o.f_code.co_filename.endswith("ccd.py")]
    finally:
        gc.enable()
    assert s.ok
    assert alive == []
