"""Options shared by the subcommands: ``--config FILE`` and loading it.

Every command that needs the configuration takes the same option::

    --config FILE   default: $DRIFTWATCH_CONFIG, else /etc/driftwatch/driftwatch.yaml
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from driftwatch.config import Config, load_config

DEFAULT_CONFIG = Path("/etc/driftwatch/driftwatch.yaml")
CONFIG_ENV = "DRIFTWATCH_CONFIG"


def default_config_path() -> Path:
    """Return $DRIFTWATCH_CONFIG if set, else the installed configuration path."""
    env = os.environ.get(CONFIG_ENV, "").strip()
    return Path(env) if env else DEFAULT_CONFIG


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` to a command's parser."""
    parser.add_argument(
        "--config", metavar="FILE", type=Path, default=None,
        help=f"configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )


def load_from_args(args: argparse.Namespace) -> Config:
    """Load and validate the configuration named by ``--config`` (or its defaults).

    Raises ConfigError (exit code 2) naming the file when it is missing or invalid.
    """
    path = getattr(args, "config", None) or default_config_path()
    return load_config(path)
