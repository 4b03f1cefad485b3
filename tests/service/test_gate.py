"""The completeness gate on real files written in pieces, with a controlled clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from driftwatch.service.gate import Gate, expected_extnames, make_check


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _fits_bytes(tmp_path: Path, n_ccd: int = 2, seed: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    primary = fits.PrimaryHDU()
    primary.header["NEXTEND"] = n_ccd
    hdus = [primary] + [fits.CompImageHDU(rng.normal(0, 1, (16, 16)).astype(np.float32),
                                          name=f"S{i + 1}") for i in range(n_ccd)]
    tmp = tmp_path / "src.fits"
    fits.HDUList(hdus).writeto(tmp, checksum=True)
    return tmp.read_bytes()


@pytest.fixture
def gate():
    clock = Clock()
    g = Gate(settle_s=2.0, complete_timeout_s=30.0, check=make_check((), True), clock=clock)
    return g, clock


def _touch_ns(path: Path, ns: int) -> None:
    import os
    os.utime(path, ns=(ns, ns))


def test_in_place_writer_accepted_only_after_settling(tmp_path, gate):
    g, clock = gate
    data = _fits_bytes(tmp_path)
    path = tmp_path / "c4d_x_ooi_VR_v1.fits.fz"
    half = len(data) // 2
    path.write_bytes(data[:half])
    g.offer(path)
    assert g.poll().accepted == ()                  # first sight: the clock starts
    clock.t += 2.5
    res = g.poll()                                   # settled but incomplete: checked, waits
    assert res.accepted == () and res.timed_out == () and len(g) == 1
    with path.open("ab") as fh:
        fh.write(data[half:])
    _touch_ns(path, 2_000_000_000_000_000_000)
    clock.t += 0.5
    assert g.poll().accepted == ()                  # changed: settle again
    clock.t += 1.0
    assert g.poll().accepted == ()                  # 1 s stable < settle_s
    clock.t += 1.5
    res = g.poll()
    assert [j.path for j in res.accepted] == [str(path)]
    assert res.accepted[0].verdict.complete and res.accepted[0].size == len(data)
    assert len(g) == 0
    g.offer(path)                                    # a late event for the same bytes
    clock.t += 5
    assert g.poll() == type(g.poll())() and len(g) == 0
    assert g.decided(path)


def test_stuck_file_reported_once_then_rewatched_when_it_changes(tmp_path, gate):
    g, clock = gate
    data = _fits_bytes(tmp_path)
    path = tmp_path / "DECam_00000001.fits.fz"
    path.write_bytes(data[: len(data) - 2880])
    g.offer(path)
    g.poll()
    reported = []
    for _ in range(20):
        clock.t += 2.5
        reported += g.poll().timed_out
    assert len(reported) == 1 and reported[0].verdict.status == "incomplete"
    assert reported[0].waited_s >= 30.0
    g.offer(path)                                    # the next scan offers it again, unchanged
    for _ in range(20):
        clock.t += 2.5
        assert g.poll().timed_out == ()
    path.write_bytes(data)                           # the transfer is retried and finishes
    _touch_ns(path, 3_000_000_000_000_000_000)
    g.offer(path)
    g.poll()
    clock.t += 2.5
    assert len(g.poll().accepted) == 1


def test_corrupt_file_reported_once(tmp_path, gate):
    g, clock = gate
    data = bytearray(_fits_bytes(tmp_path))
    data[-100] ^= 0xFF                               # inside the last heap: DATASUM fails
    path = tmp_path / "bad.fits.fz"
    path.write_bytes(bytes(data))
    g.offer(path)
    g.poll()
    clock.t += 2.5
    res = g.poll()
    assert len(res.corrupt) == 1 and "DATASUM" in res.corrupt[0].verdict.reason
    g.offer(path)
    clock.t += 2.5
    assert g.poll().corrupt == ()


def test_vanished_file_is_dropped(tmp_path, gate):
    g, clock = gate
    path = tmp_path / "x.fits"
    path.write_bytes(b"SIMPLE")
    g.offer(path)
    g.poll()
    path.unlink()
    clock.t += 3
    assert g.poll() == type(g.poll())() and len(g) == 0


def test_next_due_tracks_the_settle_window(tmp_path, gate):
    g, clock = gate
    assert g.next_due() is None
    path = tmp_path / "x.fits"
    path.write_bytes(_fits_bytes(tmp_path))
    g.offer(path)
    g.poll()
    clock.t += 0.5
    assert g.next_due() == pytest.approx(1.5)


def test_expected_extnames_drop_dead_ccds():
    assert expected_extnames(("S1", "N30", "N4"), ("N30",)) == ("S1", "N4")


def test_prune_keeps_stuck_files_and_forgets_old_accepted_ones(tmp_path, gate):
    g, clock = gate
    good, stuck = tmp_path / "good.fits", tmp_path / "stuck.fits"
    data = _fits_bytes(tmp_path)
    good.write_bytes(data)
    stuck.write_bytes(data[:-2880])
    for p in (good, stuck):
        g.offer(p)
    g.poll()
    for _ in range(15):
        clock.t += 2.5
        g.poll()
    assert g.decided(good) and g.decided(stuck)
    clock.t += 4000
    assert g.prune(keep_s=3600) == 1
    assert not g.decided(good) and g.decided(stuck)
    stuck.unlink()
    assert g.prune(keep_s=3600) == 1


def _rename_in(tmp_path: Path, data: bytes, name: str = "c4d_x_ooi_VR_v1.fits.fz") -> Path:
    """Write ``data`` under a temporary name in pieces, then rename it, as rsync does."""
    import os
    tmp = tmp_path / f".{name}.Xy12ab"
    with tmp.open("wb") as fh:
        for k in range(0, len(data), 4000):
            fh.write(data[k:k + 4000])
            fh.flush()
    os.rename(tmp, tmp_path / name)
    return tmp_path / name


def test_renamed_whole_file_is_accepted_without_settling(tmp_path, gate):
    g, clock = gate
    path = _rename_in(tmp_path, _fits_bytes(tmp_path))
    g.offer(path, renamed=True)
    assert g.next_due() == 0.0
    res = g.poll()                                   # same instant: no settling
    assert [j.path for j in res.accepted] == [str(path)] and res.accepted[0].waited_s == 0.0
    assert len(g) == 0


def test_renamed_before_it_was_whole_settles(tmp_path, gate):
    g, clock = gate
    data = _fits_bytes(tmp_path)
    path = _rename_in(tmp_path, data[: len(data) // 2])
    g.offer(path, renamed=True)
    assert g.poll() == type(g.poll())() and len(g) == 1   # checked at once: incomplete
    with path.open("ab") as fh:                      # the writer goes on after its rename
        fh.write(data[len(data) // 2:])
    _touch_ns(path, 2_000_000_000_000_000_000)
    clock.t += 0.5
    assert g.poll().accepted == ()                   # changed: it settles like any other
    clock.t += 1.0
    assert g.poll().accepted == ()
    clock.t += 1.5
    assert len(g.poll().accepted) == 1


def test_renamed_then_written_again_settles(tmp_path, gate):
    g, clock = gate
    data = _fits_bytes(tmp_path)
    path = _rename_in(tmp_path, data)
    g.offer(path, renamed=True)
    with path.open("r+b") as fh:                     # rsync --inplace-like rewrite after it
        fh.write(data[:100])
    g.offer(path)                                    # its next event is not a rename
    assert g.poll().accepted == ()                   # so it settles
    clock.t += 2.5
    assert len(g.poll().accepted) == 1


def test_renamed_corrupt_file_is_reported_at_once(tmp_path, gate):
    g, clock = gate
    data = bytearray(_fits_bytes(tmp_path))
    data[-100] ^= 0xFF
    path = _rename_in(tmp_path, bytes(data))
    g.offer(path, renamed=True)
    res = g.poll()
    assert len(res.corrupt) == 1 and "DATASUM" in res.corrupt[0].verdict.reason


def test_trust_rename_off_settles_renamed_files(tmp_path):
    clock = Clock()
    g = Gate(settle_s=2.0, complete_timeout_s=30.0, check=make_check((), True), clock=clock,
             trust_rename=False)
    path = _rename_in(tmp_path, _fits_bytes(tmp_path))
    g.offer(path, renamed=True)
    assert g.poll().accepted == ()
    clock.t += 2.5
    assert len(g.poll().accepted) == 1
