"""Divide the shared atmospheric pattern out of every light curve of a CCD.

Transparency and seeing change along the exposure in the same way for every star of a CCD. The
pattern is a weighted mean of the reference stars' light curves, each normalised by its own
median; the weights are inverse relative variances with a floor (so a few very bright stars do
not dominate). Each star is divided by the pattern made *without itself* (leave-one-out, done
for all stars at once by subtracting its own term from the weighted sums), so its own events
never enter its normalisation. References whose normalised curves scatter too much (variable
stars) are dropped, and single deviant samples of a reference (its own events, a cosmic ray)
lose their weight, iteratively.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driftwatch.science._stats import row_nanmedian

__all__ = ["FLAG_NOREF", "Normalised", "misfit_samples", "select_references", "normalise"]

#: Sample flag: no reference star covered this sample, so it is not normalised.
FLAG_NOREF = 1 << 14


@dataclass(frozen=True)
class Normalised:
    """Normalised light curves of ``n`` stars, ``m`` samples.

    Attributes
    ----------
    flux, err : ndarray, float64, shape (n, m)
        Flux divided by the star's baseline and by the leave-one-out ensemble pattern (~1), and
        its 1-sigma uncertainty (the star's own noise and the pattern's, propagated).
    good : ndarray, bool, shape (n, m)
        Usable normalised samples (usable raw sample and a pattern available).
    flags : ndarray, uint16, shape (n, m)
        ``FLAG_NOREF`` where no reference covered the sample, else 0.
    baseline : ndarray, float64, shape (n,)
        Star's median flux after the pattern is divided out, ADU per sample.
    pattern : ndarray, float64, shape (m,)
        Ensemble pattern of all references (transparency x seeing losses), median 1.
    is_reference : ndarray, bool, shape (n,)
        Stars kept as references after clipping.
    scatter : ndarray, float64, shape (n,)
        Robust (1.4826 MAD) standard deviation of the good normalised samples.
    expected : ndarray, float64, shape (n,)
        Median expected uncertainty of the same samples.
    chi : ndarray, float64, shape (n,)
        Robust standard deviation of (flux - 1) / err: residual scatter over expected noise.
    """

    flux: np.ndarray
    err: np.ndarray
    good: np.ndarray
    flags: np.ndarray
    baseline: np.ndarray
    pattern: np.ndarray
    is_reference: np.ndarray
    scatter: np.ndarray
    expected: np.ndarray
    chi: np.ndarray


def misfit_samples(chi2: np.ndarray, good: np.ndarray, *, factor: float = 4.0,
                   floor: float = 5.0, min_stars: int = 5) -> np.ndarray:
    """Samples whose across-trail profile fit is far worse than the star's usual, per star.

    Light of another shape than the star's across the trail (a cosmic ray the DQ mask missed,
    crossing several pixels of a sample) fits the CCD's profile far worse than the star's other
    samples. But the seeing also changes along the exposure, the same way for every star: where
    it departs from the profile fitted to the whole CCD, every bright star (whose chi-square is
    dominated by that model error, not by noise) fits worse at the same samples, and flagging
    those would remove a stretch of every bright light curve, with any event in it. So each
    star's chi-square is compared with its expected value there: ``1 + (c_i - 1) g_k``, for the
    star's median chi-square ``c_i`` and the CCD's shared pattern ``g_k`` of the excess (the
    median over the stars with ``c_i > 2`` of ``(chi2_ik - 1) / (c_i - 1)``, never below 1).

    Parameters
    ----------
    chi2 : ndarray, float64, shape (n, m)
        Reduced chi-square of each sample's profile fit.
    good : ndarray, bool, shape (n, m)
        Usable samples.
    factor, floor : float
        A sample is a misfit above ``max(floor, factor x expected)``.
    min_stars : int
        Fewest stars with ``c_i > 2`` to measure the shared pattern (else ``g = 1``).

    Returns
    -------
    ndarray, bool, shape (n, m)
        Usable samples that are misfits.
    """
    chi2 = np.asarray(chi2, float)
    good = np.asarray(good, bool)
    with np.errstate(invalid="ignore"):
        typical = np.nan_to_num(row_nanmedian(np.where(good, chi2, np.nan)), nan=1.0)
    excess = np.maximum(typical - 1.0, 0.0)
    pattern = np.ones(chi2.shape[1])
    model_limited = excess > 1.0
    if model_limited.sum() >= min_stars:
        rel = np.where(good[model_limited], (chi2[model_limited] - 1.0) /
                       excess[model_limited, None], np.nan)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            g = np.nanmedian(rel, axis=0)   # a few dozen bright stars x m samples
        pattern = np.maximum(np.nan_to_num(g, nan=1.0), 1.0)
    expected = 1.0 + excess[:, None] * pattern[None, :]
    return good & (chi2 > np.maximum(floor, factor * expected))


def _robust_std(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """1.4826 MAD along axis 1 of the entries where ``ok``; NaN for rows with < 5 entries."""
    v = np.where(ok, x, np.nan)
    with np.errstate(all="ignore"), _quiet():
        med = row_nanmedian(v)
        out = 1.4826 * row_nanmedian(np.abs(v - med[:, None]))
    return np.where(ok.sum(axis=1) >= 5, out, np.nan)


class _quiet:
    """Silence numpy's All-NaN slice warnings (rows with no usable sample are expected)."""

    def __enter__(self) -> None:
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)


def select_references(flux: np.ndarray, err: np.ndarray, good: np.ndarray, *,
                      min_snr: float = 20.0, min_good: float = 0.7) -> np.ndarray:
    """Pick candidate references: enough usable samples and a per-sample SNR above ``min_snr``.

    Parameters
    ----------
    flux, err : ndarray, shape (n, m)
        Raw light curves (ADU per sample) and uncertainties.
    good : ndarray, bool, shape (n, m)
        Usable samples (not blended, saturated, edge or masked).

    Returns
    -------
    ndarray, bool, shape (n,)
    """
    with _quiet():
        snr = row_nanmedian(np.where(good, flux / err, np.nan))
    return (good.mean(axis=1) >= min_good) & (np.nan_to_num(snr) >= min_snr)


def normalise(flux: np.ndarray, err: np.ndarray, good: np.ndarray, references: np.ndarray,
              *, rel_floor: float = 0.003, clip_chi: float = 1.6, clip_sample: float = 5.0,
              min_refs: int = 3, iterations: int = 4) -> Normalised:
    """Estimate the ensemble pattern and divide it out of every light curve.

    Parameters
    ----------
    flux, err : ndarray, float64, shape (n, m)
        Raw light curves, ADU per sample, and their uncertainties.
    good : ndarray, bool, shape (n, m)
        Usable samples.
    references : ndarray, bool, shape (n,)
        Candidate reference stars (:func:`select_references`).
    rel_floor : float
        Floor of a reference's relative uncertainty in its weight.
    clip_chi : float
        A reference whose residual scatter exceeds ``clip_chi`` x its expected noise (and the
        median such ratio of the references by 30 %) is dropped as variable.
    clip_sample : float
        A reference sample deviating by more than this many sigma loses its weight.
    min_refs : int
        With fewer references the pattern is 1 (nothing is divided out).

    Returns
    -------
    Normalised
    """
    flux = np.asarray(flux, float)
    err = np.asarray(err, float)
    n, m = flux.shape
    good = np.asarray(good, bool) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    with _quiet():
        base = row_nanmedian(np.where(good, flux, np.nan))
    detected = np.isfinite(base) & (base > 0)
    base = np.where(detected, base, 1.0)
    refs = np.asarray(references, bool) & detected
    with np.errstate(invalid="ignore", divide="ignore"):
        return _normalise(flux, err, good, base, detected, refs, rel_floor=rel_floor,
                          clip_chi=clip_chi, clip_sample=clip_sample, min_refs=min_refs,
                          iterations=iterations)


def _normalise(flux: np.ndarray, err: np.ndarray, good: np.ndarray, base: np.ndarray,
               detected: np.ndarray, refs: np.ndarray, *, rel_floor: float, clip_chi: float,
               clip_sample: float, min_refs: int, iterations: int) -> Normalised:
    n, m = flux.shape
    sample_ok = good.copy()
    pattern_loo = np.ones((n, m))
    var_loo = np.zeros((n, m))
    covered = np.ones((n, m), bool)
    # Only the references carry weight: their rows are the only ones whose weights, clipped
    # samples and scatter the iterations need. Every other row's leave-one-out pattern is the
    # whole column's (its own weight is 0, so ``sw - 0`` and ``swr - 0`` exactly), and only
    # its level (baseline) is iterated. Same arithmetic per element as over all rows, on a
    # seventh of them (the column sums over the reference rows alone add the same terms:
    # the other rows only added zeros).
    for _ in range(iterations):
        if refs.sum() < min_refs:
            pattern_loo[:] = 1.0
            var_loo[:] = 0.0
            covered[:] = True
            break
        ri = np.flatnonzero(refs)
        r = flux / base[:, None]
        rr = r[ri]
        rer = err[ri] / base[ri, None]
        w = np.where(sample_ok[ri], 1.0 / np.maximum(rer, rel_floor) ** 2, 0.0)
        wr = np.where(w > 0, w * rr, 0.0)
        w2v = w * w * np.where(w > 0, rer * rer, 0.0)
        sw, swr, sv = w.sum(axis=0), wr.sum(axis=0), w2v.sum(axis=0)
        col_ok = sw > 0
        sw_safe = np.where(col_ok, sw, 1.0)
        covered = np.repeat(col_ok[None, :], n, axis=0)
        pattern_loo = np.repeat(np.where(col_ok, swr / sw_safe, 1.0)[None, :], n, axis=0)
        var_loo = np.repeat(np.where(col_ok, sv / sw_safe ** 2, 0.0)[None, :], n, axis=0)
        wl = sw[None, :] - w
        cov_r = wl > 0
        wl_safe = np.where(cov_r, wl, 1.0)
        covered[ri] = cov_r
        pattern_loo[ri] = np.where(cov_r, (swr[None, :] - wr) / wl_safe, 1.0)
        var_loo[ri] = np.where(cov_r, (sv[None, :] - w2v) / wl_safe ** 2, 0.0)
        nf = r / pattern_loo
        ok = good & covered
        with _quiet():
            level = row_nanmedian(np.where(ok, nf, np.nan))
        lvl_ok = np.isfinite(level) & (level > 0)
        base = np.where(lvl_ok, base * level, base)
        # the references' clipping and scatter (the other rows' were never used)
        nfr, pr, vr = nf[ri], pattern_loo[ri], var_loo[ri]
        ne = np.abs(nfr) * np.sqrt((rer / np.where(rr != 0, rr, 1.0)) ** 2 + vr / pr ** 2)
        dev = np.abs(nfr / np.where(lvl_ok, level, 1.0)[ri, None] - 1.0)
        sample_ok[ri] = good[ri] & (dev <= clip_sample * np.maximum(ne, 1e-12))
        chi = _robust_std((nfr - 1.0) / np.maximum(ne, 1e-12), ok[ri])
        med_chi = np.nanmedian(chi) if ri.size else 1.0
        new_refs = refs.copy()
        new_refs[ri] = np.isfinite(chi) & (chi <= max(clip_chi, 1.3 * med_chi))
        if new_refs.sum() >= min_refs:
            refs = new_refs
    r = flux / base[:, None]
    re = err / base[:, None]
    nf = r / pattern_loo
    ne = np.sqrt((re / pattern_loo) ** 2 + (r ** 2) * var_loo / pattern_loo ** 4)
    ok = good & covered & detected[:, None]
    flags = np.where(covered, 0, FLAG_NOREF).astype(np.uint16)
    # the pattern of all references together, for the record
    w_all = np.where(sample_ok & refs[:, None], 1.0 / np.maximum(re, rel_floor) ** 2, 0.0)
    sw = w_all.sum(axis=0)
    pattern = np.where(sw > 0, (w_all * np.where(w_all > 0, r, 0.0)).sum(axis=0)
                       / np.where(sw > 0, sw, 1.0), 1.0)
    scatter = _robust_std(nf, ok)
    with _quiet():
        expected = row_nanmedian(np.where(ok, ne, np.nan))
    chi = _robust_std((nf - 1.0) / np.maximum(ne, 1e-12), ok)
    return Normalised(flux=nf, err=ne, good=ok, flags=flags, baseline=np.where(detected, base, 0.0),
                      pattern=pattern, is_reference=refs, scatter=scatter, expected=expected,
                      chi=chi)
