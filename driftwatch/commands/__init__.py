"""Subcommands of ``driftwatch``: one module each, discovered by :mod:`driftwatch.cli`."""
