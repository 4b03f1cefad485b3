"""``driftwatch run [--config FILE] [--once]``: the watcher daemon (what systemd runs)."""

from __future__ import annotations

import argparse

from driftwatch.commands._common import add_config_option, load_from_args
from driftwatch.logs import setup_logging
from driftwatch.service.daemon import DEFAULT_CCD_TASK, RunOptions, main

NAME = "run"
HELP = "watch the folders and reduce every exposure as it arrives (the daemon)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument("--once", action="store_true",
                        help="burst mode: take what is in the folders, reduce it all, exit")
    # For tests and benchmarks: the worker function, as module:function (not for operators).
    parser.add_argument("--ccd-task", default=DEFAULT_CCD_TASK, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    cfg = load_from_args(args)
    # The daemon logs at the configured level (and to its file) unless -v asks for more.
    level = cfg.logging.level
    if args.verbose >= 2:
        level = "DEBUG"
    setup_logging(level=level, file=cfg.logging.file, fmt=cfg.logging.format)
    return main(cfg, RunOptions(once=args.once, ccd_task=args.ccd_task))
