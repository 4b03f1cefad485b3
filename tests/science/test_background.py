"""Sky background and noise maps, and the DQ mask."""

from __future__ import annotations

import numpy as np
import pytest

from driftwatch.errors import ScienceError
from driftwatch.science.background import dq_in, mask_from_dq, measure_background


def test_recovers_sky_and_noise_with_a_gradient_and_big_endian_input():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:256]
    sky = 500.0 + 0.05 * yy
    img = (sky + rng.normal(0, 10.0, sky.shape)).astype(">f4")    # FITS byte order
    bg = measure_background(img, box=64, step=2)
    assert abs(np.median(bg.full_back() - sky)) < 0.3
    assert np.all(np.abs(bg.back_at(np.array([128.0]), np.array([400.0])) - 520.0) < 1.0)
    assert abs(bg.global_rms - 10.0) < 0.4
    data = img.astype(np.float32)
    bg.apply(data, "back", "sub")
    assert abs(float(np.median(data))) < 0.3


def test_masked_pixels_are_ignored():
    rng = np.random.default_rng(1)
    img = rng.normal(100.0, 5.0, (256, 256)).astype(np.float32)
    img[:, 100:110] = 60000.0                                        # a bleed
    mask = np.zeros(img.shape, bool)
    mask[:, 100:110] = True
    bg = measure_background(img, mask, box=32, step=1)
    assert np.all(np.abs(bg.back - 100.0) < 2.0)


@pytest.mark.parametrize("fill", [np.nan, 0.0])
def test_unusable_images_raise_science_error(fill):
    img = np.full((128, 128), fill, dtype=np.float32)
    with pytest.raises(ScienceError):
        measure_background(img, box=32)


def test_all_masked_raises_science_error():
    img = np.ones((128, 128), np.float32)
    with pytest.raises(ScienceError):
        measure_background(img, np.ones(img.shape, bool), box=32)


def test_mask_from_dq_codes_saturation_and_nan():
    img = np.full((3, 4), 10.0, np.float32)
    img[0, 0] = np.nan
    img[0, 1] = 5e4
    dq = np.array([[0, 0, 1, 2], [3, 4, 5, 6], [7, 8, 0, 0]], np.uint8)
    m = mask_from_dq(dq, img, saturate=4e4)
    expect = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(m, expect)
    np.testing.assert_array_equal(mask_from_dq(None, img, None), np.isnan(img))
    with pytest.raises(ScienceError):
        mask_from_dq(dq[:2], img, None)
    # infinities are masked whichever their sign, with or without a saturation level
    img[2, 3], img[2, 2] = -np.inf, np.inf
    for sat in (4e4, None):
        m = mask_from_dq(dq, img, saturate=sat)
        assert m[2, 3] and m[2, 2]


def test_dq_in_matches_a_look_up_table():
    dq = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for codes in [(1, 2, 3, 4, 5), (3, 4), (0,), (0, 1), (8,), (2, 5, 7), (), (255, 254)]:
        lut = np.zeros(256, bool)
        lut[list(codes)] = True
        np.testing.assert_array_equal(dq_in(dq, codes), lut[dq], err_msg=str(codes))


@pytest.mark.parametrize("ny", [640, 650])  # a whole number of mesh steps, and not
def test_subtract_divide_rows_matches_the_full_maps(ny):
    rng = np.random.default_rng(3)
    img = (700.0 + 0.05 * np.arange(300)[None, :] + rng.normal(0, 14, (ny, 300))).astype(
        np.float32)
    bg = measure_background(img, box=64, step=16)
    x = np.linspace(3.5, 290.5, 120)
    data = rng.normal(0, 1000, (ny, x.size)).astype(np.float32)
    ks = np.full(ny, 7.0, np.float32)
    ks[:4] = [3.0, 4.0, 5.0, 6.0]                     # a truncated filter at the edges
    rs = np.full(ny, 2.5, np.float32)
    rs[-3:] = [1.5, 1.8, 2.1]
    back, rms = bg.rows_at_columns("back", x), bg.rows_at_columns("rms", x)
    first = (np.arange(ny) // 16) * 16                  # the maps at each block's first row
    want = (data - back[first] * ks[:, None]) / (rms[first] * rs[:, None])
    got = data.copy()
    bg.subtract_divide_rows(got, x, ks, rs, block=16)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-4)
    # and within a block the maps change by a small part of their variation
    assert np.max(np.abs(back - back[first])) < 0.3 * np.ptp(back) + 1e-6


def test_constant_image_is_refused() -> None:
    """Constant good pixels (masked and NaN ones different) have no sky noise; one good
    pixel off the coarse sample that differs is enough noise to go on."""
    img = np.full((256, 256), 700.0, np.float32)
    mask = np.zeros(img.shape, bool)
    img[10, 10], mask[10, 10] = 5000.0, True
    img[20, 20] = np.nan
    with pytest.raises(ScienceError, match="constant"):
        measure_background(img, mask)
    img[102, 104] = 701.0  # sampled (step 2), off the coarse sample
    measure_background(img, mask)


@pytest.mark.parametrize("sat", [4e4, np.inf, np.nan, None])
@pytest.mark.parametrize("with_nan", [False, True])
def test_mask_from_dq_saturated_is_the_comparison(sat, with_nan) -> None:
    """The ``saturated`` output is ``image >= saturate`` with or without NaN pixels."""
    rng = np.random.default_rng(5)
    img = rng.normal(3e4, 1e4, (60, 50)).astype(np.float32)
    img[3, 4], img[5, 6] = np.inf, -np.inf
    if with_nan:
        img[7, 8] = np.nan
    out = np.empty(img.shape, bool)
    m = mask_from_dq(None, img, sat, saturated=out)
    want = np.zeros(img.shape, bool) if sat is None else img >= sat
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(m, mask_from_dq(None, img, sat))
