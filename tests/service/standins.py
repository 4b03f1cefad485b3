"""Small real task functions standing in for the reduction in service tests.

They read a CCD with astropy, do a little arithmetic, and write a product file atomically
(temporary name in the same folder, then ``os.replace``), like the real pipeline. Module-level
functions, so a process pool or a Dask worker can import them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from driftwatch.tasks import CatalogueSummary, CatalogueTask, CcdSummary, CcdTask

PRODUCT = "standin.fits"


def _write_atomic(table: Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.write(tmp, format="fits", overwrite=True)
    os.replace(tmp, path)


def reduce_ccd(task: CcdTask) -> CcdSummary:
    """Count bright pixels of one CCD and write them as a table product."""
    data = fits.getdata(task.image_path, extname=task.ccd).astype(np.float64)
    med = float(np.median(data))
    mad = float(np.median(np.abs(data - med))) * 1.4826 or 1.0
    bright = np.argwhere(data > med + 5 * mad)
    table = Table({"y": bright[:, 0], "x": bright[:, 1]})
    table.meta.update({"EXPNUM": task.expnum, "CCD": task.ccd, "INCHKSUM": task.input_checksum,
                       "MEDIAN": med, "CATALOG": task.catalogue_path or "",
                       "DQ": task.dq_path or ""})
    out = Path(task.out_dir) / task.ccd
    _write_atomic(table, out / PRODUCT)
    return CcdSummary(ccd=task.ccd, ok=True, product_dir=str(out), n_trails=len(bright),
                      pipeline_version="standin")


def slow_reduce_ccd(task: CcdTask) -> CcdSummary:
    """:func:`reduce_ccd` after a pause (DRIFTWATCH_TEST_DELAY s, default 0.3)."""
    time.sleep(float(os.environ.get("DRIFTWATCH_TEST_DELAY", "0.3")))
    return reduce_ccd(task)


def raising_reduce_ccd(task: CcdTask) -> CcdSummary:
    """A stage that raises (a bug)."""
    raise RuntimeError(f"stage exploded on {task.ccd}")


def bad_input_reduce_ccd(task: CcdTask) -> CcdSummary:
    """A worker that reports bad input (not retryable)."""
    return CcdSummary(ccd=task.ccd, ok=False, error=f"{task.image_path}[{task.ccd}]: no stars",
                      retryable=False)


def lying_reduce_ccd(task: CcdTask) -> CcdSummary:
    """Says ok but writes nothing."""
    return CcdSummary(ccd=task.ccd, ok=True, product_dir=str(Path(task.out_dir) / task.ccd))


def crash_once_reduce_ccd(task: CcdTask) -> CcdSummary:
    """Kill its own worker process (SIGKILL, as the OOM killer would) the first time per CCD."""
    marker = Path(task.out_dir) / f".crashed-{task.ccd}"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    return reduce_ccd(task)


def crash_always_reduce_ccd(task: CcdTask) -> CcdSummary:
    """Kill its own worker every time for CCD N4 (a poison job); others are fine."""
    if task.ccd == "N4":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    return reduce_ccd(task)


def build_catalogue(task: CatalogueTask) -> CatalogueSummary:
    """Write a tiny catalogue from the brightest pixels of the r image's first CCD."""
    data = fits.getdata(task.r_path, extname=task.ccds[0]).astype(np.float64)
    idx = np.argsort(data, axis=None)[-10:]
    y, x = np.unravel_index(idx, data.shape)
    table = Table({"id": np.arange(len(idx)), "x": x, "y": y})
    table.meta["FIELD"] = task.field
    _write_atomic(table, Path(task.out_path))
    return CatalogueSummary(ok=True, out_path=task.out_path, n_stars=len(idx),
                            pipeline_version="standin")


def candidate_reduce_ccd(task: CcdTask) -> CcdSummary:
    """:func:`reduce_ccd` plus one made-up candidate per CCD (to exercise the alert hooks)."""
    from dataclasses import replace

    from driftwatch.tasks import CandidateSummary

    summary = reduce_ccd(task)
    cand = CandidateSummary(kind="flash", star_id=None, ra=150.0, dec=-30.0, x=1.0, y=2.0,
                            t_peak_s=3.0, duration_s=0.5, amplitude=0.4, significance=9.0)
    return replace(summary, n_candidates=1, candidates=(cand,))
