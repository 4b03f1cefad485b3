"""Catalogue Parquet files: round trip, provenance, atomic write, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from driftwatch.errors import InputError
from driftwatch.io.catalogue import read_catalogue, read_catalogue_provenance, write_catalogue
from driftwatch.science.catalogue import Catalogue, star_ids


def _cat(n: int = 5) -> Catalogue:
    rng = np.random.default_rng(0)
    ra, dec = rng.uniform(10, 11, n), rng.uniform(-5, -4, n)
    f32 = np.float32
    mag = rng.uniform(16, 20, n).astype(f32)
    g_r = np.where(np.arange(n) == 0, np.nan, 0.5).astype(f32)
    return Catalogue(star_id=star_ids("F9", ra, dec), ccd=np.array(["S4"] * n), ra=ra, dec=dec,
                     mag_g=mag + g_r, mag_r=mag, magerr_g=np.full(n, 0.01, f32),
                     magerr_r=np.full(n, 0.01, f32), g_r=g_r, flux_g=rng.uniform(1, 2, n),
                     flux_r=rng.uniform(1, 2, n), saturated=np.arange(n) == 1,
                     reference=np.arange(n) > 1, field="F9",
                     zp_source={"g": "MAGZPT", "r": "fallback"})


def test_round_trip_keeps_every_column_and_the_provenance(tmp_path):
    cat = _cat()
    path = write_catalogue(cat, tmp_path / "sub" / "F9.parquet", {"pipeline_version": "9.9"})
    back = read_catalogue(path)
    for col in Catalogue.COLUMNS:
        np.testing.assert_array_equal(getattr(back, col), getattr(cat, col))
    assert back.field == "F9" and back.zp_source == cat.zp_source
    prov = read_catalogue_provenance(path)
    assert prov["pipeline_version"] == "9.9" and prov["n_stars"] == 5
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]      # no temporary left
    assert len(pd.read_parquet(path)) == 5 and len(Table.read(path)) == 5


def test_overwrite_is_atomic_replace(tmp_path):
    path = tmp_path / "F9.parquet"
    write_catalogue(_cat(5), path)
    write_catalogue(_cat(3), path)
    assert read_catalogue(path).n == 3
    assert [p.name for p in tmp_path.iterdir()] == ["F9.parquet"]


def test_empty_catalogue_round_trips(tmp_path):
    cat = _cat(5).take(np.zeros(5, bool))
    path = write_catalogue(cat, tmp_path / "e.parquet")
    assert read_catalogue(path).n == 0


def test_missing_or_bad_files_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_catalogue(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(InputError, match="bad.parquet"):
        read_catalogue(bad)
    other = tmp_path / "other.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(other)
    with pytest.raises(InputError, match="lacks column"):
        read_catalogue(other)


def test_cached_read_reuses_the_catalogue_until_the_file_is_replaced(tmp_path):
    from driftwatch.io.catalogue import read_catalogue_cached

    path = write_catalogue(_cat(5), tmp_path / "F9.parquet")
    first = read_catalogue_cached(path)
    assert read_catalogue_cached(path) is first          # second CCD: no re-read
    with pytest.raises(ValueError):                        # shared between reductions
        first.ra[0] = 0.0
    write_catalogue(_cat(3), path)                         # rebuilt: temp name, then rename
    again = read_catalogue_cached(path)
    assert again is not first and again.n == 3
    with pytest.raises(InputError, match="not found"):
        read_catalogue_cached(tmp_path / "nope.parquet")
