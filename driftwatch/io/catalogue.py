"""Read and write a field's reference catalogue: one Parquet table per field.

Columns are those of :class:`~driftwatch.science.catalogue.Catalogue` (``star_id`` string, ``ccd``
string, ``ra``/``dec`` degrees, ``mag_g``/``mag_r``/``magerr_*``/``g_r`` magnitudes,
``flux_g``/``flux_r`` ADU/s, ``saturated``/``reference`` booleans). The schema metadata key
``driftwatch`` holds JSON provenance: field, zero-point sources, input files and their exposure
numbers, pipeline version, config hash, creation time. astropy's ``Table.read`` and pandas'
``read_parquet`` open it.

The file is written under a temporary name in the same folder, flushed to disk, then renamed
into place with :func:`os.replace`: a reader never sees half a catalogue, and a crash leaves at
most a stray temporary file.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from driftwatch.errors import InputError
from driftwatch.science.catalogue import Catalogue

__all__ = ["write_catalogue", "read_catalogue", "read_catalogue_cached",
           "read_catalogue_provenance", "META_KEY"]

META_KEY = b"driftwatch"

_TYPES: dict[str, pa.DataType] = {
    "star_id": pa.string(), "ccd": pa.string(), "ra": pa.float64(), "dec": pa.float64(),
    "mag_g": pa.float32(), "mag_r": pa.float32(), "magerr_g": pa.float32(),
    "magerr_r": pa.float32(), "g_r": pa.float32(), "flux_g": pa.float64(),
    "flux_r": pa.float64(), "saturated": pa.bool_(), "reference": pa.bool_(),
}


def write_catalogue(cat: Catalogue, path: str | os.PathLike[str],
                    provenance: Mapping[str, Any] | None = None) -> Path:
    """Write ``cat`` to ``path`` atomically; return the final path.

    Parameters
    ----------
    cat : Catalogue
    path : path-like
        Destination (``.parquet``); parent folders are created.
    provenance : mapping, optional
        JSON-able facts stored in the schema metadata (field and zero-point sources are added).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, typ in _TYPES.items():
        col = getattr(cat, name)
        if typ == pa.string():
            arrays[name] = pa.array([str(v) for v in np.asarray(col)], typ)
        else:
            arrays[name] = pa.array(np.asarray(col), typ)
    table = pa.table(arrays)
    meta = {"field": cat.field, "zp_source": dict(cat.zp_source), "n_stars": cat.n,
            **dict(provenance or {})}
    table = table.replace_schema_metadata(
        {META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_catalogue_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the provenance stored with a catalogue file."""
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta.get(META_KEY, b"{}"))
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise InputError(f"{path}: not a readable catalogue ({exc})") from exc


def read_catalogue(path: str | os.PathLike[str]) -> Catalogue:
    """Read a catalogue written by :func:`write_catalogue`.

    Raises
    ------
    InputError
        The file is missing, not Parquet, or lacks a catalogue column.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: catalogue file not found")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet catalogue ({exc})") from exc
    missing = [c for c in _TYPES if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: catalogue lacks column(s) {', '.join(missing)}")
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    cols: dict[str, np.ndarray] = {}
    for name, typ in _TYPES.items():
        col = table.column(name)
        if typ == pa.string():
            cols[name] = np.asarray(col.to_pylist(), dtype=str)
        else:
            cols[name] = col.to_numpy(zero_copy_only=False)
    return Catalogue(field=str(meta.get("field", "")), zp_source=dict(meta.get("zp_source", {})),
                     **cols)


#: Catalogues kept by :func:`read_catalogue_cached` in one process (a worker serves one or two
#: fields a night; each field's catalogue is a few MB).
CACHE_SIZE = 4
_cache: OrderedDict[tuple[str, int, int, int], Catalogue] = OrderedDict()
_cache_lock = threading.Lock()


def read_catalogue_cached(path: str | os.PathLike[str]) -> Catalogue:
    """Read a catalogue as :func:`read_catalogue` does, reusing this process's last reads.

    A worker reduces the 61 CCDs of an exposure, and the next exposures of the same field,
    against one field catalogue: reading and decoding its ~60,000 rows for every CCD cost
    ~25 ms each time. The cache key is the file's resolved path, inode, size and modification
    time, so a catalogue rebuilt in place (written to a temporary name and renamed, a new
    inode) is read anew. The arrays of a cached catalogue are read-only: reductions share it.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        return read_catalogue(path)  # raises the usual InputError
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        cat = _cache.get(key)
        if cat is not None:
            _cache.move_to_end(key)
            return cat
    cat = read_catalogue(path)
    for value in vars(cat).values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    with _cache_lock:
        _cache[key] = cat
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return cat
