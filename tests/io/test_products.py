"""Product folders are written atomically and readable by astropy and pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table

from driftwatch.io.products import product_writer, read_provenance

PROV = {"pipeline_version": "9.9", "config_hash": "abc", "input_checksum": "f" * 64}


def _write(out, rows: int = 3):
    with product_writer(out, "S4", PROV) as w:
        w.table("trails", {"trail_id": np.array(["a", "b", "c"][:rows], dtype=object),
                           "star_id": np.array([None, "G12", None][:rows], dtype=object),
                           "flux": np.arange(rows, dtype=float),
                           "flags": np.arange(rows, dtype=np.uint16)},
                units={"flux": "adu"})
        hdr = fits.Header()
        hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TPV", "DEC--TPV"
        hdr["PV1_7"] = -0.0012
        w.header("wcs", hdr)
    return out / "S4"


def test_tables_read_by_astropy_and_pandas_with_provenance(tmp_path):
    folder = _write(tmp_path)
    t = Table.read(folder / "trails.parquet")
    df = pd.read_parquet(folder / "trails.parquet")
    assert list(t["trail_id"]) == ["a", "b", "c"] == list(df["trail_id"])
    assert list(df["star_id"]) == ["", "G12", ""]
    assert df["flags"].dtype == np.uint16
    assert read_provenance(folder / "trails.parquet") == PROV
    h = fits.getheader(folder / "wcs.fits")
    assert h["CTYPE1"] == "RA---TPV" and h["PV1_7"] == -0.0012 and h["DWCONFIG"] == "abc"
    assert (folder / "provenance.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["S4"]  # no temporary folder left


def test_failure_leaves_no_partial_product(tmp_path):
    with pytest.raises(RuntimeError):
        with product_writer(tmp_path, "S4", PROV) as w:
            w.table("trails", {"x": np.arange(3.0)})
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_the_old_folder_and_keeps_it_on_failure(tmp_path):
    _write(tmp_path, rows=3)
    _write(tmp_path, rows=2)
    assert len(pd.read_parquet(tmp_path / "S4" / "trails.parquet")) == 2
    with pytest.raises(ValueError):
        with product_writer(tmp_path, "S4", PROV):
            raise ValueError("bad data")
    assert len(pd.read_parquet(tmp_path / "S4" / "trails.parquet")) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["S4"]
