"""Search normalised light curves for short brightenings and dips with a matched filter.

Event shape: a point-lens (Paczynski) magnification curve ``A(t) - 1`` of intrinsic FWHM
``D`` seconds, symmetric about its peak, for a few peak amplitudes (the shape's wings widen with
the amplitude; small-amplitude events tend to a squared Lorentzian). The drift smears any event
along the trail by the PSF, whose along-trail sigma in time is ``smear_sigma_s = sigma_px *
seconds_per_px``, so each template is the intrinsic shape convolved with that Gaussian, sampled
at the light curve's samples. Every light curve is correlated with every template at every
centre sample (one matrix product over all stars, shapes and centres), giving the weighted
least-squares intrinsic amplitude and its signal-to-noise ratio ``S``; a constant baseline is
fitted at the same time (the template minus its weighted mean), so a star whose normalisation
level is slightly off does not show a long "event". A dip is the same shape
with a negative amplitude.

Fluence is the excess (fraction of the baseline) integrated over the exposure; smoothing does
not change it, so it is well measured even for events much shorter than the smear, whose peak
amplitude is not.

Significance, corrected for correlated noise: the errors of each star are first scaled by its
excess white noise (scatter of consecutive-sample differences over expected, when above 1:
unlike the scatter of the curve, an event does not raise it), then the filtered statistic of each
template is divided by its robust standard deviation over all stars and centres of the CCD
(red noise and normalisation errors widen it at the durations they affect; never below 1). The
trials factor is reported as a false-alarm probability; the threshold applies to the calibrated
significance. A candidate must survive removing its most significant sample (a cosmic-ray spike
or a single bad pixel never does), and, when the across-trail displacement of each sample is
given, its excess light must lie on the trail's centre line (the light of an undetected
neighbour overlapping part of the trail does not).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from driftwatch.science._stats import row_nanmedian
from scipy.special import ndtr

__all__ = ["EventCandidates", "clear_of_flagged", "clear_of_neighbours", "difference_scatter",
           "duration_grid",
           "event_shape", "smeared_shape", "search_events"]

_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: Peak amplitudes of the template shapes (the shape, not the fitted amplitude).
SHAPE_AMPLITUDES: tuple[float, ...] = (0.1, 1.0)


def _magnification(u: np.ndarray) -> np.ndarray:
    return (u * u + 2.0) / (u * np.sqrt(u * u + 4.0))


def _separation(magnification: float) -> float:
    """Lens-source separation u (Einstein radii) at which the point lens magnifies by A > 1.

    A = (u^2 + 2) / (u sqrt(u^2 + 4)) squared is a quadratic in u^2 whose positive root is
    u^2 = 2 (A / sqrt(A^2 - 1) - 1).
    """
    a = float(magnification)
    return math.sqrt(2.0 * (a / math.sqrt(a * a - 1.0) - 1.0))


@functools.lru_cache(maxsize=512)
def _impact(amplitude: float) -> tuple[float, float]:
    """Impact parameters (Einstein radii) of peak excess ``amplitude`` and of half of it.

    Cached: a search evaluates the same few shape amplitudes hundreds of times.
    """
    return _separation(1.0 + amplitude), _separation(1.0 + amplitude / 2.0)


def event_shape(t: np.ndarray, duration_s: float, amplitude: float = 0.05) -> np.ndarray:
    """Return the unit-peak point-lens excess ``(A(t) - 1) / (A(0) - 1)`` at times ``t``.

    ``duration_s`` is the FWHM of ``A - 1`` and ``amplitude`` its peak (which sets the wings).
    """
    u0, uh = _impact(float(amplitude))
    t_e = duration_s / (2.0 * np.sqrt(uh * uh - u0 * u0))
    u = np.sqrt(u0 * u0 + (np.asarray(t, float) / t_e) ** 2)
    return (_magnification(u) - 1.0) / amplitude


def smeared_shape(lags: np.ndarray, duration_s: float, smear_sigma_s: float,
                  amplitude: float = 0.05,
                  smear_kernel: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Return the event shape convolved with the along-trail smear, at time lags (s).

    The smear is a Gaussian of ``smear_sigma_s`` unless ``smear_kernel`` (a function of time
    in seconds giving the smear's density, e.g. the pixel-integrated line profile of the PSF
    along the trail) is given; ``smear_sigma_s`` then only sets the grid. Numerical
    convolution on a fine grid; the result is in units of the intrinsic peak.
    """
    lags = np.asarray(lags, float)
    half = 8.0 * smear_sigma_s
    span = np.abs(lags).max() + half + 1.0
    dt = min(duration_s, smear_sigma_s) / 10.0
    grid = np.arange(-span, span + dt / 2, dt)
    shape = event_shape(grid, duration_s, amplitude)
    kern_t = np.arange(-half, half + dt / 2, dt)
    kern = (np.exp(-0.5 * (kern_t / smear_sigma_s) ** 2) if smear_kernel is None
            else np.asarray(smear_kernel(kern_t), float))
    kern = kern / kern.sum()
    # direct convolution (a few thousand by a few hundred points), centred as scipy's "same"
    conv = np.convolve(shape, kern, mode="full")[(kern.size - 1) // 2:][:shape.size]
    return np.interp(lags, grid, conv)


@dataclass(frozen=True)
class EventCandidates:
    """Events found in the light curves of one CCD (``k`` candidates).

    Attributes
    ----------
    star : ndarray, int64, shape (k,)
        Row of the light-curve arrays (trail index).
    kind : ndarray, str, shape (k,)
        ``"brightening"``, ``"dip"`` or ``"flash"`` (a flash that landed on the trail).
    sample : ndarray, int64, shape (k,)
        Sample nearest the peak.
    t_peak_s : ndarray, float64, shape (k,)
        Time of the peak, seconds since shutter open (interpolated between samples).
    duration_s : ndarray, float64, shape (k,)
        Intrinsic FWHM duration of the best-matching template, seconds.
    amplitude : ndarray, float64, shape (k,)
        Intrinsic peak amplitude of the best template's fit, fraction of the baseline (negative
        for a dip); meaningful for events longer than the smear.
    smeared_amplitude : ndarray, float64, shape (k,)
        Peak amplitude of the PSF-smeared event in the sampled light curve.
    fluence : ndarray, float64, shape (k,)
        Excess flux integrated over the event, fraction of the baseline x seconds.
    significance : ndarray, float64, shape (k,)
        Calibrated significance, sigma.
    false_alarm : ndarray, float64, shape (k,)
        Probability of a noise peak this high anywhere on the CCD (trials included).
    offset_px : ndarray, float64, shape (k,)
        For kind ``"flash"`` (a flash on the trail), its distance from the trail's centre line
        along the trail's normal ``(-uy, ux)``, pixels; 0 otherwise.
    calibration : ndarray, float64, shape (s,)
        Robust standard deviation of the filtered statistic of each template (never below 1).
    durations : ndarray, float64, shape (s,)
        The duration of each template, seconds (each duration appears once per shape
        amplitude of :data:`SHAPE_AMPLITUDES`).
    """

    star: np.ndarray
    kind: np.ndarray
    sample: np.ndarray
    t_peak_s: np.ndarray
    duration_s: np.ndarray
    amplitude: np.ndarray
    smeared_amplitude: np.ndarray
    fluence: np.ndarray
    significance: np.ndarray
    false_alarm: np.ndarray
    offset_px: np.ndarray
    calibration: np.ndarray
    durations: np.ndarray

    def __len__(self) -> int:
        return int(self.star.size)


def duration_grid(min_s: float, max_s: float, per_octave: int = 2) -> np.ndarray:
    """Return durations spaced logarithmically from ``min_s`` to ``max_s`` inclusive."""
    n = max(2, int(np.ceil(np.log2(max_s / min_s) * per_octave)) + 1)
    return np.geomspace(min_s, max_s, n)


def _templates(m: int, spp: float, durations: np.ndarray, amplitudes: tuple[float, ...],
               smear_sigma_s: float, smear_kernel: Callable[[np.ndarray], np.ndarray] | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smeared templates, shape (s, c, k) for s = (duration, amplitude) pairs, centre, sample.

    Returns the templates, each shape's duration and amplitude (s,).
    """
    lags = np.arange(-(m - 1), m, dtype=float) * spp
    prof, dur, amp = [], [], []
    for d in durations:
        for a in amplitudes:
            prof.append(smeared_shape(lags, float(d), smear_sigma_s, a, smear_kernel))
            dur.append(d)
            amp.append(a)
    prof_arr = np.asarray(prof)
    k = np.arange(m)
    lag_index = (k[None, :] - k[:, None]) + (m - 1)  # (c, k)
    return prof_arr[:, lag_index], np.asarray(dur), np.asarray(amp)


def clear_of_neighbours(s: np.ndarray, length_px: float, end_z: np.ndarray,
                        start_px: np.ndarray, reach_px: np.ndarray, level: np.ndarray, *,
                        threshold: float, margin_px: float,
                        max_level: float = 0.5) -> np.ndarray:
    """Samples of each trail that a collinear neighbour's light does not reach.

    A star on the trail's line that detection merged with it or that follows it shows as
    light beyond one of the trail's ends
    (:func:`~driftwatch.science.photometry.end_excess`). Drifting the same way, a neighbour
    offset by ``D`` px beyond the far end lies on ``[D, D + L]`` (beyond the start, on
    ``[-D, L - D]``). Its light beyond the far end starts ``max(0, D - L)`` px from it and
    runs to ``D``: a neighbour whose light starts there (``start_px > 0``) has ``D = L +
    start_px`` and overlaps nothing but its PSF wing; one whose light starts at the end
    overlaps the trail from ``D = reach_px`` on (the reach is a lower bound of ``D`` when it is
    the end of the window looked at, so the clean part is then taken smaller than it is).
    The rest of the trail is clean and can be searched for events.

    Parameters
    ----------
    s : ndarray, float64, shape (n, m)
        Along-trail coordinate of each sample from the t = 0 end, pixels.
    length_px : float
        Trail length L, pixels.
    end_z, start_px, reach_px, level : ndarray, float64, shape (n, 2)
        Per end (start, far end): significance of the light beyond it, where that light
        starts and how far it reaches, pixels from the end, and its level as a fraction of
        the star's (:class:`~driftwatch.science.photometry.EndLight`).
    threshold : float
        Significance above which the light beyond an end is a neighbour.
    margin_px : float
        Kept clear of the neighbour's own end: its PSF wing, and the error of its position.
    max_level : float
        Light beyond an end brighter than this fraction of the star's leaves nothing clean:
        the "trail" is then most likely a piece of that brighter trail which detection cut
        off or duplicated (on simulated CCDs such pieces, with no star of their own, are
        where searching beside neighbours gave false candidates), not a star of its own.

    Returns
    -------
    ndarray, bool, shape (n, m)
        True where the sample is clear of any neighbour found (all True for a trail with
        none).
    """
    s = np.asarray(s, float)
    z = np.asarray(end_z, float)
    start = np.asarray(start_px, float)
    offset = np.where(start > 0, length_px + start, np.asarray(reach_px, float))   # D, (n, 2)
    bright = np.asarray(level, float) > max_level
    offset = np.where(bright, -np.inf, offset)   # nothing clean (lo = +inf, hi = -inf)
    lo = np.where(z[:, 0] > threshold, length_px - offset[:, 0] + margin_px, -np.inf)
    hi = np.where(z[:, 1] > threshold, offset[:, 1] - margin_px, np.inf)
    return (s > lo[:, None]) & (s < hi[:, None])


def clear_of_flagged(flagged: np.ndarray, margin: int) -> np.ndarray:
    """Samples more than ``margin`` samples away from any flagged sample of their trail.

    A satellite streak crossing a trail is masked over its core; its wings still add light to
    the samples beside the masked ones. The rest of the trail is clean.

    Parameters
    ----------
    flagged : ndarray, bool, shape (n, m)
        Samples to keep away from.
    margin : int
        Samples on each side of a flagged one that are not clear either.

    Returns
    -------
    ndarray, bool, shape (n, m)
    """
    flagged = np.asarray(flagged, bool)
    n, m = flagged.shape
    c = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(flagged, axis=1)], axis=1)
    k = np.arange(m)
    lo = np.clip(k - margin, 0, m)
    hi = np.clip(k + margin + 1, 0, m)
    return (c[:, hi] - c[:, lo]) == 0      # no flagged sample within the window


def difference_scatter(flux: np.ndarray, err: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Robust scatter of consecutive-sample differences over their expected noise, per star.

    A smooth event (wider than the PSF smear, i.e. several samples) barely changes the
    differences of consecutive samples, so unlike the scatter of the curve itself this measure
    of excess white noise is not raised by the very events being searched for.

    Returns
    -------
    ndarray, shape (n,): 1.4826 x MAD of ``diff(flux) / sqrt(err_k^2 + err_k+1^2)`` over pairs
    of usable samples (NaN with fewer than 8 pairs).
    """
    both = ok[:, 1:] & ok[:, :-1]
    z = np.diff(flux, axis=1) / np.sqrt(err[:, 1:] ** 2 + err[:, :-1] ** 2)
    v = np.where(both, z, np.nan)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = row_nanmedian(v)
        out = 1.4826 * row_nanmedian(np.abs(v - med[:, None]))
    return np.where(both.sum(axis=1) >= 8, out, np.nan)


def _fine_fit(r: np.ndarray, w: np.ndarray, t: np.ndarray, t0: np.ndarray, sign: float,
              spp: float, smear_sigma_s: float,
              smear_kernel: Callable[[np.ndarray], np.ndarray] | None,
              d_min: float, d_max: float, d0: np.ndarray,
              cache: dict[tuple[float, float], np.ndarray]) -> tuple[np.ndarray, ...]:
    """Best event parameters of a few light curves on a fine grid around ``t0``.

    Parameters
    ----------
    r, w, t : ndarray, shape (h, m)
        Residual (flux - 1), weights (0 for unusable samples) and sample times (s).
    t0, d0 : ndarray, shape (h,)
        Peak time and duration from the coarse search, seconds: the fine durations are
        those within 3/4 of an octave of ``d0``.
    sign : float
        +1 brightenings, -1 dips.
    cache : dict
        Smeared templates already computed in this search, by (duration, shape amplitude).

    Returns
    -------
    t_peak, duration, shape_amplitude, amplitude, smeared_peak : ndarray, shape (h,)
        Peak time (s), intrinsic FWHM (s), the template shape's amplitude, the fitted
        intrinsic peak amplitude, and the smeared template's peak (units of the intrinsic).
    """
    h, m = r.shape
    durations = np.geomspace(d_min, d_max, max(2, int(np.ceil(np.log2(d_max / d_min) * 4)) + 1))
    near = np.abs(np.log2(durations[:, None] / np.asarray(d0, float)[None, :])) <= 0.75
    durations = durations[near.any(axis=1)]
    step = spp / 20.0
    half = (m + 3) * spp
    lags = np.arange(-half, half + step / 2, step)
    shapes, dur, amp_s = [], [], []
    for d in durations:          # the durations near the candidates', each computed once
        for a in SHAPE_AMPLITUDES:
            key = (float(d), float(a))
            if key not in cache:
                cache[key] = smeared_shape(lags, float(d), smear_sigma_s, a, smear_kernel)
            shapes.append(cache[key])
            dur.append(d)
            amp_s.append(a)
    table = np.asarray(shapes)                                               # (s, L)
    offsets = np.linspace(-1.0, 1.0, 21) * spp
    tp = t0[:, None] + offsets[None, :]                                      # (h, o)
    pos = (t[:, None, :] - tp[:, :, None] - lags[0]) / step                  # (h, o, m)
    i0 = np.clip(np.floor(pos).astype(np.intp), 0, lags.size - 2)
    f = np.clip(pos - i0, 0.0, 1.0)
    tmpl = table[:, i0] * (1 - f)[None] + table[:, i0 + 1] * f[None]         # (s, h, o, m)
    sw = np.maximum(w.sum(axis=1), 1e-300)[None, :, None]
    wt = (tmpl * w[None, :, None, :]).sum(-1)
    mean_t = wt / sw
    num = (tmpl * (w * r)[None, :, None, :]).sum(-1) - mean_t * (w * r).sum(axis=1)[None, :, None]
    den = (tmpl * tmpl * w[None, :, None, :]).sum(-1) - mean_t * wt
    ok = den > 0
    own = np.abs(np.log2(np.asarray(dur)[:, None] / np.asarray(d0, float)[None, :])) <= 0.75
    ok &= own[:, :, None]                                                    # (s, h, 1)
    score = np.where(ok, sign * num / np.sqrt(np.where(ok, den, 1.0)), -np.inf)
    flat = score.transpose(1, 0, 2).reshape(h, -1)                           # (h, s*o)
    best = np.argmax(flat, axis=1)
    js, jo = np.unravel_index(best, (table.shape[0], offsets.size))
    rows = np.arange(h)
    amp = num[js, rows, jo] / np.where(ok[js, rows, jo], den[js, rows, jo], 1.0)
    return (tp[rows, jo], np.asarray(dur)[js], np.asarray(amp_s)[js], amp,
            table[js].max(axis=1))


def _shape_integral(duration: np.ndarray, amplitude: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                    span: float, cache: dict[tuple[float, float], tuple[np.ndarray, np.ndarray]]
                    ) -> np.ndarray:
    """Integral of :func:`event_shape` from ``lo`` to ``hi`` (s from the peak), per event.

    Each (duration, shape amplitude) pair's running integral is tabulated once on a grid of
    +-``span`` seconds (2001 points a side, the trapezoid rule), then read by interpolation.
    """
    out = np.empty(np.size(duration))
    for q, (d, a) in enumerate(zip(np.ravel(duration), np.ravel(amplitude))):
        key = (float(d), float(a))
        if key not in cache:  # a few shapes per CCD with candidates
            grid = np.linspace(-span, span, 4001)
            y = event_shape(grid, float(d), float(a))
            cum = np.concatenate([[0.0], np.cumsum(0.5 * (y[1:] + y[:-1]) * np.diff(grid))])
            cache[key] = (grid, cum)
        grid, cum = cache[key]
        out[q] = np.interp(np.ravel(hi)[q], grid, cum) - np.interp(np.ravel(lo)[q], grid, cum)
    return out


def _median(v: np.ndarray) -> float:
    """``np.median`` of a 1-D float array, by one partition.

    np.median partitions at both middle elements of an even-sized array (and at its last, to
    find NaNs): several times slower than one partition at the upper middle, below which
    the lower middle is the largest element. The same value to the last bit.
    """
    if not np.isfinite(v).all():
        return float(np.median(v))
    n = v.size
    h = n // 2
    p = np.partition(v, h)
    return float(p[h]) if n % 2 else float((p[:h].max() + p[h]) / 2)


def _step_explains(r: np.ndarray, w: np.ndarray, ok: np.ndarray, s_event: np.ndarray,
                   steps: np.ndarray, min_side: int = 2, penalty: float = 2.0) -> np.ndarray:
    """Whether a step fits each light curve at least as well as its event template.

    ``r``, ``w``, ``ok`` (h, m): residuals, weights and usable samples of the candidates;
    ``s_event`` (h,): the event template's signal-to-noise (its chi-square reduction is
    ``s_event**2``); ``steps`` (k, m): step templates. The baseline is fitted with the step,
    as with the template; a step needs ``min_side`` usable samples on each side. The
    template has one parameter more than the step (its duration, chosen from a grid): the
    step fits "as well" if its chi-square is within ``penalty`` of the template's (Akaike).
    """
    sw = np.maximum(w.sum(axis=1), 1e-300)[:, None]
    swt = w @ steps.T
    num = (w * r) @ steps.T - (w * r).sum(axis=1)[:, None] * swt / sw
    den = w @ (steps * steps).T - swt * swt / sw
    n_before = np.cumsum(ok, axis=1)[:, :-1]              # usable samples before each step
    sides = (n_before >= min_side) & (ok.sum(axis=1)[:, None] - n_before >= min_side)
    valid = sides & (den > 0)
    dchi = np.zeros(num.shape)
    np.divide(num * num, den, out=dchi, where=valid)
    return dchi.max(axis=1, initial=0.0) >= s_event * s_event - penalty


def search_events(flux: np.ndarray, err: np.ndarray, good: np.ndarray, t: np.ndarray, *,
                  seconds_per_px: float, smear_sigma_s: float, durations: np.ndarray,
                  smear_kernel: Callable[[np.ndarray], np.ndarray] | None = None,
                  threshold: float, chi: np.ndarray | None = None,
                  searchable: np.ndarray | None = None, min_cover: float = 0.6,
                  shift: np.ndarray | None = None, shift_err: np.ndarray | None = None,
                  max_offset_px: float = 0.5, flash_max_duration_s: float = 0.6,
                  flash_max_offset_px: float = 6.0, systematic_floor: float = 0.005,
                  min_calibration_points: int = 500,
                  step_test: bool = True) -> EventCandidates:
    """Find the most significant event (brightening or dip) of each light curve.

    At most one candidate per star: its best template and centre, if above ``threshold``.

    Parameters
    ----------
    flux, err : ndarray, float64, shape (n, m)
        Normalised light curves (~1) and uncertainties.
    good : ndarray, bool, shape (n, m)
        Usable samples.
    t : ndarray, float64, shape (n, m)
        Sample times, seconds since shutter open.
    seconds_per_px : float
        Time between samples.
    smear_sigma_s : float
        Along-trail PSF sigma expressed in seconds.
    smear_kernel : callable, optional
        Density of the along-trail smear as a function of time (s); default a Gaussian of
        ``smear_sigma_s``. The pipeline passes the pixel-integrated line profile of the PSF
        (a Moffat's wings make the smear wider than its Gaussian equivalent).
    durations : ndarray, shape (d,)
        Intrinsic FWHM durations searched, seconds.
    threshold : float
        Candidate threshold on the calibrated significance.
    chi : ndarray, shape (n,), optional
        Residual scatter over expected noise of each star (errors scaled up where > 1); by
        default :func:`difference_scatter`, which an event itself does not inflate.
    searchable : ndarray, bool, shape (n,), optional
        Stars searched (e.g. star trails that were normalised); others give no candidate.
    min_cover : float
        A template must have at least this fraction of its weight on usable samples.
    systematic_floor : float
        Relative error added in quadrature to every sample (scintillation, flat field): the
        photon noise of a very bright star is not its whole noise.
    step_test : bool
        Reject a candidate that a step in the light curve (smeared by the PSF, at any
        boundary between samples, with the baseline fitted) fits at least as well as the
        event template: a neighbour whose trail starts or ends inside the star's adds such a
        step, and the flux on its far side then reads as a dip or a brightening.
    shift, shift_err : ndarray, shape (n, m), optional
        Across-trail displacement coefficient of each sample and its error, as a fraction of
        the baseline x pixels (``LightCurves.shift / baseline``). When given, a candidate whose
        excess light sits more than ``max_offset_px`` off the trail's centre line, at more than
        4 sigma, is rejected: it is a neighbour's light (an undetected blended trail), not the
        star's; unless it is short (best duration <= ``flash_max_duration_s``) and within
        ``flash_max_offset_px``: then it is a flash that landed on the trail, kept with kind
        ``"flash"`` and its across-trail offset.

    Returns
    -------
    EventCandidates
    """
    flux = np.asarray(flux, float)
    usable = np.asarray(good, bool) & np.isfinite(flux) & np.isfinite(err) & (np.asarray(err) > 0)
    if searchable is not None:
        usable &= np.asarray(searchable, bool)[:, None]
    rows = np.flatnonzero(usable.any(axis=1))
    if rows.size < flux.shape[0]:
        # stars with nothing to search add only zeros (no template is valid there): the
        # search runs on the others alone, with the same results, and its stars map back
        def sub(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a)[rows]

        ev = search_events(
            flux[rows], np.asarray(err)[rows], usable[rows], np.asarray(t)[rows],
            seconds_per_px=seconds_per_px, smear_sigma_s=smear_sigma_s, durations=durations,
            smear_kernel=smear_kernel, threshold=threshold, chi=sub(chi), searchable=None,
            min_cover=min_cover, shift=sub(shift), shift_err=sub(shift_err),
            max_offset_px=max_offset_px, flash_max_duration_s=flash_max_duration_s,
            flash_max_offset_px=flash_max_offset_px, systematic_floor=systematic_floor,
            min_calibration_points=min_calibration_points, step_test=step_test)
        return replace(ev, star=rows[ev.star])
    n, m = flux.shape
    durations = np.asarray(durations, float)
    spp = float(seconds_per_px)
    T, shape_dur, shape_amp = _templates(m, spp, durations, SHAPE_AMPLITUDES, smear_sigma_s,
                                         smear_kernel)
    n_shapes = shape_dur.size
    T2 = T * T
    ok = np.asarray(good, bool) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    if searchable is not None:
        ok &= np.asarray(searchable, bool)[:, None]
    if chi is None:
        chi = difference_scatter(flux, err, ok)
    scale = np.where(np.isfinite(chi), np.maximum(chi, 1.0), 1.0)
    e_eff = np.hypot(np.where(ok, err, 1.0) * scale[:, None], systematic_floor)
    w = np.where(ok, 1.0 / e_eff ** 2, 0.0)
    r = np.where(ok, flux - 1.0, 0.0)
    wr = w * r
    # (n, k) @ (k, s*c): one BLAS product per sum, over all stars, templates and centres
    flat_t = T.reshape(-1, m).T
    flat_t2 = T2.reshape(-1, m).T
    # the baseline is fitted with the event (template minus its weighted mean), so an error
    # in a star's normalisation level does not look like a long event
    sw = np.maximum(w.sum(axis=1), 1e-300)[:, None]
    swt = w @ flat_t
    # (in place, the same operations in the same order: fewer full-size temporaries)
    num = wr @ flat_t
    tmp = np.multiply(wr.sum(axis=1)[:, None], swt)
    tmp /= sw
    num -= tmp
    den = w @ flat_t2
    np.multiply(swt, swt, out=tmp)
    tmp /= sw
    den -= tmp
    del tmp
    num, den = num.reshape(n, n_shapes, m), den.reshape(n, n_shapes, m)
    # (the templates' weighted means, the amplitudes and the calibrated statistic are read
    # only at each hit's best template: computed there, not for every star x template x
    # centre)
    swt = swt.reshape(n, n_shapes, m)
    cover = (ok.astype(float) @ flat_t2).reshape(n, n_shapes, m)
    cover /= T2.sum(axis=2)[None]
    valid = np.greater_equal(cover, min_cover, out=np.empty(cover.shape, bool))
    valid &= den > 0
    del cover
    # (the values of np.where(valid, num / sqrt(den), 0) without its full-size temporaries:
    # these arrays are stars x templates x centres; the square root and the division over
    # all of them, then zeros where not valid, run ~2x faster than masked ufuncs)
    with np.errstate(invalid="ignore", divide="ignore"):
        S = np.sqrt(den)
        np.divide(num, S, out=S)
    np.copyto(S, 0.0, where=~valid)

    calib = np.ones(n_shapes)
    for j in range(n_shapes):  # a few dozen templates, not a loop over stars
        v = S[:, j, :][valid[:, j, :]]
        v = v[:: max(1, v.size // 20000)]  # a robust width needs no more points
        if v.size >= min_calibration_points:
            med = _median(v)
            calib[j] = max(1.0, 1.4826 * _median(np.abs(v - med)))
    # Z = S / calib (per template) is needed in full only for each star's extremes: no
    # full-size Z (see the hits below)

    # effective independent trials: stars x (samples / template width) x durations x signs
    mid = T[:, m // 2, :]
    width = np.maximum(mid.sum(axis=1) ** 2 / (mid * mid).sum(axis=1), 1.0)
    n_search = int(ok.any(axis=1).sum())
    n_trials = max(1.0, 2.0 * n_search * float(np.sum(m / width)) / len(SHAPE_AMPLITUDES))

    out: dict[str, list[np.ndarray]] = {k: [] for k in (
        "star", "kind", "sample", "t", "dur", "amp", "samp", "flu", "sig", "fap", "offset",
        "stepped")}
    step_dip_z = np.zeros(n)
    t_end = m * spp
    # smeared steps between consecutive samples, for the step test
    step_h = ndtr((np.arange(m)[None, :] - np.arange(1, m)[:, None] + 0.5)
                  / max(smear_sigma_s / spp, 1e-3))
    flat_s = S.reshape(n, -1)
    fine_cache: dict[tuple[float, float], np.ndarray] = {}
    integral_cache: dict[tuple[float, float], tuple[np.ndarray, np.ndarray]] = {}
    for sign, kind in ((1.0, "brightening"), (-1.0, "dip")):
        # detection on the calibrated statistic; the event's parameters from the template
        # that fits best (largest uncalibrated S, the likelihood): the calibration grows
        # slightly with duration on real data (red noise), and choosing by Z would then
        # bias the duration short and the amplitude high
        # (a dip's maximum of -Z is minus the minimum of Z: no negated full-size copy)
        # Every calib is >= 1, so |Z| <= |S| (rounding keeps the order): only a star whose
        # S passes the threshold somewhere can have a Z that does, and its extreme of Z is
        # the extreme of S over each template's centres divided by that template's calib
        # (a division by a positive number keeps the order of rounded values)
        s_ext = flat_s.max(axis=1) if sign > 0 else -flat_s.min(axis=1)
        cand = np.flatnonzero(s_ext > threshold)
        zmax = ((S[cand].max(axis=2) / calib[None, :]).max(axis=1) if sign > 0 else
                -(S[cand].min(axis=2) / calib[None, :]).min(axis=1))
        hit = cand[zmax > threshold]
        if hit.size == 0:
            continue
        best = (np.argmax(flat_s[hit], axis=1) if sign > 0 else
                np.argmin(flat_s[hit], axis=1))
        jd, jc = np.unravel_index(best, (n_shapes, m))
        zbest = np.zeros(n)
        zbest[hit] = sign * (S[hit, jd, jc] / calib[jd])
        # robustness: the event must survive losing its most significant sample
        mean_t = swt[hit, jd, jc] / sw[hit, 0]
        tz = T[jd, jc] - mean_t[:, None]                  # zero-mean template of each hit
        contrib = sign * wr[hit] * tz
        kmax = np.argmax(contrib, axis=1)
        num_loo = num[hit, jd, jc] - wr[hit, kmax] * tz[np.arange(hit.size), kmax]
        den_loo = den[hit, jd, jc] - w[hit, kmax] * tz[np.arange(hit.size), kmax] ** 2
        s_loo = sign * np.where(den_loo > 0, num_loo / np.sqrt(np.maximum(den_loo, 1e-300)), 0.0)
        z_loo = s_loo / calib[jd]
        keep = (z_loo >= 0.5 * zbest[hit]) & (z_loo >= 3.0)
        stepped = np.zeros(hit.size, bool)
        if step_test:
            # a dip that a step fits as well is a neighbour's edge; a brightening is only
            # when a step fits it better and the same curve's dip is such an edge (a
            # brightening cut by a trail's end is fitted by a step about as well, and the
            # point-lens events searched for are brightenings): judged after both signs
            stepped = _step_explains(r[hit], w[hit], ok[hit], S[hit, jd, jc], step_h,
                                     penalty=2.0 if sign < 0 else 0.0)
            if sign < 0:
                edge = hit[stepped & keep]
                step_dip_z[edge] = zbest[edge]
                keep &= ~stepped
        if shift is not None and shift_err is not None:
            se = shift_err[hit]
            okh = ok[hit] & np.isfinite(se) & (se > 0)
            ws = np.where(okh, 1.0 / np.where(okh, se, 1.0) ** 2, 0.0)
            sh = np.where(okh, shift[hit], 0.0)
            tt = T[jd, jc]
            # fit shift = c0 + c1 k + b T: the star's own centroid may drift slowly along the
            # trail (the drift direction varies a little across the CCD); only the part that
            # follows the event is the excess light's position
            kk = np.broadcast_to(np.arange(m, dtype=float) / m, tt.shape)
            basis = np.stack([np.ones_like(tt), kk, tt], axis=2)          # (h, m, 3)
            normal = np.einsum("hk,hki,hkj->hij", ws, basis, basis)
            rhs = np.einsum("hk,hki,hk->hi", ws, basis, sh)
            normal = normal + np.eye(3)[None] * 1e-12
            try:
                cov3 = np.linalg.inv(normal)
            except np.linalg.LinAlgError:
                cov3 = np.linalg.pinv(normal)
            coef = np.einsum("hij,hj->hi", cov3, rhs)
            b = coef[:, 2]
            sb = np.sqrt(np.maximum(cov3[:, 2, 2], 1e-300))
            with np.errstate(divide="ignore", invalid="ignore"):
                a_fit = np.where(valid[hit, jd, jc], num[hit, jd, jc] / den[hit, jd, jc], 0.0)
            a_safe = np.where(a_fit != 0, a_fit, np.inf)
            excess_at = -b / a_safe
            offset = np.abs(excess_at)
            off_drift = (np.abs(b) > 4.0 * sb) & (offset > max_offset_px)
            # the same with the star's measured excess (flux - 1) in place of the template:
            # a neighbour's light moves the centroid in proportion to whatever shape it gives
            # the curve (a step where its trail overlaps, not a bump), which the template
            # follows poorly; the star's own brightening leaves the centroid where it was
            basis[:, :, 2] = np.where(okh, r[hit], 0.0)
            normal_f = np.einsum("hk,hki,hkj->hij", ws, basis, basis) + np.eye(3)[None] * 1e-12
            rhs_f = np.einsum("hk,hki,hk->hi", ws, basis, sh)
            cov_f = np.linalg.pinv(normal_f)
            b_f = np.einsum("hij,hj->hi", cov_f, rhs_f)[:, 2]
            sb_f = np.sqrt(np.maximum(cov_f[:, 2, 2], 1e-300))
            off_flux = (np.abs(b_f) > 4.0 * sb_f) & (np.abs(b_f) > max_offset_px)
            # longer events are also judged by that (blends); short ones by the template fit
            # alone, so a flash that landed on the trail is recognised below
            off_line = off_drift | (off_flux & (shape_dur[jd] > flash_max_duration_s))
            # short excess light beside the line: a flash that landed on the trail (kept, as a
            # flash at its own position); longer: a neighbour's light (dropped)
            is_flash = off_drift & (shape_dur[jd] <= flash_max_duration_s) & \
                (offset <= flash_max_offset_px) & (sign > 0)
            keep &= ~off_line | is_flash
            signed_off = np.where(is_flash, excess_at, 0.0)
        else:
            is_flash = np.zeros(hit.size, bool)
            signed_off = np.zeros(hit.size)
        hit, jd, jc = hit[keep], jd[keep], jc[keep]
        is_flash, signed_off = is_flash[keep], signed_off[keep]
        stepped = stepped[keep] & (sign > 0) & ~is_flash
        if hit.size == 0:
            continue
        zc = S[hit, jd, jc] / calib[jd]
        # the grid gave the detection; the parameters come from a finer fit around it
        # (durations a quarter octave apart, peak time to a tenth of a sample), so the
        # amplitude of an event longer than the smear is not off by the grid's spacing
        tp, dur_fit, amp_shape, a_int, peak = _fine_fit(
            r[hit], w[hit], t[hit], t[hit, jc], sign, spp, smear_sigma_s, smear_kernel,
            float(durations.min()), float(durations.max()), shape_dur[jd], fine_cache)
        a_smeared = a_int * peak
        # fluence within the exposure: the fitted intrinsic shape integrated over [0, t_end]
        fluence = a_int * _shape_integral(dur_fit, amp_shape, -tp, t_end - tp, t_end,
                                          integral_cache)
        sig = sign * zc
        p1 = ndtr(-sig)
        fap = -np.expm1(n_trials * np.log1p(-np.minimum(p1, 1 - 1e-16)))
        out["star"].append(hit)
        out["kind"].append(np.where(is_flash, "flash", kind))
        out["offset"].append(signed_off)
        out["sample"].append(jc)
        out["t"].append(tp)
        out["dur"].append(dur_fit)
        out["amp"].append(a_int)
        out["samp"].append(a_smeared)
        out["flu"].append(fluence)
        out["sig"].append(sig)
        out["fap"].append(fap)
        out["stepped"].append(stepped)

    def cat(key: str, dtype: type) -> np.ndarray:
        return np.concatenate(out[key]).astype(dtype) if out[key] else np.zeros(0, dtype)

    # one candidate per star, the most significant: with the baseline fitted, a strong event
    # makes the rest of its curve look like a weaker event of the opposite sign
    sig_all = cat("sig", float)
    # a brightening weaker than its curve's dip that a step explained, that the step fits
    # better too: the curve's main feature is the step
    drop = cat("stepped", bool) & (step_dip_z[cat("star", np.int64)] > sig_all)
    sig_all = np.where(drop, -np.inf, sig_all)
    order = np.argsort(-sig_all, kind="stable")
    order = order[~drop[order]]
    _, first = np.unique(cat("star", np.int64)[order], return_index=True)
    order = order[np.sort(first)]
    return EventCandidates(
        star=cat("star", np.int64)[order], kind=cat("kind", object)[order].astype(str),
        sample=cat("sample", np.int64)[order], t_peak_s=cat("t", float)[order],
        duration_s=cat("dur", float)[order], amplitude=cat("amp", float)[order],
        smeared_amplitude=cat("samp", float)[order], fluence=cat("flu", float)[order],
        significance=cat("sig", float)[order], false_alarm=cat("fap", float)[order],
        offset_px=cat("offset", float)[order], calibration=calib, durations=shape_dur,
    )
