"""Science II benchmark: speed and memory of ``reduce_ccd``, and its accuracy against truth.

``run(quick)`` returns plain figures:

- ``speed``: ``reduce_ccd`` of a full-size simulated CCD with ~1,000+ detected trails, read and
  write included, in fresh subprocesses (one core each, ``OMP/OPENBLAS_NUM_THREADS=1``; the
  modules imported and one CCD reduced before the clock starts, as in a long-lived worker
  whose caches are warm): wall time median/min/max over runs, per-stage medians, and the
  peak resident memory of the child (``VmHWM``: ``ru_maxrss`` would include the parent's
  size from before exec) with the resident size after the imports alone; all of that for
  the second CCD of each process, and again (``steady_*``) for its next ``steady`` CCDs,
  the steady state of a worker that reduces CCD after CCD (its heap grown to what a CCD
  needs, so no fresh pages to fault in).
- ``photometry``: for isolated, unsaturated, detected stars of simulated CCDs: the ratio of the
  normalised light-curve scatter to the noise expected from the simulator's noise model
  (photon + sky + read noise of the true flux through the same optimal weights, plus the
  simulator's scintillation), and the mean correlation between different stars' curves.
- ``injection``: recovery of injected brightenings against their PSF-smeared peak over the
  per-sample noise, time of peak, fluence and amplitude errors, as a table by amplitude and
  duration.
- ``false``: candidates on CCDs with no injected events (brightenings, flashes), per CCD.
- ``classes``: flashes found as ``flash`` candidates, streaks classified, cosmic rays that
  became candidates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run", "write_exposure", "simulated_ccd"]


def write_exposure(folder: Path, scene: Any, render: Any, *, expnum: int = 1000001,
                   ra0: float = 150.0, dec0: float = -20.0, mjd: float = 60000.25,
                   with_dq: bool = True, compress: bool = False) -> tuple[Path, Path | None]:
    """Write a simulated CCD as a one-CCD CP-like image file (and DQ mask file).

    The WCS cards are the simulator's TPV focal-plane WCS of the same pointing, so the file's
    WCS is the truth (astrometric refinement is exercised elsewhere). ``compress``: RICE_1
    ``.fits.fz`` files quantised as the simulator's nights are (CP's layout), else plain.
    """
    from astropy.io import fits
    from astropy.time import Time

    from driftwatch.io.decam import CCDNUM
    from driftwatch.simulate.focalplane import ccd_wcs_header

    folder.mkdir(parents=True, exist_ok=True)
    date_obs = Time(mjd, format="mjd").isot
    primary = fits.Header()
    primary["EXPNUM"] = expnum
    primary["EXPTIME"] = scene.exptime
    primary["DATE-OBS"] = date_obs
    primary["MJD-OBS"] = mjd
    primary["FILTER"] = "VR DECam c0007 6300.0 2600.0"
    primary["OBSTYPE"] = "object"
    primary["PROCTYPE"] = "InstCal"
    ext = ccd_wcs_header(scene.ccd, ra0, dec0, scene.shape)
    ext["CCDNUM"] = CCDNUM[scene.ccd]
    ext["GAINA"] = ext["GAINB"] = scene.gain
    ext["RDNOISEA"] = ext["RDNOISEB"] = scene.read_noise_e
    ext["SATURATE"] = scene.saturate_adu
    ext["FWHM"] = scene.fwhm_px
    ext["AVSKY"] = render.sky_adu
    ext["AVSIG"] = render.sky_sigma_adu
    suffix = ".fits.fz" if compress else ".fits"

    def hdu(data: np.ndarray, quantize: bool) -> fits.ImageHDU | fits.CompImageHDU:
        if not compress:
            return fits.ImageHDU(data, header=ext, name=scene.ccd)
        kw = dict(quantize_level=4.0, quantize_method=1, dither_seed=-1) if quantize else {}
        return fits.CompImageHDU(data, header=ext, name=scene.ccd, compression_type="RICE_1",
                                 **kw)

    img = folder / f"c4d_sim_{expnum}_ooi_VR_v1{suffix}"
    fits.HDUList([fits.PrimaryHDU(header=primary), hdu(render.image, True)]).writeto(
        img, overwrite=True)
    dq = None
    if with_dq:
        primary["PRODTYPE"] = "dqmask"
        dq = folder / f"c4d_sim_{expnum}_ood_VR_v1{suffix}"
        fits.HDUList([fits.PrimaryHDU(header=primary), hdu(render.dq, False)]).writeto(
            dq, overwrite=True)
    return img, dq


def simulated_ccd(folder: Path, *, seed: int, shape: tuple[int, int], n_stars: int,
                  n_brightenings: int = 0, n_flashes: int = 0, n_streaks: int = 0,
                  options: Any = None, expnum: int = 1000001, fwhm_px: float = 4.5,
                  compress: bool = False, **kw: Any) -> tuple[Any, Any, Path, Path | None]:
    """Render one simulated CCD and write it: returns (scene, render, image path, DQ path)."""
    from driftwatch.simulate.generate import quick_scene
    from driftwatch.simulate.render import render_ccd
    from driftwatch.simulate.scene import RenderOptions

    scene, _ = quick_scene(shape=shape, n_stars=n_stars, seed=seed,
                           n_brightenings=n_brightenings, n_flashes=n_flashes,
                           n_streaks=n_streaks, fwhm_px=fwhm_px, **kw)
    render = render_ccd(scene, options or RenderOptions())
    img, dq = write_exposure(folder, scene, render, expnum=expnum, compress=compress)
    return scene, render, img, dq


def _task(img: Path, dq: Path | None, out: Path, ccd: str, expnum: int,
          alerts: bool = False) -> Any:
    from driftwatch.config import PipelineConfig
    from driftwatch.tasks import CcdTask

    return CcdTask(image_path=str(img), ccd=ccd, out_dir=str(out), pipeline=PipelineConfig(),
                   expnum=expnum, input_checksum="bench", dq_path=str(dq) if dq else None,
                   alerts_enabled=alerts)


_CHILD = r"""
import json, sys, time
from pathlib import Path


def hwm_mb():
    # peak resident size of this process image: VmHWM (ru_maxrss would carry over the
    # parent's size from before exec, the benchmark process holding its rendered CCDs)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# a worker imports once and reduces many CCDs: imports are not part of the per-CCD cost
import pyarrow.parquet, scipy.ndimage, scipy.special, scipy.spatial  # noqa: F401
import driftwatch.io.decam, driftwatch.io.products  # noqa: F401
import driftwatch.science.background, driftwatch.science.trails  # noqa: F401
import driftwatch.science.classify, driftwatch.science.events  # noqa: F401
import driftwatch.science.normalise, driftwatch.science.photometry  # noqa: F401
import driftwatch.science.sky  # noqa: F401
from driftwatch.bench.science2 import _task
from driftwatch.pipeline.ccd import reduce_ccd
import tempfile, numpy as np
from driftwatch.io.products import write_table
with tempfile.TemporaryDirectory() as d:  # pyarrow's first write initialises itself once
    write_table(Path(d) / "w.parquet", {"a": np.arange(3)}, {})
rss0 = hwm_mb()
a = json.loads(sys.argv[1])
# a worker's first CCD also fills its caches (line-profile tables): that one is not timed
reduce_ccd(_task(Path(a["img"]), Path(a["dq"]), Path(a["out"] + "-warm"), a["ccd"], a["expnum"]))
task = _task(Path(a["img"]), Path(a["dq"]), Path(a["out"]), a["ccd"], a["expnum"])
t0 = time.perf_counter()
s = reduce_ccd(task)
wall = time.perf_counter() - t0
hwm2 = hwm_mb()
# then the steady state of a long-lived worker (it reduces up to workers.max_tasks_per_worker
# CCDs): its third and later CCDs, once its heap has grown to what a CCD needs
steady = []
for k in range(a["steady"]):
    t1 = time.perf_counter()
    sk = reduce_ccd(_task(Path(a["img"]), Path(a["dq"]), Path(a["out"] + f"-s{k}"), a["ccd"],
                          a["expnum"]))
    steady.append({"wall": time.perf_counter() - t1, "timings": sk.timings, "ok": sk.ok})
print(json.dumps({"ok": s.ok, "error": s.error, "wall": wall, "timings": s.timings,
                  "n_trails": s.n_trails, "import_rss_mb": rss0, "maxrss_mb": hwm2,
                  "steady": steady, "steady_maxrss_mb": hwm_mb()}))
"""

def _speed(tmp: Path, runs: int, steady: int = 3, n_stars: int = 2300,
           compress: bool = False) -> dict[str, Any]:
    """Time ``reduce_ccd`` of one full-size CCD (seed 11) in ``runs`` fresh processes."""
    from driftwatch.simulate.focalplane import FULL_SHAPE

    folder = tmp / f"speed-{n_stars}-{'fz' if compress else 'fits'}"
    scene, render, img, dq = simulated_ccd(folder, seed=11, shape=FULL_SHAPE,
                                           n_stars=n_stars, n_brightenings=10, n_flashes=3,
                                           n_streaks=1, compress=compress)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res = []
    for i in range(runs):
        arg = json.dumps({"img": str(img), "dq": str(dq), "out": str(folder / f"out{i}"),
                          "ccd": scene.ccd, "expnum": 1000001, "steady": steady})
        p = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True,
                           env=env, check=True)
        res.append(json.loads(p.stdout.strip().splitlines()[-1]))
    walls = np.array([r["wall"] for r in res])
    stages = sorted({k for r in res for k in r["timings"]})
    return {
        "input": f"{n_stars} stars, {'RICE_1 .fits.fz' if compress else 'uncompressed .fits'}",
        "n_trails": res[0]["n_trails"], "ok": all(r["ok"] for r in res),
        "error": next((r["error"] for r in res if r["error"]), None),
        "wall_s": {"median": float(np.median(walls)), "min": float(walls.min()),
                   "max": float(walls.max()), "runs": runs},
        "stages_s": {k: float(np.median([r["timings"].get(k, 0.0) for r in res]))
                     for k in stages},
        "steady_wall_s": _spread_of([x["wall"] for r in res for x in r["steady"]]),
        "steady_stages_s": {k: float(np.median([x["timings"].get(k, 0.0) for r in res
                                                for x in r["steady"]])) for k in stages},
        "peak_rss_mb": float(max(r["maxrss_mb"] for r in res)),
        "steady_peak_rss_mb": float(max(r["steady_maxrss_mb"] for r in res)),
        "import_rss_mb": float(max(r["import_rss_mb"] for r in res)),
    }


def _spread_of(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, float)
    if v.size == 0:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "runs": 0}
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "runs": int(v.size)}


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; ``quick`` uses fewer runs and seeds."""
    from driftwatch.bench import _science2_accuracy as acc

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dw-bench-sci2-") as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        out["speed"] = _speed(tmp, runs=3 if quick else 7, steady=1 if quick else 3)
        if not quick:
            # issue 8's case: ~1,000 trails, compressed as CP delivers its CCDs
            out["speed_decam"] = _speed(tmp, runs=5, steady=3, n_stars=1550, compress=True)
        out.update(acc.accuracy(tmp, quick=quick))
        out["bench_seconds"] = time.perf_counter() - t0
    return out


def _print(res: dict[str, Any]) -> None:
    for key in ("speed", "speed_decam"):
        if key in res:
            _print_speed(res[key])
    for key in ("photometry", "false", "classes"):
        if key in res:
            print(f"{key}: {json.dumps(res[key], default=float)}")
    if "injection" in res:
        inj = res["injection"]
        print(f"injection: {json.dumps({k: v for k, v in inj.items() if k != 'table'})}")
        for row in inj.get("table", []):
            print("   ", row)


def _print_speed(sp: dict[str, Any]) -> None:
    print(f"reduce_ccd, full-size CCD ({sp.get('input', '')}), {sp['n_trails']} trails, one "
          f"core ({sp['wall_s']['runs']} fresh processes):")
    print(f"  wall median {sp['wall_s']['median']:.3f} s (min {sp['wall_s']['min']:.3f}, "
          f"max {sp['wall_s']['max']:.3f}); peak RSS {sp['peak_rss_mb']:.0f} MB "
          f"(imports alone {sp['import_rss_mb']:.0f} MB)")
    for k, v in sp["stages_s"].items():
        print(f"    {k:<11s} {v:.3f} s")
    st = sp["steady_wall_s"]
    print(f"  steady state (CCDs 3 onwards of each process, {st['runs']} CCDs): median "
          f"{st['median']:.3f} s (min {st['min']:.3f}, max {st['max']:.3f}); peak RSS "
          f"{sp['steady_peak_rss_mb']:.0f} MB")
    for k, v in sp["steady_stages_s"].items():
        print(f"    {k:<11s} {v:.3f} s")


if __name__ == "__main__":
    _print(run(quick="--quick" in sys.argv))
