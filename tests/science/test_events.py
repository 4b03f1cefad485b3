"""Matched-filter event search: recovery, fluence, spikes, false alarms, reference check."""

from __future__ import annotations

import numpy as np

from driftwatch.science.events import (
    _templates, difference_scatter, duration_grid, event_shape, search_events, smeared_shape,
    SHAPE_AMPLITUDES,
)

SPP = 0.526
SMEAR = 1.9 * SPP


def _noise(seed: int, n: int = 800, m: int = 39, sigma: float = 0.01):
    rng = np.random.default_rng(seed)
    t = np.arange(m) * SPP + np.zeros((n, 1))
    flux = 1 + rng.normal(0, sigma, (n, m))
    return flux, np.full((n, m), sigma), np.ones((n, m), bool), t


def _inject(t: np.ndarray, t0: float, dur: float, amp: float) -> tuple[np.ndarray, float]:
    """Smeared point-lens excess at times t, and its fluence over the exposure."""
    fine = np.linspace(-20, 40, 60001)
    e = (event_shape(fine - t0, dur, amp) * amp)
    k = np.exp(-0.5 * (np.arange(-800, 801) * 0.001 / SMEAR) ** 2)
    c = np.convolve(e, k / k.sum(), "same")
    inside = (fine >= 0) & (fine <= t.shape[-1] * SPP)
    return np.interp(t, fine, c), float(np.trapezoid(e[inside], fine[inside]))


def test_injected_events_are_recovered_with_time_and_fluence():
    flux, err, good, t = _noise(1)
    truth = {5: (7.0, 1.0, 0.08), 9: (12.0, 3.0, -0.05), 11: (4.0, 4.0, 0.4)}
    fluence = {}
    for i, (t0, dur, amp) in truth.items():
        bump, fl = _inject(t[i], t0, dur, abs(amp))
        flux[i] += np.sign(amp) * bump
        fluence[i] = np.sign(amp) * fl
    ev = search_events(flux, err, good, t, seconds_per_px=SPP, smear_sigma_s=SMEAR,
                       durations=duration_grid(0.3, 5.0), threshold=6.0)
    assert sorted(ev.star.tolist()) == sorted(truth)
    for k, i in enumerate(ev.star):
        t0, dur, amp = truth[int(i)]
        assert abs(ev.t_peak_s[k] - t0) < 0.5
        assert ev.kind[k] == ("brightening" if amp > 0 else "dip")
        assert abs(ev.fluence[k] / fluence[int(i)] - 1) < 0.25
    big = int(np.flatnonzero(ev.star == 11)[0])
    assert abs(ev.amplitude[big] / 0.4 - 1) < 0.2  # longer than the smear: amplitude too


def test_pure_noise_gives_no_candidate_and_calibration_near_one():
    flux, err, good, t = _noise(2, n=2000)
    ev = search_events(flux, err, good, t, seconds_per_px=SPP, smear_sigma_s=SMEAR,
                       durations=duration_grid(0.3, 5.0), threshold=6.0)
    assert len(ev) == 0
    assert np.all(ev.calibration < 1.1)


def test_correlated_noise_is_calibrated_away():
    flux, err, good, t = _noise(3, n=1500)
    rng = np.random.default_rng(3)
    # red noise the errors do not describe: smooth wiggles of 1.5 sigma
    red = np.cumsum(rng.normal(0, 0.004, flux.shape), axis=1)
    red -= red.mean(axis=1, keepdims=True)
    ev = search_events(flux + red, err, good, t, seconds_per_px=SPP, smear_sigma_s=SMEAR,
                       durations=duration_grid(0.3, 5.0), threshold=6.0)
    assert ev.calibration.max() > 1.3          # the long templates see the red noise
    assert len(ev) <= 2                        # and the threshold holds after calibration


def test_cosmic_ray_spike_is_not_an_event():
    flux, err, good, t = _noise(4)
    flux[7, 20] += 0.5
    ev = search_events(flux, err, good, t, seconds_per_px=SPP, smear_sigma_s=SMEAR,
                       durations=duration_grid(0.3, 5.0), threshold=6.0)
    assert 7 not in ev.star


def test_light_beside_the_trail_is_rejected_or_a_flash():
    flux, err, good, t = _noise(5)
    long_bump, _ = _inject(t[3], 8.0, 3.0, 0.3)
    short_bump, _ = _inject(t[4], 8.0, 0.3, 3.0)
    flux[3] += long_bump
    flux[4] += short_bump
    shift = np.zeros_like(flux)
    shift[3] = -3.0 * long_bump     # the excess light sits 3 px off the centre line
    shift[4] = -2.0 * short_bump
    shift_err = np.full_like(flux, 0.01)
    ev = search_events(flux, err, good, t, seconds_per_px=SPP, smear_sigma_s=SMEAR,
                       durations=duration_grid(0.3, 5.0), threshold=6.0, shift=shift,
                       shift_err=shift_err)
    assert 3 not in ev.star                       # a neighbour's light
    k = int(np.flatnonzero(ev.star == 4)[0])
    assert ev.kind[k] == "flash" and abs(ev.offset_px[k] - 2.0) < 0.3


def test_difference_scatter_ignores_smooth_events():
    flux, err, good, t = _noise(6, n=50)
    bump, _ = _inject(t[0], 10.0, 5.0, 0.2)
    flux[0] += bump
    chi = difference_scatter(flux, err, good)
    curve = 1.4826 * np.median(np.abs(flux[0] - np.median(flux[0]))) / err[0, 0]
    assert curve > 2.5 and chi[0] < 0.6 * curve


def test_matched_filter_matches_a_slow_reference():
    flux, err, good, t = _noise(7, n=5)
    flux[2] += _inject(t[2], 9.0, 2.0, 0.2)[0]
    good[1, 10:14] = False
    durs = duration_grid(0.3, 5.0)
    T, sd, sa = _templates(t.shape[1], SPP, durs, SHAPE_AMPLITUDES, SMEAR, None)
    ev = search_events(flux, err, good, t, seconds_per_px=SPP, smear_sigma_s=SMEAR,
                       durations=durs, threshold=0.0, min_calibration_points=10**9,
                       chi=np.ones(5), systematic_floor=0.0)
    # reference: explicit weighted least squares of (constant + a * template) for each star
    for k, i in enumerate(ev.star):
        best = -np.inf
        for s in range(T.shape[0]):
            for c in range(T.shape[1]):
                m = good[i]
                A = np.c_[np.ones(m.sum()), T[s, c][m]]
                W = 1 / err[i][m] ** 2
                cov = np.linalg.inv(A.T @ (A * W[:, None]))
                coef = cov @ (A.T @ (W * (flux[i][m] - 1)))
                if T[s, c][m] @ T[s, c][m] / (T[s, c] @ T[s, c]) < 0.6:
                    continue
                z = coef[1] / np.sqrt(cov[1, 1])
                sign = 1 if ev.kind[k] == "brightening" else -1
                best = max(best, sign * z)
        assert abs(best - ev.significance[k]) < 1e-6 * max(1, abs(best))


def test_smeared_shape_conserves_fluence():
    lags = np.linspace(-15, 15, 3001)
    for dur in (0.3, 2.0):
        shape = smeared_shape(lags, dur, SMEAR, 0.1)
        raw = event_shape(lags, dur, 0.1)
        assert abs(np.trapezoid(shape, lags) / np.trapezoid(raw, lags) - 1) < 0.02


def test_impact_parameter_inverts_the_point_lens_magnification():
    from driftwatch.science.events import _magnification, _separation

    for amp in (1e-3, 0.05, 0.3, 1.0, 10.0):
        u = _separation(1.0 + amp)
        assert abs(float(_magnification(np.array(u))) - 1.0 - amp) < 1e-9 * max(amp, 1.0)


def test_stars_with_nothing_to_search_do_not_change_the_others_results():
    # the search skips stars without a usable sample (not searchable, or all flagged); the
    # candidates of the others, and their calibration, are as if those were not there
    from driftwatch.science.events import duration_grid, search_events

    rng = np.random.default_rng(5)
    n, m, spp = 300, 40, 0.5
    t = np.tile(np.arange(m) * spp, (n, 1))
    flux = 1.0 + rng.normal(0.0, 0.01, (n, m))
    flux[8] += 0.08 * np.exp(-0.5 * ((t[8] - 9.0) / 1.2) ** 2)
    err = np.full((n, m), 0.01)
    good = np.ones((n, m), bool)
    kw = dict(seconds_per_px=spp, smear_sigma_s=1.0, durations=duration_grid(0.3, 5.0),
              threshold=6.0, min_calibration_points=100)
    searchable = np.ones(n, bool)
    searchable[::3] = False
    good[1::3][:, :] = False            # and others with no usable sample at all
    full = search_events(flux, err, good, t, searchable=searchable, **kw)
    keep = searchable & good.any(axis=1)
    part = search_events(flux[keep], err[keep], good[keep], t[keep], **kw)
    assert 8 in full.star
    np.testing.assert_array_equal(full.star, np.flatnonzero(keep)[part.star])
    np.testing.assert_allclose(full.t_peak_s, part.t_peak_s)
    np.testing.assert_allclose(full.significance, part.significance)
    np.testing.assert_allclose(full.calibration, part.calibration)


def test_a_neighbours_step_is_not_a_dip_but_a_dip_mid_trail_is():
    """A neighbour's trail ending inside the star's adds a step: the flux beyond reads as a dip
    (or, against the other side, a brightening) that a step fits as well; a real dip does not."""
    from scipy.special import ndtr

    flux, err, good, t = _noise(7)
    k = np.arange(flux.shape[1])
    step = 0.06 * ndtr((k - 30.5) / (SMEAR / SPP))    # neighbour's light on the first 31
    edge_rows = [3, 4, 5]
    for i in edge_rows:
        flux[i] += 0.06 - step                            # light drops 6% at sample 31
    bump, _ = _inject(t[9], 10.0, 2.0, 0.08)
    flux[9] -= bump                                       # a real dip, mid-trail
    kw = dict(seconds_per_px=SPP, smear_sigma_s=SMEAR, durations=duration_grid(0.3, 5.0),
              threshold=6.0)
    old = search_events(flux, err, good, t, step_test=False, **kw)
    assert set(edge_rows) <= set(old.star.tolist())     # the edges read as events without it
    ev = search_events(flux, err, good, t, **kw)
    assert not set(edge_rows) & set(ev.star.tolist())
    assert 9 in ev.star.tolist()
    assert ev.kind[ev.star.tolist().index(9)] == "dip"
