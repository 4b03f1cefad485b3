"""``driftwatch reduce``: a real subprocess on a small simulated exposure."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from driftwatch.bench.science2 import simulated_ccd


def test_reduce_command_writes_products_and_reports(tmp_path):
    scene, render, img, dq = simulated_ccd(tmp_path / "in", seed=3, shape=(400, 300),
                                           n_stars=60)
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "driftwatch.cli", "reduce", str(img), "--out",
                        str(out), "--no-stamps"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "1/1 CCDs reduced" in p.stdout
    assert len(pd.read_parquet(out / scene.ccd / "trails.parquet")) > 10
    bad = subprocess.run([sys.executable, "-m", "driftwatch.cli", "reduce", str(img), "--ccd",
                          "S4", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "S4" in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "driftwatch.cli", "reduce",
                            str(tmp_path / "none.fits"), "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert usage.returncode == 2 and "none.fits" in usage.stderr
