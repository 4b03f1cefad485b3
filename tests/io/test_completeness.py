"""The FITS completeness check against files written by astropy (plain and RICE-compressed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from driftwatch.io.completeness import BLOCK, check_fits, ones_complement_sum

CCDS = ("S1", "S2", "S3")


def _mef(path: Path, *, compressed: bool = False, checksum: bool = True,
         nextend: int | None = 3, ccds=CCDS, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    primary = fits.PrimaryHDU()
    if nextend is not None:
        primary.header["NEXTEND"] = nextend
    hdus = [primary]
    for name in ccds:
        data = rng.normal(1000, 10, (24, 20)).astype(np.float32)
        if compressed:
            hdus.append(fits.CompImageHDU(data, name=name, compression_type="RICE_1"))
        else:
            hdus.append(fits.ImageHDU(data, name=name))
    fits.HDUList(hdus).writeto(path, checksum=checksum, overwrite=True)
    return path


def _slow_sum(data: bytes) -> int:
    """The obviously-correct reference: add 32-bit words with an end-around carry, one by one."""
    total = 0
    for i in range(0, len(data), 4):
        total += int.from_bytes(data[i:i + 4], "big")
        if total > 0xFFFFFFFF:
            total = (total & 0xFFFFFFFF) + 1
    return total


def test_ones_complement_sum_matches_slow_reference():
    rng = np.random.default_rng(7)
    for n in (4, 400, 2880, 11520):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert ones_complement_sum(data) == _slow_sum(data)
    assert ones_complement_sum(b"\xff" * 8) == 0xFFFFFFFF


@pytest.mark.parametrize("compressed", [False, True])
def test_complete_file_and_checksums(tmp_path, compressed):
    path = _mef(tmp_path / "a.fits", compressed=compressed)
    verdict = check_fits(path)
    assert verdict.status == "complete", verdict.reason
    assert verdict.extnames == CCDS
    assert verdict.hdus[-1].end == path.stat().st_size
    assert verdict.checksums_verified == 4
    with fits.open(path, disable_image_compression=True) as hdul:  # agrees with astropy
        for info, hdu in zip(verdict.hdus, hdul):
            assert int(info.datasum) == int(hdu.header["DATASUM"])


@pytest.mark.parametrize("compressed", [False, True])
def test_every_truncation_is_incomplete(tmp_path, compressed):
    path = _mef(tmp_path / "a.fits", compressed=compressed)
    whole = path.read_bytes()
    cut = tmp_path / "cut.fits"
    # Every block boundary and some odd offsets: nothing shorter than the whole is complete.
    points = sorted(set(range(0, len(whole), BLOCK)) | {1, 100, 2881, len(whole) - 1})
    for n in points:
        cut.write_bytes(whole[:n])
        verdict = check_fits(cut)
        assert verdict.status == "incomplete", (n, verdict)


def test_cut_at_hdu_boundary_caught_by_nextend(tmp_path):
    path = _mef(tmp_path / "a.fits")
    verdict = check_fits(path)
    boundary = verdict.hdus[2].end  # primary + S1 + S2: structurally a valid file
    cut = tmp_path / "cut.fits"
    cut.write_bytes(path.read_bytes()[:boundary])
    got = check_fits(cut)
    assert got.status == "incomplete"
    assert "2 of NEXTEND=3" in got.reason


def test_missing_extension_without_nextend_uses_expected_names(tmp_path):
    path = _mef(tmp_path / "a.fits", nextend=None, ccds=("S1", "S3"))
    assert check_fits(path).complete  # nothing says S2 should be there
    got = check_fits(path, expected_extnames=CCDS)
    assert got.status == "incomplete" and "S2" in got.reason


def test_flipped_data_byte_is_corrupt(tmp_path):
    path = _mef(tmp_path / "a.fits")
    raw = bytearray(path.read_bytes())
    verdict = check_fits(path)
    raw[verdict.hdus[2].data_start + 10] ^= 0x40
    path.write_bytes(bytes(raw))
    got = check_fits(path)
    assert got.status == "corrupt" and "HDU 2" in got.reason
    assert check_fits(path, verify_checksum=False).complete


def test_edited_header_fails_checksum(tmp_path):
    path = _mef(tmp_path / "a.fits")
    raw = path.read_bytes()
    start = check_fits(path).hdus[1].header_start
    i = raw.index(b"EXTNAME = 'S1", start)
    path.write_bytes(raw[:i] + b"EXTNAME = 'S9" + raw[i + 13:])
    got = check_fits(path)
    assert got.status == "corrupt" and "CHECKSUM" in got.reason


def test_not_fits_and_trailing_garbage_are_corrupt(tmp_path):
    junk = tmp_path / "junk.fits"
    junk.write_bytes(b"hello world" * 500)
    assert check_fits(junk).status == "corrupt"
    path = _mef(tmp_path / "a.fits", checksum=False)
    path.write_bytes(path.read_bytes() + b"x" * BLOCK)
    got = check_fits(path)
    assert got.status == "corrupt" and "unexpected bytes" in got.reason


def test_zero_filled_tail_and_missing_or_empty_file_wait(tmp_path):
    path = _mef(tmp_path / "a.fits", checksum=False)
    path.write_bytes(path.read_bytes() + b"\0" * BLOCK)  # preallocated by an in-place writer
    assert check_fits(path).status == "incomplete"
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    assert check_fits(empty).status == "incomplete"
    assert check_fits(tmp_path / "nope.fits").status == "incomplete"


def test_bad_header_values_are_corrupt(tmp_path):
    card = lambda s: s.ljust(80).encode()  # noqa: E731
    header = card("SIMPLE  =                    T") + card("BITPIX  =                   12") \
        + card("NAXIS   =                    0") + card("END")
    path = tmp_path / "bad.fits"
    path.write_bytes(header.ljust(BLOCK, b" "))
    got = check_fits(path)
    assert got.status == "corrupt" and "BITPIX" in got.reason
