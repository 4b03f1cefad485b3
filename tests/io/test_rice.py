"""The direct RICE_1 decoder: bit-identical to cfitsio on files written by astropy and by cfitsio."""

from __future__ import annotations

from pathlib import Path

import fitsio
import numpy as np
import pytest
from astropy.io import fits

from driftwatch.errors import InputError
from driftwatch.io import decam, rice
from driftwatch.io.decam import read_ccd, read_dq
from driftwatch.io.rice import decode_rice_rows, dither_sequence
from driftwatch.simulate.realheader import write_real_header_file

REAL = Path(__file__).resolve().parent / "data" / "instcal-VR-c4d_190402_050618_ooi_VR_v1.yaml"

pytestmark = pytest.mark.skipif(rice.decompress_rice_1_c is None,
                                reason="this astropy has no Rice decoder where we look for it")


def _sky(shape: tuple[int, int], seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = 700.0 + rng.normal(0.0, 12.0, shape)
    img[shape[0] // 3, :] += 3e4 * np.exp(-0.5 * ((np.arange(shape[1]) - 20) / 2.0) ** 2)
    return img.astype(np.float32)


def _astropy_file(path: Path, img: np.ndarray, **kw) -> Path:
    kw.setdefault("compression_type", "RICE_1")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(img, name="S4", **kw)]).writeto(path)
    return path


def _cfitsio_file(path: Path, img: np.ndarray, **kw) -> Path:
    """Written by cfitsio, as fpack writes CP's files (no GZIP_COMPRESSED_DATA column)."""
    kw = {"compress": "rice", "tile_dims": (1, img.shape[1]), "qlevel": 4.0,
          "qmethod": "SUBTRACTIVE_DITHER_1", **kw}
    with fitsio.FITS(str(path), "rw", clobber=True) as f:
        f.write(None)
        f.write(img, extname="S4", **kw)
    return path


def _decode(path: Path) -> np.ndarray | None:
    with fitsio.FITS(str(path)) as f:
        hdu = f["S4"]
        with open(path, "rb") as fh:
            return decode_rice_rows(fh, hdu.read_header(), int(hdu.get_offsets()["data_start"]))


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.int32), b.astype(np.float32).view(np.int32))


def test_dither_sequence_is_the_fits_one() -> None:
    r = dither_sequence()
    assert r.dtype == np.float32 and r.shape == (10_000,)
    assert r[0] == np.float32(16807 / 2147483647)
    assert (r > 0).all() and (r < 1).all()


@pytest.mark.parametrize("writer", ["astropy", "cfitsio"])
@pytest.mark.parametrize("shape", [(64, 48), (37, 101), (9, 17)])
def test_bit_identical_to_cfitsio(tmp_path: Path, writer: str, shape: tuple[int, int],
                                  monkeypatch) -> None:
    monkeypatch.setattr(rice, "_BLOCK_ROWS", 7)  # several blocks, the last one short
    img = _sky(shape)
    for seed in (1, 4785, 10_000):
        path = tmp_path / f"{writer}-{seed}.fits.fz"
        if writer == "astropy":
            _astropy_file(path, img, quantize_level=4.0, dither_seed=seed)
        else:
            _cfitsio_file(path, img, dither_seed=seed)
        got = _decode(path)
        assert got is not None and got.dtype == np.float32 and got.dtype.isnative
        assert _same_bits(got, fitsio.read(str(path), ext="S4"))
        assert np.abs(got - img).max() < 12.0  # quantised at noise / 4, not garbage


def test_no_dither_is_bit_identical(tmp_path: Path) -> None:
    path = _cfitsio_file(tmp_path / "nd.fits.fz", _sky((40, 30)), qmethod="NO_DITHER")
    with fitsio.FITS(str(path)) as f:
        assert f["S4"].read_header()["ZQUANTIZ"].strip() == "NO_DITHER"
    got = _decode(path)
    assert got is not None and _same_bits(got, fitsio.read(str(path), ext="S4"))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32])
@pytest.mark.parametrize("writer", ["astropy", "cfitsio"])
def test_integer_images_are_fitsios(tmp_path: Path, dtype, writer: str, monkeypatch) -> None:
    monkeypatch.setattr(rice, "_BLOCK_ROWS", 7)
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype)
    img = rng.integers(max(info.min, -40000), min(info.max, 40000), (23, 19)).astype(dtype)
    img[:5] = 0                                     # a DQ mask is mostly zeros
    path = tmp_path / "i.fits.fz"
    if writer == "astropy":
        _astropy_file(path, img)
    else:
        _cfitsio_file(path, img, qmethod=None)
    got = _decode(path)
    expected = fitsio.read(str(path), ext="S4")
    assert got is not None and got.dtype == expected.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, img)


@pytest.mark.parametrize("case", ["gzip", "two-row tiles", "nan", "dither 2", "uint16"])
def test_other_layouts_are_left_to_fitsio(tmp_path: Path, case: str) -> None:
    img = _sky((32, 24))
    path = tmp_path / "o.fits.fz"
    if case == "gzip":
        _cfitsio_file(path, img, compress="gzip")
    elif case == "two-row tiles":
        _cfitsio_file(path, img, tile_dims=(2, 24))
    elif case == "nan":
        img[4, 5] = np.nan
        _cfitsio_file(path, img)
    elif case == "dither 2":
        _cfitsio_file(path, img, qmethod="SUBTRACTIVE_DITHER_2")
    else:  # stored as int16 with BZERO = 32768
        _cfitsio_file(path, np.round(img).astype(np.uint16), qmethod=None)
    assert _decode(path) is None
    pixels, _, _ = decam._read_hdu(path, "S4")   # what read_ccd and read_dq read: fitsio's
    np.testing.assert_array_equal(pixels, fitsio.read(str(path), ext="S4"))


def test_read_ccd_of_a_real_header_file_is_fitsios(tmp_path: Path) -> None:
    img = _sky((128, 64))
    path = write_real_header_file(REAL, tmp_path / "c4d_190402_050618_ooi_VR_v1.fits.fz", img,
                                  compress=True)
    assert _decode_named(path, "S29") is not None   # the direct path is the one taken
    got = read_ccd(path, "S29").image
    assert _same_bits(got, fitsio.read(str(path), ext="S29"))


def _decode_named(path: Path, ext: str) -> np.ndarray | None:
    with fitsio.FITS(str(path)) as f:
        with open(path, "rb") as fh:
            return decode_rice_rows(fh, f[ext].read_header(), int(f[ext].get_offsets()["data_start"]))


def test_masks_still_read(tmp_path: Path) -> None:
    dq = np.zeros((20, 16), np.int16)
    dq[3, 4], dq[10, 2] = 5, 3
    path = _cfitsio_file(tmp_path / "ood.fits.fz", dq)
    np.testing.assert_array_equal(read_dq(path, "S4"), dq.astype(np.uint8))


def test_truncated_heap_and_corrupt_codes(tmp_path: Path) -> None:
    path = write_real_header_file(REAL, tmp_path / "t.fits.fz", _sky((64, 32)), compress=True)
    good = path.read_bytes()
    with fitsio.FITS(str(path)) as f:
        hdr = f["S29"].read_header()
        start = int(f["S29"].get_offsets()["data_start"])
    table = int(hdr["NAXIS1"]) * int(hdr["NAXIS2"])
    end = start + table + int(hdr["PCOUNT"])      # the heap's end (padding follows)
    path.write_bytes(good[: end - 100])
    with pytest.raises(InputError, match=r"t\.fits\.fz\[S29\]"):
        read_ccd(path, "S29")
    # scramble the Rice codes (the heap, after the 64-row table) but keep the file's length
    bad = bytearray(good)
    rng = np.random.default_rng(0)
    heap0 = start + table
    bad[heap0:end - 200] = rng.integers(0, 256, end - 200 - heap0, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(bad))
    try:
        image = read_ccd(path, "S29").image
    except InputError as exc:
        assert "t.fits.fz[S29]" in str(exc)
    else:  # a decoder may decode noise without noticing; it must not crash or hang
        assert image.shape == (64, 32)
