"""``driftwatch config check FILE``: validate a configuration and print it resolved."""

from __future__ import annotations

import argparse
import sys

import yaml

from driftwatch.config import check_paths, load_config
from driftwatch.errors import ConfigError

NAME = "config"
HELP = "check a configuration file and print it resolved (secrets masked)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")
    sub.required = True
    check = sub.add_parser("check", help=HELP, description=HELP)
    check.add_argument("file", help="the YAML configuration file")
    check.add_argument("--no-path-check", action="store_true",
                       help="do not require the watch folders to exist yet")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    problems = [] if args.no_path_check else check_paths(cfg)
    if problems:
        raise ConfigError(f"{cfg.source}: " + "; ".join(problems))
    yaml.safe_dump(cfg.to_dict(mask_secrets=True), sys.stdout, sort_keys=False)
    missing = [r for r in cfg.alerts.routes if r not in cfg.alerts.webhooks]
    if cfg.alerts.enabled and not cfg.alerts.dry_run and missing:
        print(f"# note: no webhook credential found for route(s) {', '.join(missing)}; "
              "alerts to them stay pending until one is provided", file=sys.stderr)
    print(f"# {cfg.source}: OK", file=sys.stderr)
    return 0
