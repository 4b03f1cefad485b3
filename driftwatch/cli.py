"""The ``driftwatch`` command: argument parsing, logging set-up and exit codes.

Each subcommand lives in its own module of :mod:`driftwatch.commands` and is found there at
start-up, so a feature appears in the CLI only when its module exists. A command module defines::

    NAME = "simulate"                       # the subcommand
    HELP = "one line for --help"
    def add_arguments(parser) -> None: ...
    def run(args) -> int: ...               # exit code

Exit codes: 0 success, 1 the work failed, 2 bad usage or bad configuration. This is the only
place that configures logging (see :mod:`driftwatch.logs`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from driftwatch import __version__, commands
from driftwatch.errors import ConfigError, DriftwatchError, UsageError

log = logging.getLogger("driftwatch")


def command_names() -> list[str]:
    """Return the subcommands (module names of driftwatch.commands), without importing them."""
    return sorted(m.name for m in pkgutil.iter_modules(commands.__path__)
                  if not m.name.startswith("_"))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Return the parser; with ``only``, import just that subcommand's module.

    Importing a command pulls in its dependencies (the simulator brings scipy, pandas and
    astropy), so the long-running daemon imports only what ``run`` needs.
    """
    parser = argparse.ArgumentParser(
        prog="driftwatch",
        description="Automated nightly processing of DECam drift-scan exposures.",
    )
    parser.add_argument("--version", action="version", version=f"driftwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in command_names():
        if only is not None and name != only:
            sub.add_parser(name)  # present for argparse, never the chosen one
            continue
        module = importlib.import_module(f"{commands.__name__}.{name}")
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in command_names() else None)
    args = parser.parse_args(argv)
    from driftwatch.logs import setup_logging

    setup_logging(verbosity=args.verbose)
    try:
        return int(args._run(args) or 0)
    except (ConfigError, UsageError) as exc:
        print(f"driftwatch: error: {exc}", file=sys.stderr)
        return 2
    except DriftwatchError as exc:
        print(f"driftwatch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("driftwatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
