from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from driftwatch.alerts import format as fmt
from driftwatch.errors import AlertError
from tests.alerts.conftest import candidate, exposure


def test_candidate_message_carries_every_field():
    payload = fmt.format_candidates(exposure(), [candidate(0)], products_root="/data/products",
                                    products_url="https://obs.example/dw")
    fmt.check_limits(payload)
    text = json.dumps(payload)
    head = payload["blocks"][0]["text"]["text"]
    assert "1 transient candidate in exposure 123456" in head
    ctx = " ".join(e["text"] for e in payload["blocks"][1]["elements"])
    assert "2026-11-21" in ctx and "F3" in ctx and "VR" in ctx and "03:14:15" in ctx
    body = payload["blocks"][3]["text"]["text"]
    for part in ("brightening", "S4", "G000123", "mag 17.32", "05:12:33.12", "-12:03:04.5",
                 "78.13801", "-12.05125", "t = 7.31 s", "03:14:22.81 UTC", "duration 1.20 s",
                 "+23.0%", "12.0σ"):
        assert part in body, part
    assert "<https://obs.example/dw/2026-11-21/123456/S4/cand_0.png|" in body
    assert "<https://obs.example/dw/2026-11-21/123456/S4|CCD products>" in body
    assert payload["text"].startswith("1 transient candidate")
    assert "blocks" in text


def test_local_paths_without_products_url():
    payload = fmt.format_candidates(exposure(), [candidate(0)], products_root="/data/products")
    body = payload["blocks"][3]["text"]["text"]
    assert "`/data/products/2026-11-21/123456/S4/cand_0.png`" in body


def test_overflow_becomes_and_n_more_within_slack_limits():
    items = [candidate(i, significance=50 - i * 0.1) for i in range(120)]
    payload = fmt.format_candidates(exposure(), items, max_listed=1000)
    fmt.check_limits(payload)
    assert len(payload["blocks"]) <= fmt.MAX_BLOCKS
    listed = sum(1 for b in payload["blocks"] if b["type"] == "section") - 1
    last = payload["blocks"][-1]["text"]["text"]
    assert f"and {120 - listed} more" in last and "all 120" in last
    assert "/data/products/2026-11-21/123456" in last


def test_long_text_is_cut_to_the_section_limit():
    items = [candidate(0, star_id="X" * 5000)]
    payload = fmt.format_candidates(exposure(), items)
    fmt.check_limits(payload)
    assert len(payload["blocks"][3]["text"]["text"]) == fmt.MAX_SECTION_CHARS


def test_check_limits_rejects_oversize():
    with pytest.raises(AlertError, match="blocks"):
        fmt.check_limits({"text": "x", "blocks": [{"type": "divider"}] * 51})
    with pytest.raises(AlertError, match="section"):
        fmt.check_limits({"text": "x", "blocks": [{"type": "section",
                                                   "text": {"type": "mrkdwn", "text": "y" * 3001}}]})


def test_select_threshold_kinds_and_order():
    items = [candidate(0, significance=7.9), candidate(1, significance=9.0, kind="dip"),
             candidate(2, significance=20.0), candidate(3, significance=30.0, kind="satellite")]
    chosen = fmt.select_candidates(items, 8.0, ("brightening", "dip"))
    assert [c.candidate.significance for c in chosen] == [20.0, 9.0]


def test_mrkdwn_is_escaped():
    assert fmt.escape("a<b>&c") == "a&lt;b&gt;&amp;c"


def test_sexagesimal_matches_astropy_skycoord():
    from astropy.coordinates import SkyCoord

    ra, dec = fmt.sexagesimal([359.99999, 0.5], [-0.5, 89.9])
    ref = SkyCoord([359.99999, 0.5], [-0.5, 89.9], unit="deg")
    assert ra[1] == "00:02:00.00" and dec[0] == "-00:30:00.0"
    assert ref[1].ra.hms.m == 2


def test_ops_messages_are_valid():
    t = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)
    msgs = [
        fmt.format_daemon_started("host", 12, "0.1.0", t, ["/in"]),
        fmt.format_daemon_stopped("host", 12, t),
        fmt.format_exposure_failed(exposure(), "boom <x>", 3, 61),
        fmt.format_file_incomplete("/in/a.fits.fz", 900, 1234),
        fmt.format_failure_rate("2026-11-21", 30, 100, 0.2),
        fmt.format_nightly_summary(fmt.NightSummary("2026-11-21", 10, 600, 5, 10, 7, 3, 42.0)),
        fmt.format_outage_restored("default", t, t, 4, "ConnectionError: Connection refused"),
        fmt.format_test("host", t, "default"),
    ]
    for m in msgs:
        fmt.check_limits(m)
    assert "boom &lt;x&gt;" in json.dumps(msgs[2])
    assert "30 of 100" in msgs[4]["text"]
    assert "4 messages delivered late" in msgs[6]["text"]


def test_flash_without_time_and_missing_values():
    from dataclasses import replace

    item = candidate(0, kind="flash", star_id=None)
    c = replace(item.candidate, t_peak_s=float("nan"), duration_s=0.0, amplitude=5321.0, mag=None)
    payload = fmt.format_candidates(exposure(), [type(item)(item.ccd, c, item.product_dir)])
    body = payload["blocks"][3]["text"]["text"]
    assert "time of peak not measurable" in body and "flux 5321" in body
    assert "unmatched source" in body and "mag" not in body
    none_time = replace(c, t_peak_s=None)  # as read back from SQL NULL
    assert fmt.select_candidates([type(item)("S4", none_time)], 8.0, ("flash",))
