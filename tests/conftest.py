"""Shared fixtures. Fixtures for one part of the package live in that part's tests folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def write_yaml(tmp_path: Path):
    """Return a function that writes a YAML text to tmp_path/name and returns its path."""

    def _write(text: str, name: str = "driftwatch.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write
