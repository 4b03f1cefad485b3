"""Reading DECam files: a file built under a REAL CP InstCal header, and every error path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from driftwatch.errors import InputError
from driftwatch.io.decam import (
    CCD_NAMES, CCDNUM, band_from_filter, read_ccd, read_dq, read_exposure_info,
)
from driftwatch.simulate.realheader import headers_from_yaml, write_real_header_file

# A real CP InstCal header dump (astro_metadata_translator test data, BSD-3: licence beside it)
REAL = Path(__file__).resolve().parent / "data" / "instcal-VR-c4d_190402_050618_ooi_VR_v1.yaml"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (711.8 + rng.normal(0, 14.4, (128, 64))).astype(np.float32)


@pytest.fixture(params=[False, True], ids=["fits", "fits.fz"])
def real_file(request, tmp_path: Path, image: np.ndarray) -> Path:
    suffix = ".fits.fz" if request.param else ".fits"
    return write_real_header_file(REAL, tmp_path / f"c4d_190402_050618_ooi_VR_v1{suffix}", image,
                                  compress=request.param)


def test_band_from_filter() -> None:
    assert band_from_filter("VR DECam c0007 6300.0 2600.0") == "VR"
    assert band_from_filter("g DECam SDSS c0001 4720.0 1520.0") == "g"
    assert band_from_filter("") == ""


def test_ccdnum_table_is_the_real_one() -> None:
    assert len(CCDNUM) == 62 and len(set(CCDNUM.values())) == 62
    assert (CCDNUM["S29"], CCDNUM["S1"], CCDNUM["S7"], CCDNUM["N1"], CCDNUM["N31"]) == (1, 25, 31, 32, 62)
    assert CCD_NAMES[0] == "S29" and CCD_NAMES[-1] == "N31"


def test_exposure_info_from_real_header(real_file: Path) -> None:
    with fits.open(real_file) as hl:
        hl.verify("exception")
    info = read_exposure_info(real_file)
    assert info.expnum == 845291
    assert info.band == "VR"
    assert info.nite == "2019-04-01"
    assert info.date_obs.startswith("2019-04-02T05:06:18")
    assert info.mjd_obs == pytest.approx(58575.21271276)
    assert info.exptime == 120.0
    assert (info.obstype, info.prodtype, info.proctype) == ("object", "image", "InstCal")
    assert info.propid == "2019A-0337"
    assert info.ccds == ("S29",)
    assert info.ra_deg == pytest.approx(215.8659) and info.dec_deg == pytest.approx(-13.60728)


def test_read_ccd_from_real_header(real_file: Path, image: np.ndarray) -> None:
    ccd = read_ccd(real_file, "S29")
    assert ccd.name == "S29" and ccd.ccdnum == 1
    assert ccd.image.dtype == np.float32 and ccd.image.dtype.isnative
    assert ccd.image.shape == image.shape
    # RICE with q=4 quantises to sigma/4: values agree to well under the noise
    assert np.max(np.abs(ccd.image - image)) < 14.4 / 2
    assert ccd.gain == pytest.approx((3.67992805005758 + 3.62499716613638) / 2)
    assert ccd.read_noise == pytest.approx((6.13928 + 5.981542) / 2)
    assert ccd.saturate == pytest.approx(42423.5001001058)
    assert ccd.fwhm_px == pytest.approx(6.308315)
    assert ccd.sky_adu == pytest.approx(711.8328) and ccd.sky_sigma_adu == pytest.approx(14.43527)
    assert ccd.magzpt == pytest.approx(26.029)  # only in the primary header: inherited
    assert (ccd.expnum, ccd.band, ccd.exptime) == (845291, "VR", 120.0)
    assert ccd.wcs.pixel_shape == (image.shape[1], image.shape[0])
    assert ccd.header["CTYPE1"] == "RA---TPV"  # wcslib turns TPV into TAN + a distortion
    # the CCD centre of the real exposure (full-size pixel coordinates) is at CENRA1/CENDEC1
    ra, dec = ccd.wcs.all_pix2world([1022.5], [2046.5], 0)
    assert ra[0] == pytest.approx(215.55, abs=2e-4)
    assert dec[0] == pytest.approx(-12.70227, abs=2e-4)
    # DECam orientation: +Dec toward -x
    _, dec_x = ccd.wcs.all_pix2world([0.0, 100.0], [2046.5, 2046.5], 0)
    assert dec_x[1] < dec_x[0]


def test_tpv_distortion_is_applied(real_file: Path) -> None:
    ccd = read_ccd(real_file, "S29")
    header = ccd.header.copy()
    for key in [k for k in header if k.startswith("PV")]:
        del header[key]
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    plain = WCS(header)
    a = np.array(ccd.wcs.all_pix2world([0.0], [0.0], 0)).ravel()
    b = np.array(plain.all_pix2world([0.0], [0.0], 0)).ravel()
    assert np.hypot((a[0] - b[0]) * np.cos(np.radians(a[1])), a[1] - b[1]) * 3600 > 1.0


def test_read_dq(tmp_path: Path) -> None:
    mask = np.zeros((40, 20), np.uint8)
    mask[:, 3] = 1
    mask[10, 10] = 5
    primary, ccd = headers_from_yaml(REAL)
    primary["PRODTYPE"] = "dqmask"
    path = tmp_path / "c4d_190402_050618_ood_VR_v1.fits.fz"
    fits.HDUList([fits.PrimaryHDU(header=primary),
                  fits.CompImageHDU(mask.astype(np.int16), header=ccd, name="S29",
                                    compression_type="RICE_1")]).writeto(path)
    got = read_dq(path, "S29")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, mask)
    assert read_exposure_info(path).prodtype == "dqmask"


def _edit(path: Path, ext: int, **changes) -> None:
    with fits.open(path, mode="update") as hl:
        for key, value in changes.items():
            key = key.replace("_", "-") if key in ("DATE_OBS", "MJD_OBS") else key
            if value is None:
                del hl[ext].header[key]
            else:
                hl[ext].header[key] = value


def test_pointing_and_night_fallbacks(tmp_path: Path, image: np.ndarray) -> None:
    path = write_real_header_file(REAL, tmp_path / "a.fits", image)
    _edit(path, 0, CENTRA=None, CENTDEC=None, NITE=None, MJD_OBS=None, EXPNUM="845291")
    info = read_exposure_info(path)
    assert info.ra_deg == pytest.approx(15 * (14 + 23 / 60 + 27.81 / 3600))
    assert info.dec_deg == pytest.approx(-(13 + 36 / 60 + 26.2 / 3600))
    assert info.nite == "2019-04-01"  # from DTCALDAT
    assert info.mjd_obs == pytest.approx(58575.21271276, abs=1e-6)  # from DATE-OBS
    assert info.expnum == 845291
    _edit(path, 0, RA=None, DEC=None, DTCALDAT=None)
    info = read_exposure_info(path)
    assert info.ra_deg == pytest.approx(15 * (14 + 23 / 60 + 28.889 / 3600))
    assert info.nite is None


@pytest.mark.parametrize("ext,key,expected", [
    (1, "GAINA", None),  # GAINB alone still gives a gain
    (0, "EXPNUM", "EXPNUM"),
    (0, "EXPTIME", "EXPTIME"),
])
def test_missing_keywords(tmp_path: Path, image: np.ndarray, ext: int, key: str,
                          expected: str | None) -> None:
    path = write_real_header_file(REAL, tmp_path / "a.fits", image)
    _edit(path, ext, **{key: None})
    if expected is None:
        assert read_ccd(path, "S29").gain == pytest.approx(3.62499716613638)
        _edit(path, ext, GAINB=None)
        expected = "GAIN"
    with pytest.raises(InputError) as err:
        read_ccd(path, "S29")
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_saturation(tmp_path: Path, image: np.ndarray) -> None:
    path = write_real_header_file(REAL, tmp_path / "a.fits", image)
    _edit(path, 1, SATURATE=None)
    assert read_ccd(path, "S29").saturate == pytest.approx(39146.1577751372)  # min of A, B
    _edit(path, 1, SATURATA=None, SATURATB=None)
    with pytest.raises(InputError, match="SATURATE"):
        read_ccd(path, "S29")


def test_errors_name_file_and_ccd(tmp_path: Path, image: np.ndarray) -> None:
    path = write_real_header_file(REAL, tmp_path / "a.fits", image)
    with pytest.raises(InputError, match=r"a\.fits.*'N4'"):
        read_ccd(path, "N4")
    with pytest.raises(InputError, match="no such file"):
        read_exposure_info(tmp_path / "missing.fits")
    _edit(path, 1, CTYPE1="RA---XYZ")
    with pytest.raises(InputError, match=r"a\.fits\[S29\].*WCS"):
        read_ccd(path, "S29")


def test_truncated_file(tmp_path: Path, image: np.ndarray) -> None:
    for compress in (False, True):
        path = write_real_header_file(REAL, tmp_path / f"t{compress}.fits", image, compress=compress)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 9000])
        with pytest.raises(InputError, match=str(path.name)):
            read_ccd(path, "S29")
    path.write_bytes(b"SIMPLE  =                    T" + b" " * 20)
    with pytest.raises(InputError, match=str(path.name)):
        read_exposure_info(path)


def test_direct_float32_read_is_fitsios(tmp_path: Path, image: np.ndarray, monkeypatch) -> None:
    """The direct read of an uncompressed float32 CCD gives fitsio's array, in blocks too."""
    import fitsio

    from driftwatch.io import decam

    img = image.copy()
    img[3, 5], img[7, 1] = np.nan, np.inf
    path = write_real_header_file(REAL, tmp_path / "d.fits", img, compress=False)
    expected = fitsio.read(str(path), ext="S29")
    monkeypatch.setattr(decam, "_BLOCK_BYTES", 4 * 64 * 5)  # 5 rows a block, last one short
    got = read_ccd(path, "S29").image
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, img)
