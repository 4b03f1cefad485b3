"""The exception hierarchy of driftwatch.

Every error that the command line turns into an exit code, or that a worker reports back to the
dispatcher, derives from :class:`DriftwatchError`. Messages name the file (and key, CCD, ...)
they are about, so an operator can act on them without a traceback.
"""

from __future__ import annotations


class DriftwatchError(Exception):
    """Base class of every error raised on purpose by driftwatch."""


class ConfigError(DriftwatchError):
    """The configuration file is missing, malformed or has an invalid value (exit code 2)."""


class UsageError(DriftwatchError):
    """A command-line argument is invalid (exit code 2)."""


class InputError(DriftwatchError):
    """An input file is unreadable, incomplete or not what it claims to be.

    Not retryable: the same bytes will fail the same way.
    """


class IncompleteFileError(InputError):
    """A file is still being written (or was cut short); wait and look again later."""


class ScienceError(DriftwatchError):
    """The data cannot be reduced (no stars, no usable WCS, ...): a reason, not a crash."""


class StoreError(DriftwatchError):
    """The job database cannot be opened, migrated or written."""


class AlertError(DriftwatchError):
    """An alert could not be formatted or delivered."""
