"""``driftwatch reduce EXPOSURE.fits [--ccd S4 ...] --out DIR``: reduce one exposure by hand.

Runs ``reduce_ccd`` in the foreground, CCD by CCD, with a progress bar; no database, no alerts
(PNG stamps are written unless ``--no-stamps``). Each CCD's products go to ``DIR/<CCD>/``. The
DQ mask is ``--dq FILE``, else the CP sibling of the image (``_ooi_`` -> ``_ood_``) when it
exists. Exit code 0 when every CCD was reduced, 1 when any failed (each failure is printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path

from driftwatch.config import DECAM_CCDS, PipelineConfig
from driftwatch.errors import InputError, UsageError

NAME = "reduce"
HELP = "reduce one drift exposure in the foreground (CCD by CCD) and write its products"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="the exposure (CP InstCal .fits or .fits.fz)")
    parser.add_argument("--ccd", action="append", default=None, metavar="NAME",
                        help="a CCD to reduce (repeat; default: every CCD in the file)")
    parser.add_argument("--catalogue", type=Path, default=None, metavar="CAT",
                        help="reference catalogue of the field (star IDs)")
    parser.add_argument("--dq", type=Path, default=None, metavar="FILE",
                        help="the DQ mask (default: the _ood_ sibling of the image, if any)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for the products (DIR/<CCD>/...)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="take the pipeline settings from this configuration file")
    parser.add_argument("--no-stamps", action="store_true", help="do not draw candidate PNGs")


def _checksum(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _dq_sibling(image: Path) -> Path | None:
    if "_ooi_" in image.name:
        cand = image.with_name(image.name.replace("_ooi_", "_ood_"))
        if cand.is_file():
            return cand
    return None


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from driftwatch.config import load_config
    from driftwatch.io.decam import read_exposure_info
    from driftwatch.pipeline.ccd import reduce_ccd
    from driftwatch.tasks import CcdTask

    image: Path = args.image
    if not image.is_file():
        raise UsageError(f"{image}: no such file")
    if args.catalogue is not None and not args.catalogue.is_file():
        raise UsageError(f"{args.catalogue}: no such catalogue file")
    if args.dq is not None and not args.dq.is_file():
        raise UsageError(f"{args.dq}: no such DQ mask file")
    pipeline = load_config(args.config).pipeline if args.config else PipelineConfig()
    if args.no_stamps:
        pipeline = dataclasses.replace(pipeline, stamps=False)
    info = read_exposure_info(image)
    if args.ccd:
        unknown = [c for c in args.ccd if c not in DECAM_CCDS]
        if unknown:
            raise UsageError(f"not DECam CCD names: {', '.join(unknown)}")
        missing = [c for c in args.ccd if c not in info.ccds]
        if missing:
            raise InputError(f"{image}: no extension for CCD(s) {', '.join(missing)}")
        ccds = list(args.ccd)
    else:
        ccds = [c for c in info.ccds if c not in pipeline.skip_ccds]
    if not ccds:
        raise InputError(f"{image}: no CCD to reduce")
    dq = args.dq or _dq_sibling(image)
    checksum = _checksum(image)
    failed = 0
    n_cand = 0
    bar = tqdm(ccds, unit="ccd", desc=image.name, file=sys.stderr)
    for ccd in bar:
        bar.set_postfix_str(ccd)
        task = CcdTask(image_path=str(image), ccd=ccd, out_dir=str(args.out),
                       pipeline=pipeline, expnum=info.expnum, input_checksum=checksum,
                       dq_path=str(dq) if dq else None,
                       catalogue_path=str(args.catalogue) if args.catalogue else None,
                       alerts_enabled=pipeline.stamps)
        summary = reduce_ccd(task)
        if not summary.ok:
            failed += 1
            tqdm.write(f"driftwatch: {ccd}: failed: {summary.error}", file=sys.stderr)
            continue
        n_cand += summary.n_candidates
        tqdm.write(f"{ccd}: {summary.n_trails} trails, {summary.n_candidates} candidates "
                   f"-> {summary.product_dir}"
                   + (f" ({'; '.join(summary.notes)})" if summary.notes else ""))
    bar.close()
    print(f"{image}: {len(ccds) - failed}/{len(ccds)} CCDs reduced, {n_cand} candidates, "
          f"products in {args.out}")
    return 1 if failed else 0
