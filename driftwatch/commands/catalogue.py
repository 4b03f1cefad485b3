"""``driftwatch catalogue --g G.fits --r R.fits --out CAT``: build a field's reference catalogue."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from driftwatch.config import DECAM_CCDS, PipelineConfig, load_config
from driftwatch.errors import DriftwatchError, InputError, UsageError
from driftwatch.pipeline.catalogue import build_catalogue
from driftwatch.tasks import CatalogueTask

NAME = "catalogue"
HELP = "build the reference catalogue of a field from its pointed g and r exposures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--g", required=True, metavar="G.fits", help="pointed g exposure")
    parser.add_argument("--r", required=True, metavar="R.fits", help="pointed r exposure")
    parser.add_argument("--out", required=True, metavar="CAT",
                        help="catalogue file to write (Parquet, written atomically)")
    parser.add_argument("--ccd", action="append", default=[], metavar="NAME",
                        help="CCD to include (repeatable; default: every CCD of both files)")
    parser.add_argument("--field", default=None,
                        help="field name, the prefix of star IDs (default: the output file stem)")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="configuration file (its pipeline section; default: built-in)")


def run(args: argparse.Namespace) -> int:
    for name in args.ccd:
        if name not in DECAM_CCDS:
            raise UsageError(f"--ccd {name}: not a DECam science CCD")
    for opt, path in (("--g", args.g), ("--r", args.r)):
        if not Path(path).is_file():
            raise InputError(f"{path}: file not found ({opt})")
    pipeline = load_config(args.config).pipeline if args.config else PipelineConfig()
    field = args.field or Path(args.out).name.split(".")[0]
    task = CatalogueTask(g_path=str(args.g), r_path=str(args.r), out_path=str(args.out),
                         ccds=tuple(args.ccd), pipeline=pipeline, field=field)
    summary = build_catalogue(task)
    if not summary.ok:
        raise DriftwatchError(summary.error or "catalogue failed")
    total = summary.timings.get("total", float("nan"))
    print(f"{summary.out_path}: {summary.n_stars} stars (field {field}, {total:.2f} s)",
          file=sys.stdout)
    return 0
