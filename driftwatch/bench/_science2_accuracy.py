"""Accuracy of Science II against simulator truth (used by :mod:`driftwatch.bench.science2`).

Every figure here is measured on simulated CCDs (``driftwatch.simulate``) reduced by the real
``reduce_ccd`` stages (``driftwatch.pipeline.ccd._reduce``: read, detect, classify, extract,
normalise, search), then compared with the simulator's truth tables.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

AMP_BINS = (0.05, 0.15, 0.3, 0.5)
DUR_BINS = (0.3, 1.0, 2.5, 5.0)


def _reduce_sim(folder: Path, seed: int, *, shape: tuple[int, int], n_stars: int,
                n_brightenings: int, n_flashes: int, n_streaks: int, expnum: int) -> dict:
    from driftwatch.bench.science2 import _task, simulated_ccd
    from driftwatch.pipeline.ccd import _reduce, _Timer

    scene, render, img, dq = simulated_ccd(folder, seed=seed, shape=shape, n_stars=n_stars,
                                           n_brightenings=n_brightenings, n_flashes=n_flashes,
                                           n_streaks=n_streaks, expnum=expnum)
    task = _task(img, dq, folder / "out", scene.ccd, expnum)
    res = _reduce(task, _Timer())
    img.unlink()
    if dq is not None:
        dq.unlink()
    tr = res.tables["trails"]
    n = len(tr["trail_id"])
    lc = res.tables["lightcurves"]
    m = len(lc["sample"]) // max(n, 1) if n else 0
    curves = {k: np.asarray(lc[k]).reshape(n, m) for k in
              ("t_s", "flux", "flux_err", "norm_flux", "norm_flux_err", "good")} if n else {}
    return {"scene": scene, "render": render, "res": res, "trails": tr, "curves": curves,
            "cands": res.tables["candidates"], "sources": res.tables["sources"]}


def _match_trails(tr: dict, truth: Any, tol: float = 1.5) -> np.ndarray:
    """Index of the detected trail of each truth star (-1: none within ``tol`` px of x0, y0)."""
    from scipy.spatial import cKDTree

    out = np.full(len(truth), -1, dtype=np.int64)
    if len(tr["x0"]) == 0:
        return out
    d, j = cKDTree(np.c_[tr["x0"], tr["y0"]]).query(np.c_[truth.x0, truth.y0])
    out[d <= tol] = j[d <= tol]
    return out


def _scint_per_sample(rms: float, spp: float, smear_sigma_s: float, rng: np.random.Generator,
                      n: int = 4000) -> float:
    """Per-sample rms of the simulator's scintillation after the along-trail PSF smear."""
    dt = 0.01
    t = np.arange(0.0, 20.0, dt)
    nodes = rng.normal(0.0, rms, (n, int(20.0 / 0.25) + 1))
    tc = np.linspace(0.0, 20.0, nodes.shape[1])
    k = np.arange(-4 * smear_sigma_s, 4 * smear_sigma_s + dt, dt)
    kern = np.exp(-0.5 * (k / smear_sigma_s) ** 2)
    kern /= kern.sum()
    i = t.size // 2
    # value at one sample time: interpolated nodes smoothed by the smear (linear, so per row)
    seg = np.arange(i - k.size // 2, i - k.size // 2 + k.size)
    pos = t[seg] / 20.0 * (nodes.shape[1] - 1)
    i0 = np.minimum(np.floor(pos).astype(int), nodes.shape[1] - 2)
    f = pos - i0
    vals = nodes[:, i0] * (1 - f) + nodes[:, i0 + 1] * f
    del tc, spp
    return float(np.std(vals @ kern))


def _photometry(runs: list[dict], rng: np.random.Generator) -> dict[str, Any]:
    from driftwatch.science.photometry import LineProfile

    ratios, raw_r, norm_r = [], [], []
    for run in runs:
        scene, render, tr, cv = run["scene"], run["render"], run["trails"], run["curves"]
        truth = render.trails
        if not len(tr["x0"]):
            continue
        ev_stars = set(render.events.loc[render.events.kind == "brightening", "star_id"])
        L = np.hypot(truth.x1 - truth.x0, truth.y1 - truth.y0).median()
        # isolated: no other star brighter than 1 % of it within the trail box + 12 px across
        x, y, f = truth.x0.values, truth.y0.values, truth.flux_adu.values
        dx = np.abs(x[:, None] - x[None, :])
        dy = np.abs(y[:, None] - y[None, :])
        close = (dx < L + 15) & (dy < 14) & (f[None, :] > 0.01 * f[:, None])
        np.fill_diagonal(close, False)
        iso = (~close.any(axis=1) & (truth.on_ccd.values > 0.999) & ~truth.saturated.values
               & ~truth.star_id.isin(ev_stars).values)
        j = _match_trails(tr, truth)
        sel = np.flatnonzero(iso & (j >= 0))
        if sel.size == 0:
            continue
        spp = scene.exptime / L
        prof = LineProfile.moffat(scene.fwhm_px, scene.moffat_beta)
        d = np.arange(-7, 8, dtype=float)
        p = prof.pixel(d)
        F = truth.flux_adu.values[sel] / (scene.exptime / spp)   # ADU per sample, interior
        V = (render.sky_adu + F[:, None] * p[None, :]) / scene.gain + \
            (scene.read_noise_e / scene.gain) ** 2
        var_phot = 1.0 / (p[None, :] ** 2 / V).sum(axis=1)
        s_scint = _scint_per_sample(scene.scintillation_rms, spp, prof.sigma * spp, rng)
        expected = np.sqrt(var_phot / F ** 2 + s_scint ** 2)
        nf = cv["norm_flux"][j[sel]]
        good = cv["good"][j[sel]].astype(bool)
        v = np.where(good, nf, np.nan)
        med = np.nanmedian(v, axis=1)
        scatter = 1.4826 * np.nanmedian(np.abs(v - med[:, None]), axis=1)
        ok = np.isfinite(scatter) & (good.sum(axis=1) >= 15)
        ratios.extend((scatter / expected)[ok].tolist())
        # correlations between different isolated stars, raw and normalised
        raw = cv["flux"][j[sel]][ok]
        nn = nf[ok]
        gg = good[ok]
        common = gg.all(axis=0)
        if ok.sum() >= 3 and common.sum() >= 10:
            for arr, dest in ((raw, raw_r), (nn, norm_r)):
                a = arr[:, common]
                a = (a - a.mean(axis=1, keepdims=True)) / a.std(axis=1, keepdims=True)
                c = a @ a.T / a.shape[1]
                iu = np.triu_indices(len(c), 1)
                dest.extend(c[iu].tolist())
    r = np.asarray(ratios)
    out = {"n_stars": int(r.size)}
    if r.size:
        out.update(scatter_over_expected_median=float(np.median(r)),
                   scatter_over_expected_p16_p84=[float(np.percentile(r, 16)),
                                                  float(np.percentile(r, 84))],
                   fraction_within_1_15=float(np.mean(r <= 1.15)))
    if norm_r:
        nr, rr = np.asarray(norm_r), np.asarray(raw_r)
        out.update(mean_corr_raw=float(rr.mean()), mean_corr_normalised=float(nr.mean()),
                   corr_normalised_sem=float(nr.std() / np.sqrt(nr.size)), n_pairs=int(nr.size))
    return out


def _injection(runs: list[dict]) -> dict[str, Any]:
    from driftwatch.science.events import smeared_shape
    from driftwatch.science.photometry import LineProfile
    from driftwatch.simulate.scene import paczynski_magnification

    rows = []
    for run in runs:
        scene, render, tr, cv, ca = (run["scene"], run["render"], run["trails"], run["curves"],
                                     run["cands"])
        truth = render.trails.set_index("star_id")
        ev = render.events[render.events.kind == "brightening"]
        if ev.empty or not len(tr["x0"]):
            continue
        j_all = _match_trails(tr, render.trails)
        jmap = dict(zip(render.trails.star_id.values, j_all))
        t0 = truth.iloc[0]
        spp = scene.exptime / np.hypot(t0.x1 - t0.x0, t0.y1 - t0.y0)
        smear_s = scene.fwhm_px / 2.3548 * spp
        lsf = LineProfile.moffat(scene.fwhm_px, scene.moffat_beta)
        cand_trail = np.asarray(ca["trail_id"], dtype=object)
        for _, e in ev.iterrows():
            j = int(jmap.get(e.star_id, -1))
            row = {"amp": e.amplitude, "dur": e.duration_s, "t": e.t_peak_s, "detected": j >= 0}
            grid = np.linspace(0.0, scene.exptime, 4001)
            row["fluence"] = float(np.trapezoid(
                paczynski_magnification(grid, e.t_peak_s, e.amplitude, e.duration_s) - 1.0, grid))
            shape_peak = float(smeared_shape(np.array([0.0]), e.duration_s, smear_s,
                                             e.amplitude, lambda t: lsf.pixel(t / spp))[0])
            row["smeared_peak"] = e.amplitude * shape_peak
            row["noise"] = np.nan
            row["found"] = False
            if j >= 0:
                good = cv["good"][j].astype(bool)
                if good.sum() >= 10:
                    row["noise"] = float(np.median(cv["norm_flux_err"][j][good]))
                tid = tr["trail_id"][j]
                hit = np.flatnonzero(cand_trail == tid)
                row["trail"] = str(tid)
                row["searched"] = bool(tr["searched"][j]) if "searched" in tr else None
                row["cand_t"] = [float(ca["t_peak_s"][h]) for h in hit]
                for h in hit:
                    if ca["kind"][h] == "brightening" and abs(ca["t_peak_s"][h] - e.t_peak_s) <= 0.5:
                        row["found"] = True
                        row["t_err"] = float(ca["t_peak_s"][h] - e.t_peak_s)
                        row["fluence_ratio"] = float(ca["fluence"][h] / row["fluence"])
                        row["amp_ratio"] = float(ca["amplitude"][h] / e.amplitude)
            row["longer_than_smear"] = e.duration_s > 2.3548 * smear_s
            rows.append(row)
    if not rows:
        return {"n_injected": 0}
    elig = [r for r in rows if np.isfinite(r["noise"]) and r["smeared_peak"] >= 5 * r["noise"]]
    found = [r for r in elig if r["found"]]
    flu_ok = [abs(r["fluence_ratio"] - 1) <= 0.2 for r in found]
    amp_ok = [abs(r["amp_ratio"] - 1) <= 0.2 for r in found if r["longer_than_smear"]]
    table = []
    for a0, a1 in zip(AMP_BINS[:-1], AMP_BINS[1:]):
        for d0, d1 in zip(DUR_BINS[:-1], DUR_BINS[1:]):
            cell = [r for r in rows if a0 <= r["amp"] < a1 and d0 <= r["dur"] < d1]
            ce = [r for r in cell if r in elig]
            table.append(f"amp {a0:.2f}-{a1:.2f} dur {d0:.1f}-{d1:.1f}s: "
                         f"all {sum(r['found'] for r in cell)}/{len(cell)}, "
                         f"smeared peak>=5 sigma {sum(r['found'] for r in ce)}/{len(ce)}")
    # the eligible events missed, and why: not searched, searched without a candidate, or a
    # candidate at another time
    missed = []
    for r in elig:
        if r["found"]:
            continue
        why = ("star not searched" if r.get("searched") is False else
               f"candidate at {', '.join(f'{t:.2f}' for t in r['cand_t'])} s" if r.get("cand_t")
               else "no candidate")
        missed.append(f"{r.get('trail')} amp {r['amp']:.3f} dur {r['dur']:.2f} s t_peak "
                      f"{r['t']:.2f} s peak/noise {r['smeared_peak'] / r['noise']:.1f}: {why}")
    return {
        "n_injected": len(rows), "n_detected_star": sum(r["detected"] for r in rows),
        "n_eligible": len(elig), "recovered_eligible": len(found) / max(len(elig), 1),
        "recovered_all": sum(r["found"] for r in rows) / len(rows),
        "t_err_abs_median_s": float(np.median([abs(r["t_err"]) for r in found])) if found else None,
        "fluence_within_20pct": float(np.mean(flu_ok)) if flu_ok else None,
        "fluence_ratio_median": float(np.median([r["fluence_ratio"] for r in found])) if found else None,
        "amplitude_within_20pct_longer_than_smear": float(np.mean(amp_ok)) if amp_ok else None,
        "n_longer_than_smear_found": len(amp_ok),
        "table": table,
        "missed": missed,
    }


def _classes(runs: list[dict]) -> dict[str, Any]:
    n_flash = n_flash_found = n_flash_any = 0
    n_streak = n_streak_cls = 0
    streak_cands = cr_cands = 0
    n_cr = 0
    for run in runs:
        scene, render, ca, so = run["scene"], run["render"], run["cands"], run["sources"]
        ev = render.events
        cx, cy = np.asarray(ca["x"], float), np.asarray(ca["y"], float)
        kinds = np.asarray(ca["kind"], dtype=object)
        dur = np.asarray(ca["duration_s"], float)
        sky_sig = render.sky_sigma_adu
        sig = scene.fwhm_px / 2.3548
        for _, f in ev[ev.kind == "flash"].iterrows():
            snr = f.amplitude / (sky_sig * np.sqrt(4 * np.pi) * sig)
            if snr <= 10:
                continue
            n_flash += 1
            near = np.hypot(cx - f.x, cy - f.y) <= 3.0
            n_flash_found += bool((near & (kinds == "flash")).any())
            n_flash_any += bool((near & ((kinds == "flash") | (dur <= 0.6))).any())
        scls = np.asarray(so["class"], dtype=object)
        sx, sy, th = (np.asarray(so[k], float) for k in ("x", "y", "theta"))
        for _, s in ev[ev.kind == "streak"].iterrows():
            n_streak += 1
            ux, uy = s.x_end - s.x_start, s.y_end - s.y_start
            ln = np.hypot(ux, uy)
            ux, uy = ux / ln, uy / ln
            # distance of candidates from the streak's line
            dline = np.abs((cx - s.x_start) * uy - (cy - s.y_start) * ux)
            streak_cands += int((dline <= 2 * scene.fwhm_px).sum())
            ds = np.abs((sx - s.x_start) * uy - (sy - s.y_start) * ux)
            ang = np.abs(np.angle(np.exp(2j * (th - np.arctan2(uy, ux))))) / 2
            n_streak_cls += bool(((scls == "streak") & (ds <= 10) &
                                  (ang < np.radians(5))).any())
        for _, c in ev[ev.kind == "cosmic"].iterrows():
            n_cr += 1
            cr_cands += int((np.hypot(cx - c.x, cy - c.y) <= 3.0).any())
    return {"flashes_snr_gt_10": n_flash,
            "flash_found_as_flash": n_flash_found / max(n_flash, 1),
            "flash_found_flash_or_short_brightening": n_flash_any / max(n_flash, 1),
            "streaks": n_streak, "streak_classified": n_streak_cls / max(n_streak, 1),
            "candidates_on_streaks": streak_cands, "cosmic_rays": n_cr,
            "candidates_on_cosmic_rays": cr_cands}


def accuracy(tmp: Path, quick: bool = False,
             seeds: tuple[int, ...] | None = None,
             null_seeds: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Injection-recovery, photometry, classification and false candidates vs truth.

    ``seeds`` replaces the injected CCDs' seeds (101-108; quick: 101, 102), e.g. 109-116 to
    check on CCDs that no setting was chosen on; ``null_seeds`` those of the CCDs without
    injected events (200-219; quick: 200-202), e.g. 220-239. Each false candidate is listed
    (seed, kind, trail, x, y, t_peak) so that it can be looked up in the truth tables.
    """
    from driftwatch.simulate.focalplane import FULL_SHAPE

    rng = np.random.default_rng(2024)
    t0 = time.perf_counter()
    if seeds is None:
        seeds = (101, 102) if quick else tuple(range(101, 109))
    inj_runs = [_reduce_sim(tmp / f"inj{s}", s, shape=FULL_SHAPE, n_stars=2300,
                            n_brightenings=80, n_flashes=15, n_streaks=2, expnum=2000000 + s)
                for s in seeds]
    out: dict[str, Any] = {
        "injection": _injection(inj_runs),
        "classes": _classes(inj_runs),
    }
    if null_seeds is None:
        null_seeds = tuple(range(200, 203 if quick else 220))
    n_false = len(null_seeds)
    false_runs = [_reduce_sim(tmp / f"null{s}", s, shape=FULL_SHAPE, n_stars=2300,
                              n_brightenings=0, n_flashes=0, n_streaks=1, expnum=3000000 + s)
                  for s in null_seeds]
    counts = [len(r["cands"]["kind"]) for r in false_runs]
    kinds = [str(k) for r in false_runs for k in r["cands"]["kind"]]
    listed = [f"seed {s}: {c['kind'][i]} trail {c['trail_id'][i]} at ({c['x'][i]:.1f}, "
              f"{c['y'][i]:.1f}) t_peak {c['t_peak_s'][i]:.2f} s"
              for s, r in zip(null_seeds, false_runs) for c in (r["cands"],)
              for i in range(len(c["kind"]))]
    out["false"] = {"ccds": n_false, "candidates_total": int(sum(counts)),
                    "per_10_ccds": 10.0 * sum(counts) / n_false, "per_ccd": counts,
                    "by_kind": {k: kinds.count(k) for k in sorted(set(kinds))},
                    "candidates": listed}
    out["photometry"] = _photometry(false_runs + inj_runs, rng)
    out["accuracy_seconds"] = time.perf_counter() - t0
    return out
