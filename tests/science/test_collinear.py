"""Collinear neighbours: where their light lies beyond a trail's end, and what stays clean."""

from __future__ import annotations

import numpy as np

from driftwatch.science.events import clear_of_neighbours
from driftwatch.science.photometry import LineProfile, end_excess
from tests.science._science2_synth import geometry, render

SIGMA = 1.9
FWHM = 2.3548 * SIGMA


def _end_light(offset_px: float, ratio: float, seed: int = 3):
    """A star with a neighbour ``offset_px`` further along its drift on the same line."""
    geom = geometry(speed=1.9, exptime=20.0, sign=-1.0)   # L = 38 px, drifting toward -x
    x0 = np.array([120.0, 120.0 - offset_px])
    y0 = np.array([30.0, 30.0])
    rate = np.array([4000.0, 4000.0 * ratio])
    img = render((60, 200), x0, y0, geom, rate, SIGMA, rng=np.random.default_rng(seed))
    base = rate[0] / geom.speed_px_s   # ADU per px of drift
    el = end_excess(img, x0[:1], y0[:1], geom, profile=LineProfile.gaussian_like(FWHM),
                    sky=100.0, gain=4.0, read_noise=7.0, baseline=np.array([base]),
                    per_end=True)
    return geom, el


def geom_length() -> float:
    return geometry(speed=1.9, exptime=20.0).length_px


def test_overlapping_neighbour_reaches_its_offset_beyond_the_end():
    geom, el = _end_light(offset_px=15.0, ratio=0.2)
    assert el.z[0, 1] > 10 and el.z[0, 0] < 6          # the far end (t = T), not the start
    assert el.start_px[0, 1] == 0                       # its light starts at the end
    assert abs(el.reach_px[0, 1] - 15.0) <= 2.5         # and stops where its trail does
    assert abs(el.level[0, 1] - 0.2) < 0.06


def test_reach_of_an_overlapping_neighbour_beyond_the_first_window_is_measured():
    # the window beyond each end is 0.7 FWHM + L / 2 (~23 px here); a neighbour overlapping
    # by less than half the trail runs past it, and a second window tells where it stops
    geom, el = _end_light(offset_px=29.0, ratio=0.2)
    assert el.start_px[0, 1] == 0
    assert abs(el.reach_px[0, 1] - 29.0) <= 2.5


def test_neighbour_following_without_overlap_starts_beyond_the_end():
    geom, el = _end_light(offset_px=geom_length() + 9.0, ratio=0.3)
    assert el.z[0, 1] > 10
    assert abs(el.start_px[0, 1] - 9.0) <= 2.5          # D - L: no overlap
    # so the whole trail but its last pixels is clean
    s = np.arange(39, dtype=float)[None, :]
    clear = clear_of_neighbours(s, geom.length_px, el.z, el.start_px, el.reach_px, el.level,
                                threshold=6.0, margin_px=FWHM)
    assert clear[0, : 40 - int(np.ceil(FWHM))].all()


def test_clean_part_is_the_far_side_of_an_overlapping_neighbour():
    s = np.tile(np.arange(40, dtype=float), (4, 1))
    L = 39.0
    z = np.array([[0.0, 20.0], [20.0, 0.0], [20.0, 0.0], [3.0, 4.0]])
    start = np.array([[0.0, 0.0], [0.0, 0.0], [8.0, 0.0], [0.0, 0.0]])
    reach = np.array([[0.0, 25.0], [25.0, 0.0], [24.0, 0.0], [10.0, 10.0]])
    level = np.full((4, 2), 0.1)
    clear = clear_of_neighbours(s, L, z, start, reach, level, threshold=6.0, margin_px=4.0)
    # beyond the far end by 25 px: it lies on [25, 64]; clean below 25 - 4
    assert clear[0, :21].all() and not clear[0, 21:].any()
    # beyond the start by 25: on [-25, 14]; clean above 14 + 4
    assert not clear[1, :19].any() and clear[1, 19:].all()
    # starting 8 px beyond the start: on [-47, -8], only its wing is near the trail
    assert clear[2].all()
    # below the threshold nothing is cut
    assert clear[3].all()


def test_light_as_bright_as_the_star_beyond_an_end_leaves_nothing_clean():
    # a "trail" that is a piece of a brighter trail (detection cut it off) is no star
    s = np.tile(np.arange(40, dtype=float), (2, 1))
    z = np.array([[0.0, 50.0], [0.0, 50.0]])
    start = np.array([[0.0, 12.0], [0.0, 12.0]])
    reach = np.array([[0.0, 24.0], [0.0, 24.0]])
    level = np.array([[0.0, 1.0], [0.0, 0.2]])
    clear = clear_of_neighbours(s, 39.0, z, start, reach, level, threshold=6.0, margin_px=4.0,
                                max_level=0.5)
    assert not clear[0].any()
    assert clear[1].all()


def test_samples_beside_a_streak_crossing_are_not_clear():
    from driftwatch.science.events import clear_of_flagged

    flagged = np.zeros((3, 30), bool)
    flagged[0, 3:6] = True          # a streak crossing near the start
    flagged[1, [10, 25]] = True     # two crossings
    clear = clear_of_flagged(flagged, 4)
    assert not clear[0, :10].any() and clear[0, 10:].all()
    assert clear[1, :6].all() and not clear[1, 6:15].any() and clear[1, 15:21].all()
    assert not clear[1, 21:].any()
    assert clear[2].all()
