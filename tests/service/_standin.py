"""A stand-in for ``reduce_ccd`` in daemon tests: records each run, writes one small product.

Every call appends ``EXPNUM CCD`` to ``<products>/standin-runs.log`` (one short O_APPEND write,
atomic between processes), so a test can check that each CCD was reduced exactly once whatever
the database says. ``DRIFTWATCH_STANDIN_SLEEP`` (seconds, default 0.05) makes a CCD take time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from driftwatch import __version__
from driftwatch.tasks import CcdSummary, CcdTask


def reduce_standin(task: CcdTask) -> CcdSummary:
    time.sleep(float(os.environ.get("DRIFTWATCH_STANDIN_SLEEP", "0.05")))
    out = Path(task.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".product.txt.tmp"
    tmp.write_text(f"{task.image_path} {task.ccd} {task.input_checksum}\n")
    os.replace(tmp, out / "product.txt")
    products = out.parents[2]
    fd = os.open(products / "standin-runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{task.expnum} {task.ccd}\n".encode())
    finally:
        os.close(fd)
    return CcdSummary(ccd=task.ccd, ok=True, product_dir=str(out), n_trails=1,
                      pipeline_version=__version__)
