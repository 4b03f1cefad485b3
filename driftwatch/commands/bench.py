"""``driftwatch bench``: measure speed, memory and accuracy the same way every time."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import pkgutil
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from driftwatch import __version__, bench
from driftwatch.bench import flatten
from driftwatch.errors import UsageError

NAME = "bench"
HELP = "run the benchmarks (simulated full-size CCDs), write JSON and print a table"
log = logging.getLogger(__name__)


def available() -> list[str]:
    """Return the benchmark areas (modules of driftwatch.bench)."""
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and smaller inputs (under 3 minutes)")
    parser.add_argument("--only", nargs="+", metavar="AREA",
                        help=f"run only these areas ({', '.join(available())})")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output file (default bench-results/bench-<time>.json)")
    parser.add_argument("--compare", type=Path, metavar="OLD.json",
                        help="print the ratio new/old for every figure both runs have")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(flat: dict[str, Any], old: dict[str, Any] | None = None) -> None:
    width = max((len(k) for k in flat), default=10)
    for key, value in flat.items():
        line = f"{key:<{width}}  {_fmt(value):>12}"
        if old is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            prev = old.get(key)
            if isinstance(prev, (int, float)) and not isinstance(prev, bool) and prev:
                line += f"  x{value / prev:.3f} (was {_fmt(prev)})"
        print(line)


def run(args: argparse.Namespace) -> int:
    areas = available()
    chosen = args.only or areas
    unknown = sorted(set(chosen) - set(areas))
    if unknown:
        raise UsageError(f"unknown benchmark area(s) {', '.join(unknown)}; "
                         f"known: {', '.join(areas)}")
    old = None
    if args.compare:
        try:
            old = flatten(json.loads(args.compare.read_text())["results"])
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"{args.compare}: not a driftwatch bench JSON file ({exc})") from None
    results: dict[str, Any] = {}
    failed = []
    for area in chosen:
        module = importlib.import_module(f"driftwatch.bench.{area}")
        print(f"# {area} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            results[area] = module.run(quick=args.quick)
        except Exception as exc:  # one broken area must not hide the others' figures
            log.exception("benchmark %s failed", area)
            results[area] = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(area)
        print(f"# {area} took {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    doc = {
        "driftwatch": __version__,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "results": results,
    }
    out = args.out or Path("bench-results") / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out)
    print_table(flatten(results), old)
    print(f"# written {out}", file=sys.stderr)
    return 1 if failed else 0
