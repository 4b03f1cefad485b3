"""Helpers of the exposure and scaling benchmarks (the areas themselves run in
test_bench_command's ``bench --quick``)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

from driftwatch.bench.exposure import _deliver, _epoch, _mentions, _OtherCpu


def test_deliver_writes_under_a_temporary_name_then_renames(tmp_path):
    src = tmp_path / "src" / "c4d_261121_013300_ooi_VR_v1.fits.fz"
    src.parent.mkdir()
    data = os.urandom(100_003)  # not a multiple of the chunk count
    src.write_bytes(data)
    dest = tmp_path / "incoming"
    dest.mkdir()
    before = time.time()
    t = _deliver(src, dest, chunks=7)
    assert before <= t <= time.time()
    assert sorted(p.name for p in dest.iterdir()) == [src.name]  # the temporary name is gone
    assert (dest / src.name).read_bytes() == data


def test_epoch_reads_sqlite_naive_utc():
    when = datetime(2026, 11, 21, 3, 4, 5, 250000, tzinfo=timezone.utc)
    assert _epoch(when.replace(tzinfo=None).isoformat(sep=" ")) == when.timestamp()
    assert _epoch(None) is None


def test_alert_is_matched_by_its_exposure_number():
    msg = {"payload": {"blocks": [{"type": "header", "text": {"text": "Exposure 1100003"}}]}}
    assert _mentions(msg, 1100003)
    assert not _mentions(msg, 1100002)


def test_other_cpu_subtracts_our_own_cpu():
    probe = _OtherCpu()
    c0 = time.process_time()
    while time.process_time() - c0 < 0.3:  # burn 0.3 s of our own CPU
        pass
    ours = sum(v - probe.ours0.get(pid, 0.0) for pid, v in probe._ours().items())
    assert ours >= 0.29
    assert 0.0 <= probe.cores() <= (os.cpu_count() or 1)
