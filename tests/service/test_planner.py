"""Planning: classification, night, field, CCD list, DQ pairing, catalogue dependency."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest
from sqlalchemy import select

from driftwatch.config import PipelineConfig
from driftwatch.io.decam import read_exposure_info
from driftwatch.service import planner
from driftwatch.store.db import Store
from driftwatch.store.models import CcdJob, Exposure
from tests.service.nightdata import make_config, write_exposure, write_night

PIPE = PipelineConfig()


def info(**kw):
    from types import SimpleNamespace

    base = dict(obstype="object", prodtype="image", band="VR", object="f1", ra_deg=1.0,
                dec_deg=2.0, nite=None, date_obs="2026-11-21T05:00:00")
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("kw, role, why", [
    ({}, "drift", None),
    ({"band": "g"}, "pointed", None),
    ({"band": "r"}, "pointed", None),
    ({"band": "z"}, "ignored", "band 'z'"),
    ({"obstype": "zero"}, "ignored", "OBSTYPE 'zero'"),
    ({"prodtype": "dqmask"}, "dqmask", None),
    ({"prodtype": "wtmap"}, "ignored", "PRODTYPE 'wtmap'"),
])
def test_classify(kw, role, why):
    c = planner.classify(info(**kw), PIPE)
    assert c.role == role
    assert (why is None) == (c.reason is None)
    if why:
        assert why in c.reason


def test_classify_follows_config():
    pipe = replace(PIPE, drift_bands=("i",), obstypes=("object", "standard"))
    assert planner.classify(info(band="i", obstype="standard"), pipe).role == "drift"
    assert planner.classify(info(band="VR"), pipe).role == "ignored"


def test_night_of():
    lon = -70.81489
    assert planner.night_of("2026-11-20", "2026-11-21T05:00:00", lon) == "2026-11-20"
    # after local midnight at CTIO: still the previous night
    assert planner.night_of(None, "2026-11-21T05:00:00", lon) == "2026-11-20"
    # evening twilight (local ~19:17)
    assert planner.night_of(None, "2026-11-20T23:59:59", lon) == "2026-11-20"
    # the next morning's last exposure (local ~07:00 UTC 11:43) still counts for the night
    assert planner.night_of(None, "2026-11-21T11:40:00", lon) == "2026-11-20"
    # east longitude: Greenwich midnight
    assert planner.night_of(None, "2026-11-21T00:30:00", 0.0) == "2026-11-20"
    with pytest.raises(Exception):
        planner.night_of(None, "yesterday", lon)


def test_validate_night():
    assert planner.validate_night("2026-11-20") == "2026-11-20"
    for bad in ("20261120", "2026-02-31", "tonight", "2026-1-2"):
        with pytest.raises(ValueError):
            planner.validate_night(bad)


def test_field_of():
    assert planner.field_of("  COSMOS  deep ", None, None) == "COSMOS deep"
    assert planner.field_of("", 150.04, -2.16) == "RA150.0-2.2"
    assert planner.field_of("", None, None) is None


def test_ccd_plan():
    pipe = replace(PIPE, ccds=("S4", "N4", "N30", "S7"), skip_ccds=("N30",))
    plans = {p.ccd: p.skip_reason for p in planner.ccd_plan(pipe, ("S4", "N4", "N30"))}
    assert plans["S4"] is None and plans["N4"] is None
    assert "skip_ccds" in plans["N30"]
    assert "not present" in plans["S7"]
    assert [p.ccd for p in planner.ccd_plan(pipe, ("S4", "N4"), only=["N4"])] == ["N4"]


def test_may_be_of_night():
    assert planner.may_be_of_night("c4d_261121_050000_ooi_VR_v1.fits.fz", "2026-11-20")
    assert planner.may_be_of_night("c4d_261120_230000_ooi_VR_v1.fits.fz", "2026-11-20")
    assert not planner.may_be_of_night("c4d_261125_050000_ooi_VR_v1.fits.fz", "2026-11-20")
    assert planner.may_be_of_night("DECam_00123456.fits.fz", "2026-11-20")


def test_scan_night_keeps_only_that_night(tmp_path):
    cfg = make_config(tmp_path)
    write_night(tmp_path / "incoming", n_exposures=2, night="2026-11-20")
    write_night(tmp_path / "incoming" / "other", n_exposures=1, night="2026-11-25",
                expnum0=2000)
    (tmp_path / "incoming" / "c4d_261121_010000_ooi_VR_v1.fits").write_bytes(b"junk")
    infos, problems = planner.scan_night(cfg, "2026-11-20")
    assert sorted(i.expnum for i in infos) == [998, 999, 1000, 1000, 1001, 1001]
    assert len(problems) == 1 and "c4d_261121_010000" in problems[0]


def test_dq_names():
    assert planner.dq_name_candidates("/d/c4d_261121_050000_ooi_VR_v1.fits.fz") == [
        "/d/c4d_261121_050000_ood_VR_v1.fits.fz"]
    assert planner.image_name_candidates("/d/x-exp_5-dqmask.fits") == ["/d/x-exp_5-image.fits"]


@pytest.fixture
def env(tmp_path):
    cfg = make_config(tmp_path)
    store = Store.from_config(cfg)
    yield cfg, store, tmp_path / "incoming"
    store.dispose()


def _plan(cfg, store, path, **kw):
    with store.session_scope() as s:
        r = planner.plan_file(s, path, read_exposure_info(path), cfg, **kw)
        return r.role, r.created, r.reset, r.job_ids


def test_plan_night_links_mask_and_catalogue(env):
    cfg, store, folder = env
    paths = write_night(folder, n_exposures=2)
    # Masks and images in arrival order, pointed g/r first.
    for p in paths:
        _plan(cfg, store, p)
    with store.session_scope() as s:
        exps = s.scalars(select(Exposure).where(Exposure.role == "drift")).all()
        assert len(exps) == 2
        assert all(e.dq_path and "_ood_" in e.dq_path for e in exps)
        cat = s.scalars(select(CcdJob).where(CcdJob.kind == "catalogue")).one()
        assert cat.field == "field1" and "g_path" in cat.inputs
        ccd_jobs = s.scalars(select(CcdJob).where(CcdJob.kind == "ccd")).all()
        assert len(ccd_jobs) == 8
        for j in ccd_jobs:
            if j.ccd == "N5":
                assert j.state == "skipped" and "skip_ccds" in j.reason
            else:
                assert j.state == "queued" and j.depends_on_id == cat.id


def test_plan_is_idempotent_and_checksum_means_new_work(env):
    cfg, store, folder = env
    p = write_exposure(folder / "c4d_261121_050000_ooi_VR_v1.fits", 7, datetime(2026, 11, 21, 5),
                       "VR")
    assert _plan(cfg, store, p)[1:3] == (4, 0)
    with store.session_scope() as s:
        for j in s.scalars(select(CcdJob).where(CcdJob.state == "queued")):
            j.state = "done"
    assert _plan(cfg, store, p)[1:3] == (0, 0)           # same checksum: nothing to do
    assert _plan(cfg, store, p, force=True)[1:3] == (0, 3)  # forced: the 3 reducible CCDs
    write_exposure(p, 7, datetime(2026, 11, 21, 5), "VR", seed=99)  # new bytes
    with store.session_scope() as s:
        for j in s.scalars(select(CcdJob).where(CcdJob.state == "queued")):
            j.state = "done"
    assert _plan(cfg, store, p)[1:3] == (0, 3)


def test_mask_arriving_after_image_and_missing_ccd(env):
    cfg, store, folder = env
    img = write_exposure(folder / "c4d_261121_050000_ooi_VR_v1.fits", 8,
                         datetime(2026, 11, 21, 5), "VR", ccds=("S4", "N4"))
    _plan(cfg, store, img)
    with store.session_scope() as s:
        exp = s.scalars(select(Exposure)).one()
        assert exp.dq_path is None
        reasons = {j.ccd: j.reason for j in exp.jobs}
        assert "not present" in reasons["S5"] and reasons["S4"] is None
        assert not any(j.depends_on_id for j in exp.jobs)  # no pointed images: fallback
    mask = write_exposure(folder / "c4d_261121_050000_ood_VR_v1.fits", 8,
                          datetime(2026, 11, 21, 5), "VR", ccds=("S4", "N4"), prodtype="dqmask")
    assert _plan(cfg, store, mask)[0] == "dqmask"
    with store.session_scope() as s:
        assert s.scalars(select(Exposure).where(Exposure.role == "drift")).one().dq_path == \
            str(mask.resolve())


def test_ignored_exposure_has_reason(env):
    cfg, store, folder = env
    p = write_exposure(folder / "bias.fits", 9, datetime(2026, 11, 21, 5), "VR", obstype="zero")
    assert _plan(cfg, store, p)[0] == "ignored"
    with store.session_scope() as s:
        exp = s.scalars(select(Exposure)).one()
        assert exp.state == "ignored" and "OBSTYPE" in exp.error and not exp.jobs
