"""Logging set-up (called only from the command line) and the context-tagging adapter."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Any, MutableMapping

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class ContextAdapter(logging.LoggerAdapter):
    """Prefix log lines with their night, exposure and CCD (``[2026-11-21 123456 S4]``)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        ctx = " ".join(str(v) for v in (self.extra or {}).values() if v is not None)
        return (f"[{ctx}] {msg}" if ctx else msg), kwargs


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(verbosity: int = 0, level: str | None = None, file: Path | None = None,
                  fmt: str = "text") -> None:
    """Configure the root logger: stderr always, plus a daily-rotated file when given."""
    if level is None:
        level = "WARNING" if verbosity <= 0 else "INFO" if verbosity == 1 else "DEBUG"
    formatter: logging.Formatter = (
        _JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT)
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.TimedRotatingFileHandler(file, when="midnight",
                                                                  backupCount=30))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(formatter)
        root.addHandler(h)
    root.setLevel(level)
    # Third-party chatter that would drown the night's log.
    for noisy in ("distributed", "watchdog", "urllib3", "matplotlib", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))
