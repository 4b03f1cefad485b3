"""`driftwatch bench --quick` runs every benchmark area and writes a valid JSON document."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from driftwatch.commands.bench import available


@pytest.mark.slow
def test_quick_bench_writes_json_for_every_area(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "driftwatch.cli", "bench", "--quick", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    assert set(doc["results"]) == set(available())
    for area, result in doc["results"].items():
        assert isinstance(result, dict) and result and "error" not in result, area
    # the table printed on stdout carries the headline figures
    assert "science2.speed.wall_s.median" in proc.stdout
    assert "simulate.render_full_ccd_1000_stars.median_s" in proc.stdout
    assert "exposure.complete_to_last_ccd_done_s.median" in proc.stdout
    assert "scaling.local_2.speedup_vs_1_worker" in proc.stdout
    # the exposure went through the daemon to the Slack stand-in (a working path, not a speed)
    exposure = doc["results"]["exposure"]
    assert exposure["alerts_received"] == "1/1"
    assert exposure["complete_to_alert_s"]["median"] >= exposure["complete_to_planned_s"]["median"]


def test_compare_prints_ratios(tmp_path, capsys):
    from driftwatch.commands.bench import print_table

    print_table({"a.median": 2.0, "b": "text"}, old={"a.median": 1.0})
    assert "x2.000 (was 1)" in capsys.readouterr().out


def test_unknown_area_is_a_usage_error(tmp_path):
    from driftwatch.cli import main

    assert main(["bench", "--only", "nonsense", "--out", str(tmp_path / "x.json")]) == 2
