"""Issue 3 acceptance on simulated full-size CCDs with truth (slow: CI runs them too).

The measurements are those of ``driftwatch/bench/science1.py`` (one code path): completeness,
false detections, IDs, the same ID across exposures, the 5" pointing error and the refined WCS.
"""

from __future__ import annotations

import pytest

from driftwatch.bench import science1


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_detection_and_matching_meet_the_acceptance_figures(seed, tmp_path):
    res = science1._one_seed(seed, repeats=1, workdir=tmp_path)
    assert res["catalogue_stars"] > 800
    for e in res["exposures"]:
        assert e["n_completeness_sample"] > 400
        assert e["completeness_snr10"] >= 0.99
        assert e["false_fraction"] <= 0.005
        assert e["right_id_fraction"] >= 0.995
        assert e["pointing_error_true_arcsec"] > 3.0           # the header really is off
        assert e["header_wcs_error_px_median"] > 10.0
        assert e["refined_wcs_error_px_median"] <= 0.1
    same = res["same_id_both_exposures"]
    assert same["stars"] > 500 and same["same"] >= 0.995 * same["stars"]


@pytest.mark.slow
def test_pure_noise_ccd_gives_at_most_two_detections():
    res = science1._pure_noise(seed=2)
    assert res["detections"] <= 2
    assert 0.95 < res["noise_scale"] < 1.15
