"""Science I in one call: bad inputs give a clear error or an empty result, never a crash."""

from __future__ import annotations

import numpy as np
import pytest

from driftwatch.errors import ScienceError
from driftwatch.science.locate import locate_trails

from ._synth import decam_like_wcs, render

SIGMA = 4.5 / 2.3548


def _run(image, dq=None, catalogue=None, wcs=None):
    ny, nx = image.shape
    return locate_trails(image, wcs or decam_like_wcs(nx, ny), exptime=20.0, fwhm_px=4.5,
                         saturate=30000.0, dq=dq, catalogue=catalogue, field_name="F",
                         drift_rate_arcsec_s=0.5)


def test_no_stars_gives_an_empty_result_that_says_so():
    img = render(400, 300, [], sigma=SIGMA, seed=1)
    loc = _run(img, dq=np.zeros(img.shape, np.uint8))
    assert loc.detections.n == 0 and loc.match.star_id.shape == (0,)
    assert loc.match.mode == "detection-only" and loc.match.notes


@pytest.mark.parametrize("kind", ["nan", "saturated", "masked"])
def test_unusable_pixels_raise_science_error(kind):
    img = render(400, 300, [(200.0, 162.0, 100.0, 5e4)], sigma=SIGMA, seed=2)
    dq = np.zeros(img.shape, np.uint8)
    if kind == "nan":
        img[:] = np.nan
    elif kind == "saturated":
        img[:] = 40000.0
    else:
        dq[:] = 2                                     # no data
    with pytest.raises(ScienceError):
        _run(img, dq=dq)


def test_missing_dq_mask_still_finds_trails_and_nan_patches_are_ignored():
    img = render(400, 300, [(200.0, 162.0, 100.0, 5e4), (250.0, 212.0, 300.0, 5e4)],
                 sigma=SIGMA, seed=3)
    img[20:40, 20:60] = np.nan
    loc = _run(img, dq=None)
    assert loc.detections.n == 2
    assert np.all(np.isfinite(loc.detections.x0))


def test_a_wcs_that_cannot_map_the_ccd_raises_science_error():
    from astropy.wcs import WCS

    from driftwatch.science.catalogue import concat_catalogues

    img = render(400, 300, [(200.0, 162.0, 100.0, 5e4)], sigma=SIGMA, seed=4)
    bad = decam_like_wcs(300, 400)
    bad.wcs.cd = [[0.0, 0.0], [0.0, 0.0]]             # singular: no sky mapping
    with pytest.raises(ScienceError):
        _run(img, wcs=bad, catalogue=concat_catalogues([], "F"))
    assert isinstance(bad, WCS)
