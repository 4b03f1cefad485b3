"""A stand-in for ``reduce_ccd`` in daemon tests: records each run, writes one small product.

Every call appends ``EXPNUM CCD`` to ``$DRIFTWATCH_STANDIN_LOG`` (one short O_APPEND write,
atomic between processes), so a test can check that each CCD was reduced exactly once whatever
the database says. ``DRIFTWATCH_STANDIN_SLEEP`` (seconds, default 0.05) makes a CCD take time.
Like the real one, it writes its products under ``out_dir/<ccd>`` and renames them into place.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from driftwatch import __version__
from driftwatch.tasks import CcdSummary, CcdTask


def reduce_standin(task: CcdTask) -> CcdSummary:
    time.sleep(float(os.environ.get("DRIFTWATCH_STANDIN_SLEEP", "0.05")))
    out = Path(task.out_dir) / task.ccd
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".product.txt.{os.getpid()}"
    tmp.write_text(f"{task.image_path} {task.ccd} {task.input_checksum}\n")
    os.replace(tmp, out / "product.txt")
    fd = os.open(os.environ["DRIFTWATCH_STANDIN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o644)
    try:
        os.write(fd, f"{task.expnum} {task.ccd}\n".encode())
    finally:
        os.close(fd)
    return CcdSummary(ccd=task.ccd, ok=True, product_dir=str(out), n_trails=1,
                      pipeline_version=__version__)
