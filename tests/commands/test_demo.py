"""``driftwatch demo`` end to end: a real daemon, stand-in Slack server and real-time delivery."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_demo_reduces_every_exposure_and_delivers_the_alerts(tmp_path):
    keep = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "driftwatch.cli", "demo", "--keep", str(keep),
                           "--exposures", "2"], capture_output=True, text=True, timeout=200)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(r"2 exposure\(s\); CCD jobs: done=4;", out), out
    assert "daemon exited 0" in out
    n = int(re.search(r"(\d+) message\(s\) received by the Slack stand-in", out).group(1))
    assert n >= 2, out                                       # at least started and stopped
    assert "driftwatch started" in out and "driftwatch stopped" in out
    m = re.search(r"== candidates: (\d+)", out)
    if int(m.group(1)):                                      # candidates found: alerted
        assert "transient candidate" in out, out
    assert "/services/" not in out + proc.stderr             # the webhook path is never printed
    assert (keep / "standin-received.jsonl").exists()        # --keep keeps the folder


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "x").write_text("")
    proc = subprocess.run([sys.executable, "-m", "driftwatch.cli", "demo", "--keep", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "not empty" in proc.stderr
