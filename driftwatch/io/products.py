"""Write the products of one CCD atomically: Parquet tables, the refined WCS, provenance, PNGs.

Everything of one CCD goes into one folder ``<out_dir>/<ccd>/``, built under a hidden temporary
name in the same parent folder and renamed into place only when every file is written, so a
reader (or a crash) never sees a half-written product. A previous folder of the same CCD is
moved aside and removed after the rename. Tables are Parquet files that both
``astropy.table.Table.read`` and ``pandas.read_parquet`` open; each carries the provenance as
schema metadata (key ``driftwatch``, JSON), and ``provenance.json`` repeats it. String columns
hold ``""`` where there is no value (e.g. ``star_id`` of an unmatched trail).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits

from driftwatch.io.arrow import column_to_arrow, object_to_arrow

__all__ = ["ProductWriter", "product_writer", "write_table", "read_provenance"]

META_KEY = b"driftwatch"


def write_table(path: Path, columns: Mapping[str, np.ndarray], provenance: Mapping[str, Any],
                *, units: Mapping[str, str] | None = None) -> None:
    """Write a columnar table as Parquet with the provenance in the schema metadata."""
    arrays = {}
    meta = {META_KEY: json.dumps(dict(provenance), sort_keys=True).encode()}
    strings = []
    for name, col in columns.items():
        col = np.asarray(col)
        if col.dtype == object or col.dtype.kind == "U":
            # astropy's reader needs non-null strings and their width: "" stands for none
            arrays[name], width = object_to_arrow(col)
            meta[f"table::len::{name}".encode()] = str(max(width, 1)).encode()
            strings.append(name)
        else:
            arrays[name] = column_to_arrow(col)
    table = pa.Table.from_arrays(list(arrays.values()), names=list(arrays))
    if units:
        meta[b"driftwatch.units"] = json.dumps(dict(units), sort_keys=True).encode()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    # dictionary encoding only where values repeat (ids, classes): tried on every float
    # column it is built and then abandoned, which took 3/4 of the write time
    pq.write_table(table, path, compression="snappy", use_dictionary=strings)


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the provenance stored in a product table."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[META_KEY])


class ProductWriter:
    """Files of one CCD's product folder, written into a temporary folder until committed."""

    def __init__(self, tmp: Path, final: Path, provenance: Mapping[str, Any]) -> None:
        self.tmp = tmp
        self.final = final
        self.provenance = dict(provenance)

    def table(self, name: str, columns: Mapping[str, np.ndarray],
              units: Mapping[str, str] | None = None) -> Path:
        """Write ``<name>.parquet``."""
        path = self.tmp / f"{name}.parquet"
        write_table(path, columns, self.provenance, units=units)
        return path

    def header(self, name: str, header: fits.Header) -> Path:
        """Write a FITS file with an empty primary HDU carrying ``header`` (e.g. the WCS)."""
        hdr = header.copy()
        prov = self.provenance
        hdr["DWVERS"] = (str(prov.get("pipeline_version", "")), "driftwatch version")
        hdr["DWCONFIG"] = (str(prov.get("config_hash", "")), "pipeline config hash")
        hdr["DWINSUM"] = str(prov.get("input_checksum", ""))[:64]  # no room for a comment
        path = self.tmp / f"{name}.fits"
        fits.PrimaryHDU(header=hdr).writeto(path)
        return path

    def json(self, name: str, data: Any) -> Path:
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
        return path

    def path(self, relative: str) -> Path:
        """Return a path inside the temporary folder (parents created) for other writers."""
        p = self.tmp / relative
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def final_path(self, relative: str) -> Path:
        """Where ``relative`` will be once committed."""
        return self.final / relative


@contextmanager
def product_writer(out_dir: str | os.PathLike[str], ccd: str,
                   provenance: Mapping[str, Any]) -> Iterator[ProductWriter]:
    """Yield a :class:`ProductWriter`; on success rename its folder to ``out_dir/ccd``.

    On any exception the temporary folder is removed and the exception propagates: no partial
    product is ever left under the final name.
    """
    parent = Path(out_dir)
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / ccd
    tmp = parent / f".{ccd}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer = ProductWriter(tmp, final, provenance)
        writer.json("provenance", writer.provenance)
        yield writer
        _fsync_dir(tmp)
        old = None
        if final.exists():
            old = parent / f".{ccd}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def candidate_png(path: Path, stamp: np.ndarray, t: np.ndarray, flux: np.ndarray,
                  err: np.ndarray, t_peak: float, duration: float, title: str) -> None:
    """Draw a candidate: the image stamp around its trail and its light curve, event marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 2.6), dpi=80)
    ax1 = fig.add_axes((0.04, 0.15, 0.34, 0.7))
    ax2 = fig.add_axes((0.48, 0.18, 0.49, 0.68))
    finite = stamp[np.isfinite(stamp)]
    lo, hi = (np.percentile(finite, [5, 99.5]) if finite.size else (0.0, 1.0))
    ax1.imshow(stamp, origin="lower", cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    ax1.set_xticks([])
    ax1.set_yticks([])
    ax2.errorbar(t, flux, yerr=err, fmt=".", ms=3, lw=0.6, color="k")
    if np.isfinite(t_peak):
        ax2.axvspan(t_peak - duration / 2, t_peak + duration / 2, color="tab:orange", alpha=0.3)
        ax2.axvline(t_peak, color="tab:red", lw=0.8)
    ax2.set_xlabel("s since shutter open")
    ax2.set_ylabel("normalised flux")
    fig.suptitle(title, fontsize=8)
    fig.savefig(path)
