"""Ensemble normalisation: the shared pattern goes, the star's own events and noise stay."""

from __future__ import annotations

import numpy as np

from driftwatch.science.normalise import normalise, select_references


def _curves(seed: int, n: int = 60, m: int = 39):
    rng = np.random.default_rng(seed)
    t = np.arange(m) * 0.5
    pattern = 1 + 0.05 * np.sin(t / 1.7) + 0.02 * np.cos(t * 1.3)
    level = 10 ** rng.uniform(2.5, 4.0, n)
    rel = 1.0 / np.sqrt(level)                      # photon-like relative errors
    err = level[:, None] * rel[:, None] * np.ones((n, m))
    flux = level[:, None] * pattern[None, :] * (1 + rel[:, None] * rng.standard_normal((n, m)))
    return flux, err, pattern, level, rel, t


def test_shared_pattern_removed_and_scatter_matches_expected():
    flux, err, pattern, level, rel, t = _curves(1)
    good = np.ones(flux.shape, bool)
    refs = select_references(flux, err, good, min_snr=20)
    nm = normalise(flux, err, good, refs)
    assert refs.sum() >= 10
    # the pattern is divided out: the normalised curves no longer correlate
    z = (nm.flux - nm.flux.mean(axis=1, keepdims=True)) / nm.flux.std(axis=1, keepdims=True)
    corr = z @ z.T / z.shape[1]
    off = corr[np.triu_indices(len(corr), 1)]
    assert abs(off.mean()) < 0.02
    raw = flux / flux.mean(axis=1, keepdims=True)
    zr = (raw - raw.mean(axis=1, keepdims=True)) / raw.std(axis=1, keepdims=True)
    assert (zr @ zr.T / zr.shape[1])[np.triu_indices(len(corr), 1)].mean() > 0.3
    # residual scatter over expected noise ~1 (the pattern's own noise is propagated)
    assert 0.85 < np.nanmedian(nm.chi) < 1.15
    np.testing.assert_allclose(nm.pattern / nm.pattern.mean(), pattern / pattern.mean(),
                               atol=0.01)


def test_variable_reference_is_dropped_and_target_event_is_kept():
    flux, err, pattern, level, rel, t = _curves(2)
    good = np.ones(flux.shape, bool)
    bright = np.argsort(level)[-5:]
    var, target = bright[0], bright[1]
    flux[var] *= 1 + 0.2 * np.sin(t)                   # a variable star among the references
    bump = 1 + 0.3 * np.exp(-0.5 * ((t - 9.0) / 0.8) ** 2)
    flux[target] *= bump                               # an event on a reference star
    refs = select_references(flux, err, good, min_snr=20)
    nm = normalise(flux, err, good, refs)
    assert not nm.is_reference[var]
    # leave-one-out: the target's own event is not divided out of its curve
    peak = np.argmax(bump)
    assert nm.flux[target, peak] - np.median(nm.flux[target]) > 0.25
    # and the other stars do not inherit it
    others = np.delete(np.arange(len(level)), [var, target])
    assert np.abs(np.median(nm.flux[others, peak]) - 1) < 0.01


def test_too_few_references_leave_curves_unnormalised_but_flagged_usable():
    flux, err, pattern, level, rel, t = _curves(3, n=4)
    good = np.ones(flux.shape, bool)
    nm = normalise(flux, err, good, np.zeros(4, bool))
    np.testing.assert_allclose(nm.pattern, 1.0)
    np.testing.assert_allclose(nm.flux * nm.baseline[:, None], flux, rtol=1e-12)


def test_non_detections_are_not_normalised():
    flux, err, pattern, level, rel, t = _curves(4, n=20)
    flux[0] = -np.abs(flux[0]) * 0.01                 # a non-detection (negative median)
    good = np.ones(flux.shape, bool)
    nm = normalise(flux, err, good, select_references(flux, err, good))
    assert nm.baseline[0] == 0 and not nm.good[0].any()
    assert np.isfinite(nm.flux[1:]).all()


def test_misfits_allow_for_the_seeing_shared_by_bright_stars():
    # chi-square of the profile fit: ~1 for faint stars (noise-limited); for bright stars
    # 1 + a_i g_k, where the shared seeing pattern g_k makes the model error 6x over samples
    # 20-25 (the profile fitted to the whole CCD is worse there for every bright star)
    from driftwatch.science.normalise import misfit_samples

    rng = np.random.default_rng(11)
    n, m = 60, 40
    a = np.where(np.arange(n) < 20, rng.uniform(2.0, 20.0, n), 0.0)     # 20 bright stars
    g = np.ones(m)
    g[20:26] = 6.0
    chi2 = (1.0 + a[:, None] * g[None, :]) * rng.uniform(0.9, 1.1, (n, m))
    chi2[5, 10] *= 8.0     # a cosmic ray on a bright star, where the seeing is as usual
    chi2[7, 22] *= 8.0     # and on one where it is not
    chi2[40, 30] = 12.0    # and on a faint star
    good = np.ones((n, m), bool)
    bad = misfit_samples(chi2, good)
    assert bad[5, 10] and bad[7, 22] and bad[40, 30]
    bad[5, 10] = bad[7, 22] = bad[40, 30] = False
    assert not bad.any()   # the seeing's stretch is not flagged on any bright star
    # a star-by-star threshold (no shared pattern) would flag that stretch
    typical = np.median(chi2, axis=1)
    assert (chi2[:20, 20:26] > 4.0 * typical[:20, None]).mean() > 0.2
