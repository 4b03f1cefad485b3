"""``driftwatch simulate OUTDIR``: write a simulated DECam drift-scan night (and replay it)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from driftwatch.errors import UsageError
from driftwatch.io.decam import CCD_NAMES
from driftwatch.simulate.deliver import deliver
from driftwatch.simulate.night import NightSpec, simulate_night

NAME = "simulate"
HELP = "simulate one night of DECam drift-scan exposures (CP InstCal files, DQ masks, truth)"


def _shape(text: str) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NYxNX (e.g. 4094x2046)") from None
    return ny, nx


def _ccds(text: str) -> tuple[str, ...]:
    if text.strip().lower() == "all":
        return CCD_NAMES
    return tuple(c.strip().upper() for c in text.split(",") if c.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = NightSpec()
    parser.add_argument("outdir", type=Path, help="folder for the images, masks and truth/")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    parser.add_argument("--exposures", type=int, default=d.n_drift,
                        help="number of VR drift exposures (default %(default)s)")
    parser.add_argument("--ccds", type=_ccds, default=d.ccds,
                        help="comma-separated CCD names (S1..S31, N1..N31) or 'all' "
                             f"(default {','.join(d.ccds)})")
    parser.add_argument("--shape", type=_shape, default=d.shape,
                        help="CCD size NYxNX, numpy order (default 4094x2046, full size)")
    parser.add_argument("--stars", type=int, default=d.stars_per_ccd,
                        help="stars per CCD (default %(default)s)")
    parser.add_argument("--compress", action="store_true", help="write RICE-compressed .fits.fz")
    parser.add_argument("--night", default=d.night, help="observing night YYYY-MM-DD (default %(default)s)")
    parser.add_argument("--start-expnum", type=int, default=d.start_expnum,
                        help="EXPNUM of the first exposure (default %(default)s)")
    parser.add_argument("--drift-rate", type=float, default=d.drift_rate_arcsec_s,
                        help="drift rate in Declination, arcsec/s (default %(default)s)")
    parser.add_argument("--pointing-error-arcsec", type=float, default=d.pointing_error_arcsec,
                        help="header WCS of drift exposures off the truth by this much (default %(default)s)")
    parser.add_argument("--field", default=d.field, help="OBJECT name of the field")
    parser.add_argument("--ra", type=float, default=d.ra_deg, help="field centre RA, deg")
    parser.add_argument("--dec", type=float, default=d.dec_deg, help="field centre Dec, deg")
    parser.add_argument("--brightenings", type=int, default=d.brightenings_per_ccd,
                        help="microlensing brightenings per CCD per drift exposure (default %(default)s)")
    parser.add_argument("--flashes", type=int, default=d.flashes_per_ccd,
                        help="millisecond flashes per CCD per drift exposure (default %(default)s)")
    parser.add_argument("--streak-probability", type=float, default=d.streak_probability,
                        help="chance of a satellite streak per CCD per drift exposure")
    parser.add_argument("--deliver-to", type=Path, default=None,
                        help="then replay the files into this folder as the transfer system does")
    parser.add_argument("--cadence", type=float, default=d.drift_cadence_s,
                        help="seconds between exposures in the replay (default %(default)s)")
    parser.add_argument("--write-seconds", type=float, default=None,
                        help="time to write one file in chunks (default min(2, cadence/3))")


def run(args: argparse.Namespace) -> int:
    if args.cadence <= 0:
        raise UsageError("--cadence must be positive")
    if not 0 <= args.streak_probability <= 1:
        raise UsageError("--streak-probability must be within 0..1")
    spec = NightSpec(night=args.night, field=args.field, ra_deg=args.ra, dec_deg=args.dec,
                     n_drift=args.exposures, ccds=args.ccds, shape=args.shape,
                     stars_per_ccd=args.stars, seed=args.seed, compress=args.compress,
                     start_expnum=args.start_expnum, drift_rate_arcsec_s=args.drift_rate,
                     pointing_error_arcsec=args.pointing_error_arcsec,
                     brightenings_per_ccd=args.brightenings, flashes_per_ccd=args.flashes,
                     streak_probability=args.streak_probability)
    spec.validate()
    t0 = time.perf_counter()
    truth = simulate_night(args.outdir, spec)
    took = time.perf_counter() - t0
    ex = truth.exposures
    kinds = truth.events.kind.value_counts().to_dict() if len(truth.events) else {}
    on = truth.trails[truth.trails.on_ccd > 0.5] if len(truth.trails) else truth.trails
    print(f"simulated night {spec.night} field {spec.field} into {args.outdir} in {took:.1f} s")
    print(f"  exposures: {len(ex)} ({', '.join(f'{n} {b}' for b, n in ex.band.value_counts().items())}); "
          f"{len(truth.files)} files ({'RICE .fits.fz' if spec.compress else '.fits'}), "
          f"expnum {ex.expnum.min()}-{ex.expnum.max()}")
    print(f"  CCDs: {len(spec.ccds)} ({','.join(spec.ccds[:8])}{'...' if len(spec.ccds) > 8 else ''}) "
          f"of {spec.shape[0]}x{spec.shape[1]} px")
    print(f"  stars: {len(truth.stars)} in the catalogue; {len(on)} star images on the CCDs over all exposures "
          f"({int(on.saturated.sum()) if len(on) else 0} saturated)")
    print("  events: " + (", ".join(f"{kinds.get(k, 0)} {k}" for k in ("brightening", "flash", "streak", "cosmic"))))
    print(f"  truth: {args.outdir / 'truth'}/{{stars,exposures,trails,events,atmosphere}}.parquet")
    if args.deliver_to is not None:
        write_s = args.write_seconds if args.write_seconds is not None else min(2.0, args.cadence / 3)
        pairs = [(args.outdir / f, args.outdir / d) for f, d in zip(ex.file, ex.dq_file)]
        print(f"delivering {len(pairs)} exposures into {args.deliver_to} every {args.cadence:g} s ...",
              flush=True)
        steps = deliver(pairs, args.deliver_to, args.cadence, seed=args.seed, write_seconds=write_s)
        renames = sum(s.action == "rename" for s in steps)
        print(f"  delivered {2 * len(pairs)} files in {sum(s.action == 'chunk' for s in steps)} chunks, "
              f"{renames} of them under a temporary name then renamed")
    return 0
