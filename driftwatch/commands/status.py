"""``driftwatch status [NIGHT] [--json]``: what the database knows, per night and exposure.

For each night: CCD jobs by state, candidates, alerts pending and sent, failures with their
reasons, throughput (CCDs done per minute between the first start and the last finish) and
latency (from the arrival of an exposure to the end of its last CCD).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from driftwatch.commands._common import add_config_option, load_from_args
from driftwatch.errors import UsageError

NAME = "status"
HELP = "show per night and exposure the CCD jobs by state, candidates, alerts and failures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("night", nargs="?", metavar="NIGHT",
                        help="one night (YYYY-MM-DD), shown per exposure; default: every night")
    add_config_option(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _jobs(counts: dict[str, int]) -> str:
    return " ".join(f"{state}={n}" for state, n in counts.items()) or "no jobs"


def _print_night(rep: dict[str, Any], detail: bool) -> None:
    alerts = rep["alerts"]
    thr = rep["throughput_ccd_per_min"]
    print(f"{rep['night']}: {rep['n_exposures']} exposure(s); CCD jobs: {_jobs(rep['jobs'])}; "
          f"candidates {rep['candidates']}; alerts pending {alerts.get('pending', 0)} "
          f"sent {alerts.get('sent', 0)}; throughput "
          f"{'-' if thr is None else f'{thr:.1f} CCD/min'}; latency median "
          f"{_fmt_s(rep['latency_s_median'])} max {_fmt_s(rep['latency_s_max'])}")
    if not detail:
        return
    for e in rep["exposures"]:
        print(f"  {e['expnum']:>8} {e['state']:<8} {_jobs(e['jobs']):<40} "
              f"cand {e['candidates']:<3} latency {_fmt_s(e['latency_s']):>8}  "
              f"{Path(e['path']).name}")
        for f in e["failures"]:
            print(f"           FAILED {f['ccd']} after {f['attempts']} attempt(s): {f['error']}")
        for reason in e["skipped"]:
            print(f"           skipped: {reason}")


def run(args: argparse.Namespace) -> int:
    from driftwatch.service.planner import validate_night
    from driftwatch.store.db import Store
    from driftwatch.store.report import night_report, nights

    cfg = load_from_args(args)
    if args.night is not None:
        try:
            validate_night(args.night)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    url = make_url(cfg.paths.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        report: dict[str, Any] = {"database": str(url.database), "nights": []}
        if args.json:
            json.dump(report, sys.stdout, indent=2)
            print()
        else:
            print(f"no database yet at {url.database}: nothing has been processed")
        return 0
    store = Store.from_config(cfg)
    try:
        with store.session_scope(readonly=True) as s:
            which = [args.night] if args.night else nights(s)
            reports = [night_report(s, n) for n in which]
    finally:
        store.dispose()
    if args.json:
        json.dump({"nights": reports}, sys.stdout, indent=2, default=str)
        print()
        return 0
    if not reports or (args.night and not reports[0]["n_exposures"]):
        print(f"no drift exposures recorded{' for ' + args.night if args.night else ''}")
        return 0
    for rep in reports:
        _print_night(rep, detail=args.night is not None)
    return 0
