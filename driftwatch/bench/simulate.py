"""Benchmark the simulator (full-size CCD render) and CCD reading (astropy vs fitsio).

``run(quick)`` returns plain figures: medians with min/max over repeated runs, in seconds.
The machine may be shared; compare medians, not single runs.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fitsio
import numpy as np
from astropy.io import fits

from driftwatch.io.decam import CCD_NAMES, read_ccd
from driftwatch.simulate.generate import quick_scene
from driftwatch.simulate.render import render_ccd
from driftwatch.simulate.night import NightSpec, simulate_night

__all__ = ["run"]


def _timed(fn: Callable[[], object], repeats: int) -> dict:
    """Wall time (median/min/max) and the process CPU time median (less hurt by sharing)."""
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "cpu_median_s": round(statistics.median(cpu), 4),
            "runs": repeats}


def _read_astropy(path: Path, ccd: str) -> np.ndarray:
    with fits.open(path, memmap=False) as hl:
        return np.asarray(hl[ccd].data, dtype=np.float32)


def _read_fitsio(path: Path, ccd: str) -> np.ndarray:
    with fitsio.FITS(str(path)) as f:
        return f[ccd].read()


def run(quick: bool = False) -> dict:
    """Time a full-size (4094 x 2046) CCD render with 1,000 stars, and full-size CCD reads."""
    repeats = 3 if quick else 7
    out: dict = {}
    scene, stars = quick_scene(shape=(4094, 2046), n_stars=1000, seed=1, n_brightenings=2,
                               n_flashes=1, n_streaks=1)
    render_ccd(scene)  # warm-up (imports, FFT plans)
    out["render_full_ccd_1000_stars"] = {**_timed(lambda: render_ccd(scene), repeats),
                                         "stars_in_scene": len(stars)}
    with tempfile.TemporaryDirectory() as tmp:
        reads: dict = {}
        for compress in (False, True):
            spec = NightSpec(shape=(4094, 2046), stars_per_ccd=300, n_drift=1, pointed_bands=(),
                             ccds=("S4", "N4"), compress=compress)
            t0 = time.perf_counter()
            truth = simulate_night(Path(tmp) / ("fz" if compress else "plain"), spec)
            write_s = time.perf_counter() - t0
            path = truth.files[0]
            kind = "fits.fz" if compress else "fits"
            reads[kind] = {
                "write_2_ccd_exposure_s": round(write_s, 3),
                "astropy": _timed(lambda: _read_astropy(path, "N4"), repeats),
                "fitsio": _timed(lambda: _read_fitsio(path, "N4"), repeats),
                "read_ccd": _timed(lambda: read_ccd(path, "N4"), repeats),
            }
        out["read_full_ccd"] = reads
        # finding one CCD in a 62-extension file (headers as the simulator writes them)
        spec = NightSpec(shape=(64, 32), stars_per_ccd=0, n_drift=1, pointed_bands=(),
                         ccds=CCD_NAMES)
        path = simulate_night(Path(tmp) / "mef", spec).files[0]
        last = CCD_NAMES[-1]
        out["find_last_of_62_extensions"] = {
            "astropy": _timed(lambda: _read_astropy(path, last), repeats),
            "fitsio": _timed(lambda: _read_fitsio(path, last), repeats),
        }
    return out


if __name__ == "__main__":
    res = run()
    r = res["render_full_ccd_1000_stars"]
    print(f"{'what (wall seconds)':44s} {'median':>8s} {'min':>8s} {'max':>8s} {'cpu med':>8s}")
    print(f"{'render 4094x2046 CCD, 1000 stars':44s} {r['median_s']:8.3f} {r['min_s']:8.3f} "
          f"{r['max_s']:8.3f} {r['cpu_median_s']:8.3f}")
    for kind, d in res["read_full_ccd"].items():
        for how in ("astropy", "fitsio", "read_ccd"):
            v = d[how]
            print(f"{'read full CCD (' + kind + ') ' + how:44s} {v['median_s']:8.3f} {v['min_s']:8.3f} {v['max_s']:8.3f}")
    for how, v in res["find_last_of_62_extensions"].items():
        print(f"{'read last CCD of a 62-extension file ' + how:44s} {v['median_s']:8.3f} {v['min_s']:8.3f} {v['max_s']:8.3f}")
    print(json.dumps(res))
