"""The contract between the service (dispatcher, executors) and the reduction (workers).

Workers receive a task made only of paths and settings (never pixel arrays, never a database
handle, never a secret) and return a small, picklable summary. Only the dispatcher writes the
database, from these summaries. The same objects cross a process pool and a Dask cluster.

- :class:`CcdTask` -> ``driftwatch.pipeline.ccd.reduce_ccd`` -> :class:`CcdSummary`
- :class:`CatalogueTask` -> ``driftwatch.pipeline.catalogue.build_catalogue`` ->
  :class:`CatalogueSummary`

A worker never raises for bad data: it returns ``ok=False`` with ``error`` (and ``retryable``
False for input that will fail the same way again, True for transient trouble such as a full
disk). An exception that escapes a worker (a bug, a killed process) is treated by the dispatcher
as a retryable failure of that one job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from driftwatch.config import PipelineConfig


@dataclass(frozen=True)
class CcdTask:
    """Reduce one CCD of one drift exposure."""

    image_path: str
    ccd: str
    out_dir: str                      # products of this CCD go under here (atomically)
    pipeline: PipelineConfig
    expnum: int
    input_checksum: str               # of the image file, recorded in the products' provenance
    dq_path: str | None = None        # None: the DQ mask never arrived (flagged in products)
    catalogue_path: str | None = None  # None: first night of the field, detection-only fallback
    alerts_enabled: bool = True       # False: reprocessing without --alerts (no PNG needed)


@dataclass(frozen=True)
class CandidateSummary:
    """One transient candidate, as recorded in the candidates table and sent in alerts."""

    kind: str                         # brightening, dip, flash
    star_id: str | None               # catalogue ID where matched
    ra: float                         # degrees
    dec: float                        # degrees
    x: float                          # pixel (0-based, numpy axis 1)
    y: float                          # pixel (0-based, numpy axis 0)
    t_peak_s: float                   # seconds since shutter open
    duration_s: float
    amplitude: float                  # fractional (0.2 = 20% brightening; negative for a dip)
    significance: float               # sigma, after the correlated-noise correction
    mag: float | None = None          # catalogue magnitude where matched
    stamp_path: str | None = None     # PNG: stamp of the trail and its light curve


@dataclass(frozen=True)
class CcdSummary:
    """What a worker reports back for one CCD job."""

    ccd: str
    ok: bool
    error: str | None = None
    retryable: bool = False
    product_dir: str | None = None
    n_trails: int = 0
    n_matched: int = 0
    n_candidates: int = 0
    candidates: tuple[CandidateSummary, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    notes: tuple[str, ...] = ()       # e.g. "no DQ mask", "no reference catalogue: IDs by position"
    pipeline_version: str = ""


@dataclass(frozen=True)
class CatalogueTask:
    """Build the reference catalogue of one field from its pointed g and r exposures."""

    g_path: str
    r_path: str
    out_path: str                     # the catalogue file (written atomically)
    ccds: tuple[str, ...]
    pipeline: PipelineConfig
    field: str


@dataclass(frozen=True)
class CatalogueSummary:
    ok: bool
    out_path: str | None = None
    n_stars: int = 0
    error: str | None = None
    retryable: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    pipeline_version: str = ""
