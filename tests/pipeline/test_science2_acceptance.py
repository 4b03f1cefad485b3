"""Issue 4 acceptance on simulated full-size CCDs with truth (slow: CI runs them too).

The measurements are those of ``driftwatch/bench/_science2_accuracy.py`` (one code path), on
fewer seeds than the benchmark (which reports the figures over 8 + 20 CCDs): the thresholds
here leave room for the scatter of two seeds, and the benchmark holds the acceptance figures.
"""

from __future__ import annotations

import numpy as np
import pytest

from driftwatch.bench import _science2_accuracy as acc
from driftwatch.simulate.focalplane import FULL_SHAPE


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sci2-inj")
    return [acc._reduce_sim(tmp / f"inj{s}", s, shape=FULL_SHAPE, n_stars=2300,
                            n_brightenings=80, n_flashes=15, n_streaks=2, expnum=2000000 + s)
            for s in (101, 102)]


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sci2-null")
    return [acc._reduce_sim(tmp / f"null{s}", s, shape=FULL_SHAPE, n_stars=2300,
                            n_brightenings=0, n_flashes=0, n_streaks=1, expnum=3000000 + s)
            for s in (200, 201, 202)]


@pytest.mark.slow
def test_injected_events_are_recovered_with_their_time_fluence_and_amplitude(injected):
    inj = acc._injection(injected)
    assert inj["n_eligible"] >= 30
    assert inj["recovered_eligible"] >= 0.85
    assert inj["t_err_abs_median_s"] < 0.2
    assert inj["fluence_within_20pct"] >= 0.8
    assert inj["amplitude_within_20pct_longer_than_smear"] >= 0.75


@pytest.mark.slow
def test_flashes_streaks_and_cosmic_rays_are_classified(injected):
    cls = acc._classes(injected)
    assert cls["flashes_snr_gt_10"] >= 20
    assert cls["flash_found_as_flash"] >= 0.95
    assert cls["streak_classified"] >= 0.95
    assert cls["candidates_on_streaks"] == 0
    assert cls["candidates_on_cosmic_rays"] == 0


@pytest.mark.slow
def test_quiet_ccds_give_almost_no_candidate_and_photometry_meets_its_noise(quiet, injected):
    assert sum(len(r["cands"]["kind"]) for r in quiet) <= 1
    ph = acc._photometry(quiet + injected, np.random.default_rng(2024))
    assert ph["n_stars"] > 2000
    assert 0.9 < ph["scatter_over_expected_median"] < 1.15
    # the shared atmosphere is divided out: different stars' curves are uncorrelated
    assert ph["mean_corr_raw"] > 0.02
    assert abs(ph["mean_corr_normalised"]) < 4 * ph["corr_normalised_sem"] + 0.002


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    # CCDs no setting was chosen on, each with a case that once failed: a streak cut short
    # by a corner (122), a flash beside a streak (119), two trails' overlapping ends (221)
    # and a DQ-flagged cosmic ray on a trail's wing (224)
    tmp = tmp_path_factory.mktemp("sci2-unseen")
    inj = [acc._reduce_sim(tmp / f"inj{s}", s, shape=FULL_SHAPE, n_stars=2300,
                           n_brightenings=80, n_flashes=15, n_streaks=2, expnum=2000000 + s)
           for s in (119, 122)]
    null = [acc._reduce_sim(tmp / f"null{s}", s, shape=FULL_SHAPE, n_stars=2300,
                            n_brightenings=0, n_flashes=0, n_streaks=1, expnum=3000000 + s)
            for s in (221, 224)]
    return inj, null


@pytest.mark.slow
def test_unseen_ccds_streaks_flashes_and_no_false_flash(unseen):
    inj, null = unseen
    cls = acc._classes(inj)
    assert cls["streak_classified"] == 1.0 and cls["candidates_on_streaks"] == 0
    assert cls["flash_found_as_flash"] >= 0.85   # (seed 122 has two flashes on a streak)
    c = inj[0]["cands"]
    fx, fy = 162.45, 237.27                      # seed 119's flash 2.2 FWHM beside a streak
    assert ((np.hypot(np.asarray(c["x"]) - fx, np.asarray(c["y"]) - fy) <= 3.0) &
            (np.asarray(c["kind"], dtype=object) == "flash")).any()
    for run in null:
        assert "flash" not in set(run["cands"]["kind"])


@pytest.fixture(scope="module")
def edges(tmp_path_factory):
    # quiet CCDs where a faint neighbour's trail starts or ends inside a star's, on its line
    # (too faint for the collinear test): seed 219 beside a star 47x brighter, seed 220
    tmp = tmp_path_factory.mktemp("sci2-edges")
    return [acc._reduce_sim(tmp / f"null{s}", s, shape=FULL_SHAPE, n_stars=2300,
                            n_brightenings=0, n_flashes=0, n_streaks=1, expnum=3000000 + s)
            for s in (219, 220)]


@pytest.mark.slow
def test_a_neighbours_edge_on_the_trail_is_no_candidate(edges):
    for run in edges:
        assert len(run["cands"]["kind"]) == 0
