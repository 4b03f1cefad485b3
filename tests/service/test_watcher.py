"""The watcher with real observers (inotify and polling) on a temporary folder."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from driftwatch.service.watcher import Watcher

PATTERNS = ("*.fits", "*.fits.fz")
IGNORE = (".*", "*.tmp", "*.part", "*~")


def _arrivals(w: Watcher, want: set[str], timeout: float = 5.0) -> dict[str, bool]:
    """{path: renamed} of what arrived until every path of ``want`` did (or the timeout)."""
    got: dict[str, bool] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not want <= got.keys():
        w.wait(0.1)
        got.update((a.path, a.renamed) for a in w.drain())
    return got


def _collect(w: Watcher, want: set[str], timeout: float = 5.0) -> set[str]:
    return set(_arrivals(w, want, timeout))


@pytest.fixture(params=["inotify", "polling"])
def watcher(request, tmp_path):
    before = threading.active_count()
    w = Watcher([tmp_path], PATTERNS, IGNORE, observer=request.param, poll_interval_s=0.1)
    w.start()
    assert w.alive()
    yield w, tmp_path
    w.stop()
    assert not w.alive()
    assert threading.active_count() == before  # no leaked observer or emitter threads


def test_rename_into_place_is_the_event(watcher):
    w, folder = watcher
    sub = folder / "20261121"
    sub.mkdir()
    # Files already in a folder when its watch is added arrive as "created" (an ordinary
    # arrival): let the observer take up the new folder first, as at dusk.
    _arrivals(w, {"never"}, timeout=0.5)
    tmp = sub / ".DECam_00000001.fits.fz.Ab12Cd"
    with tmp.open("wb") as fh:
        for _ in range(3):
            fh.write(b"x" * 1000)
            fh.flush()
    part = sub / "c4d_261121_010203_ooi_VR_v1.fits.fz.part"
    part.write_bytes(b"y" * 100)
    # A transfer takes a while: the polling observer sees a rename only of a file it saw
    # under its temporary name (else it sees a file created, an ordinary arrival).
    time.sleep(0.3)
    final = sub / "DECam_00000001.fits.fz"
    os.rename(tmp, final)
    os.rename(part, sub / "c4d_261121_010203_ooi_VR_v1.fits.fz")
    want = {str(final), str(sub / "c4d_261121_010203_ooi_VR_v1.fits.fz")}
    got = _arrivals(w, want)
    assert set(got) == want  # no temp names, no folders
    assert all(got.values())  # both came by a rename


def test_written_in_place_is_not_a_rename(watcher):
    w, folder = watcher
    direct = folder / "DECam_00000002.fits.fz"
    with direct.open("wb") as fh:  # scp, rsync --inplace: the final name from the first byte
        fh.write(b"x" * 1000)
    late = folder / "DECam_00000003.fits.fz"
    tmp = folder / ".DECam_00000003.fits.fz.tmp"
    tmp.write_bytes(b"y" * 100)
    time.sleep(0.3)   # seen under its temporary name by the polling observer too
    os.rename(tmp, late)
    got = _arrivals(w, {str(direct), str(late)})
    assert got[str(direct)] is False and got[str(late)] is True
    with late.open("ab") as fh:   # written again after its rename: an ordinary arrival now
        fh.write(b"z" * 100)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        w.wait(0.1)
        last = {a.path: a.renamed for a in w.drain()}
        if str(late) in last:
            assert last[str(late)] is False
            break
    else:
        pytest.fail("no event for the file appended to after its rename")


def test_folder_renamed_into_place_brings_its_files(watcher):
    w, folder = watcher
    staging = folder.parent / (folder.name + "-staging")
    staging.mkdir()
    (staging / "a.fits").write_bytes(b"a")
    (staging / "notes.txt").write_bytes(b"n")
    os.rename(staging, folder / "night")
    want = {str(folder / "night" / "a.fits")}
    # From outside the watched folders, the move is seen as a folder created: an ordinary
    # arrival, which settles before it is checked.
    assert _collect(w, want) == want


def test_scan_finds_what_is_already_there(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("d/a.fits", "b.fits.fz", "c.txt", ".b.fits.fz.XyZ12", "d/e.fits.tmp"):
        (tmp_path / name).write_bytes(b"")
    w = Watcher([tmp_path], PATTERNS, IGNORE)  # scan needs no observer
    assert sorted(p.relative_to(tmp_path).as_posix() for p in w.scan()) == ["b.fits.fz",
                                                                             "d/a.fits"]


def test_matches_uses_the_file_name():
    w = Watcher([Path("/x")], ("DECam_*.fits.fz",), IGNORE)
    assert w.matches("/data/night/DECam_00123456.fits.fz")
    assert not w.matches("/data/night/.DECam_00123456.fits.fz.Ab12Cd")
    assert not w.matches("/data/night/c4d_x.fits.fz")
