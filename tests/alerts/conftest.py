"""Fixtures of the alerts tests: a config with a webhook pointing at a local server, a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftwatch.alerts.format import AlertCandidate, AlertExposure
from driftwatch.config import Config, config_from_dict
from driftwatch.store.db import Store
from driftwatch.tasks import CandidateSummary

#: The secret part of the test webhook URL: grepped for in logs, errors and the database.
SECRET_PATH = "/services/T0TEST/B0TEST/sEcReTtOkEn0123456789"


def make_config(tmp_path: Path, webhook_url: str | None = None, *,
                extra_env: dict[str, str] | None = None, **alerts) -> Config:
    data = {
        "paths": {"watch": [str(tmp_path / "in")], "products": str(tmp_path / "products"),
                  "state": str(tmp_path / "state")},
        "alerts": {"rate_per_s": 10.0, "burst": 3, "retry_backoff_s": 0.1,
                   "retry_max_backoff_s": 0.5, "timeout_s": 2.0, **alerts},
    }
    env = {"DRIFTWATCH_SLACK_WEBHOOK": webhook_url} if webhook_url else {}
    env.update(extra_env or {})
    return config_from_dict(data, base=tmp_path, environ=env)


@pytest.fixture
def store(tmp_path: Path):
    s = Store(f"sqlite:///{tmp_path / 'state' / 'driftwatch.sqlite'}")
    yield s
    s.dispose()


def candidate(i: int = 0, *, kind: str = "brightening", significance: float = 12.0,
              ccd: str = "S4", star_id: str | None = "G000123") -> AlertCandidate:
    c = CandidateSummary(kind=kind, star_id=star_id, ra=78.13801 + i * 0.001, dec=-12.05125,
                         x=100.0 + i, y=200.0, t_peak_s=7.31 + i, duration_s=1.2,
                         amplitude=0.23, significance=significance, mag=17.32,
                         stamp_path=f"/data/products/2026-11-21/123456/{ccd}/cand_{i}.png")
    return AlertCandidate(ccd, c, f"/data/products/2026-11-21/123456/{ccd}")


def exposure(expnum: int = 123456) -> AlertExposure:
    return AlertExposure(expnum=expnum, night="2026-11-21", field="F3", band="VR",
                         date_obs="2026-11-22T03:14:15.500", path=f"/in/DECam_00{expnum}.fits.fz",
                         product_dir=f"/data/products/2026-11-21/{expnum}")
