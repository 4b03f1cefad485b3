"""Slack Block Kit messages: pure functions from small dataclasses to JSON-able payloads.

Nothing here reads files, touches the database, logs or sends: :mod:`driftwatch.alerts.outbox`
decides what to queue and :mod:`driftwatch.alerts.sender` delivers it.

A payload is ``{"text": <notification fallback>, "blocks": [...]}`` as an incoming webhook
accepts it. Slack's limits are kept here (see :func:`check_limits`): at most 50 blocks, at most
3,000 characters in a section's text, 150 in a header. A candidate message lists the most
significant candidates of the exposure and ends with "... and N more" pointing at the products,
where every candidate is in the per-CCD candidate tables.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from driftwatch.errors import AlertError
from driftwatch.tasks import CandidateSummary

MAX_BLOCKS = 50
MAX_SECTION_CHARS = 3000
MAX_HEADER_CHARS = 150
MAX_CONTEXT_ELEMENTS = 10
#: Candidates listed one section each; Slack would allow ~46, a person reads far fewer.
DEFAULT_MAX_LISTED = 20

Payload = dict[str, Any]


@dataclass(frozen=True)
class AlertExposure:
    """What a candidate message says about its exposure."""

    expnum: int | None
    night: str | None              # YYYY-MM-DD, local date at the start of the night
    field: str | None
    band: str | None
    date_obs: str | None           # ISO 8601 UTC of shutter open (DATE-OBS)
    path: str | None = None
    product_dir: str | None = None  # the exposure's products folder (all its CCDs)

    @property
    def label(self) -> str:
        if self.expnum is not None:
            return str(self.expnum)
        return os.path.basename(self.path) if self.path else "?"


@dataclass(frozen=True)
class AlertCandidate:
    """One candidate with the CCD it was found on and that CCD's products folder."""

    ccd: str
    candidate: CandidateSummary
    product_dir: str | None = None


@dataclass(frozen=True)
class NightSummary:
    """The figures of the nightly summary."""

    night: str
    n_exposures: int
    n_ccds_done: int
    n_ccds_failed: int
    n_ccds_skipped: int
    n_candidates: int
    n_alerted: int
    median_latency_s: float | None   # arrival of the file to its last CCD done
    n_exposures_failed: int = 0


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def escape(text: str) -> str:
    """Escape the three characters that Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int, tail: str = " …") -> str:
    """Cut ``text`` to at most ``limit`` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - len(tail)] + tail


def product_link(path: str | None, products_root: str | None, products_url: str) -> str | None:
    """Return the URL of a product under ``products_url``, else its local path.

    A path outside ``products_root`` (or with no URL base configured) stays a local path.
    """
    if not path:
        return None
    if products_url and products_root:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(products_root))
        if not rel.startswith(".."):
            return products_url.rstrip("/") + "/" + rel.replace(os.sep, "/")
    return path


def _link(target: str | None, label: str) -> str:
    if not target:
        return ""
    if "://" in target:
        return f"<{target}|{escape(label)}>"
    return f"{escape(label)}: `{escape(target)}`"


def sexagesimal(ra_deg: Sequence[float], dec_deg: Sequence[float]) -> tuple[list[str], list[str]]:
    """Format RA (hours) and Dec (degrees) as sexagesimal strings.

    Parameters
    ----------
    ra_deg, dec_deg : sequence of float, shape (n,)
        ICRS coordinates in degrees.

    Returns
    -------
    ra, dec : list of str, length n
        ``HH:MM:SS.ss`` and ``±DD:MM:SS.s``.
    """
    if len(ra_deg) == 0:
        return [], []
    import astropy.units as u
    from astropy.coordinates import Angle

    ra = Angle(np.asarray(ra_deg, dtype=float) * u.deg).wrap_at(360 * u.deg)
    dec = Angle(np.asarray(dec_deg, dtype=float) * u.deg)
    ra_s = ra.to_string(unit=u.hourangle, sep=":", precision=2, pad=True)
    dec_s = dec.to_string(unit=u.deg, sep=":", precision=1, pad=True, alwayssign=True)
    return [str(s) for s in np.atleast_1d(ra_s)], [str(s) for s in np.atleast_1d(dec_s)]


def _parse_utc(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _fmt_num(value: float | None, fmt: str, missing: str = "n/a") -> str:
    return format(value, fmt) if _finite(value) else missing


def _header(text: str) -> dict[str, Any]:
    return {"type": "header",
            "text": {"type": "plain_text", "text": truncate(text, MAX_HEADER_CHARS), "emoji": True}}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, MAX_SECTION_CHARS)}}


def _context(parts: Iterable[str]) -> dict[str, Any]:
    elements = [{"type": "mrkdwn", "text": truncate(p, MAX_SECTION_CHARS)} for p in parts if p]
    return {"type": "context", "elements": elements[:MAX_CONTEXT_ELEMENTS]}


def check_limits(payload: Payload) -> None:
    """Raise :class:`AlertError` when ``payload`` breaks a Slack Block Kit limit."""
    blocks = payload.get("blocks", [])
    if not payload.get("text"):
        raise AlertError("a message needs a fallback 'text' for notifications")
    if len(blocks) > MAX_BLOCKS:
        raise AlertError(f"{len(blocks)} blocks (Slack allows {MAX_BLOCKS})")
    for i, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "section" and len(block["text"]["text"]) > MAX_SECTION_CHARS:
            raise AlertError(f"block {i}: section text over {MAX_SECTION_CHARS} characters")
        if kind == "header" and len(block["text"]["text"]) > MAX_HEADER_CHARS:
            raise AlertError(f"block {i}: header over {MAX_HEADER_CHARS} characters")
        if kind == "context" and not 1 <= len(block["elements"]) <= MAX_CONTEXT_ELEMENTS:
            raise AlertError(f"block {i}: context needs 1 to {MAX_CONTEXT_ELEMENTS} elements")


# ---------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------
def select_candidates(items: Iterable[AlertCandidate], min_significance: float,
                      kinds: Sequence[str]) -> list[AlertCandidate]:
    """Keep the candidates that alert, most significant first (ties: CCD, time of peak)."""
    chosen = [it for it in items if it.candidate.kind in kinds
              and _finite(it.candidate.significance) and it.candidate.significance >= min_significance]
    chosen.sort(key=lambda it: (-it.candidate.significance, it.ccd,
                                it.candidate.t_peak_s if _finite(it.candidate.t_peak_s) else -1.0))
    return chosen


def _candidate_text(n: int, item: AlertCandidate, ra_s: str, dec_s: str, t0: datetime | None,
                    products_root: str | None, products_url: str) -> str:
    c = item.candidate
    star = f"star `{escape(c.star_id)}`" if c.star_id else "unmatched source"
    mag = f" (mag {c.mag:.2f})" if _finite(c.mag) else ""
    if _finite(c.t_peak_s):
        peak = f"peak t = {c.t_peak_s:.2f} s"
        if t0 is not None:
            t = t0 + timedelta(seconds=c.t_peak_s)
            peak += f" ({t.strftime('%H:%M:%S.')}{t.microsecond // 10000:02d} UTC)"
    else:  # a flash does not drift: its time within the exposure is not measurable
        peak = "time of peak not measurable (no drift)"
    if c.kind == "flash":  # the reduction reports a point source's flux, not a fraction
        amplitude = f"flux {_fmt_num(c.amplitude, '.4g')}"
    else:
        amplitude = f"amplitude {_fmt_num(None if c.amplitude is None else 100 * c.amplitude, '+.1f')}%"
    links = [
        _link(product_link(c.stamp_path, products_root, products_url), "stamp + light curve PNG"),
        _link(product_link(item.product_dir, products_root, products_url), "CCD products"),
    ]
    lines = [
        f"*{n}. {escape(c.kind)}* on *{escape(item.ccd)}* · {star}{mag} · "
        f"x={_fmt_num(c.x, '.1f')} y={_fmt_num(c.y, '.1f')}",
        f"RA {ra_s}  Dec {dec_s}  ({c.ra:.5f}°, {c.dec:+.5f}°)",
        f"{peak} · duration {_fmt_num(c.duration_s, '.2f')} s · {amplitude} · "
        f"significance *{_fmt_num(c.significance, '.1f')}σ*",
    ]
    link_line = " · ".join(x for x in links if x)
    if link_line:
        lines.append(link_line)
    return "\n".join(lines)


def format_candidates(exposure: AlertExposure, items: Sequence[AlertCandidate], *,
                      products_root: str | None = None, products_url: str = "",
                      max_listed: int = DEFAULT_MAX_LISTED, update: bool = False) -> Payload:
    """Build the one message of an exposure's candidates (already selected and sorted).

    ``update`` marks a message sent again after reprocessing changed the candidate list.
    """
    if not items:
        raise AlertError(f"exposure {exposure.label}: no candidates to format")
    max_listed = max(1, min(max_listed, MAX_BLOCKS - 4))  # header, context, divider, overflow
    n = len(items)
    listed = items[:max_listed]
    kinds = sorted({it.candidate.kind for it in items})
    noun = "candidate" if n == 1 else "candidates"
    title = (f"{'Updated: ' if update else ''}{n} transient {noun} in exposure {exposure.label}")
    t0 = _parse_utc(exposure.date_obs)
    when = t0.strftime("%Y-%m-%d %H:%M:%S UTC") if t0 else (exposure.date_obs or "time unknown")
    context = [f"night *{escape(exposure.night or '?')}*", f"field *{escape(exposure.field or '?')}*",
               f"band *{escape(exposure.band or '?')}*", f"shutter open {escape(when)}",
               f"kinds: {escape(', '.join(kinds))}"]
    blocks: list[dict[str, Any]] = [_header(f":telescope: {title}"), _context(context),
                                    {"type": "divider"}]
    ra_s, dec_s = sexagesimal([it.candidate.ra for it in listed], [it.candidate.dec for it in listed])
    for i, item in enumerate(listed):
        blocks.append(_section(_candidate_text(i + 1, item, ra_s[i], dec_s[i], t0,
                                               products_root, products_url)))
    if n > len(listed):
        where = product_link(exposure.product_dir, products_root, products_url)
        more = f"… and {n - len(listed)} more (all {n} are in the CCD candidate tables"
        more += f": {_link(where, 'exposure products')})" if where else ")"
        blocks.append(_section(more))
    top = items[0]
    text = (f"{title} (night {exposure.night}, field {exposure.field}, band {exposure.band}): "
            f"top {top.candidate.kind} on {top.ccd} at {top.candidate.significance:.1f} sigma")
    payload = {"text": truncate(text, MAX_SECTION_CHARS), "blocks": blocks}
    check_limits(payload)
    return payload


# ---------------------------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------------------------
def _ops(title: str, body: str, context: Sequence[str] = ()) -> Payload:
    blocks = [_header(title), _section(body)]
    if context:
        blocks.append(_context(context))
    payload = {"text": truncate(f"{title}: {body}", MAX_SECTION_CHARS), "blocks": blocks}
    check_limits(payload)
    return payload


def _when(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_daemon_started(host: str, pid: int, version: str, at: datetime,
                          watch: Sequence[str] = ()) -> Payload:
    folders = ", ".join(f"`{escape(w)}`" for w in watch) or "(none)"
    return _ops(":large_green_circle: driftwatch started",
                f"driftwatch {escape(version)} is running on *{escape(host)}* (pid {pid}), "
                f"watching {folders}.", [_when(at)])


def format_daemon_stopped(host: str, pid: int, at: datetime, reason: str = "stopped") -> Payload:
    return _ops(":red_circle: driftwatch stopped",
                f"driftwatch on *{escape(host)}* (pid {pid}) {escape(reason)}.", [_when(at)])


def format_exposure_failed(exposure: AlertExposure, error: str, n_failed: int = 0,
                           n_ccds: int = 0) -> Payload:
    ccds = f" ({n_failed} of {n_ccds} CCDs failed)" if n_ccds else ""
    return _ops(f":x: exposure {exposure.label} failed",
                f"Exposure *{escape(exposure.label)}* (night {escape(exposure.night or '?')}, field "
                f"{escape(exposure.field or '?')}) failed{ccds}:\n```{escape(truncate(error, 2000))}```",
                [f"`{escape(exposure.path)}`" if exposure.path else ""])


def format_file_incomplete(path: str, waited_s: float, size_bytes: int | None = None) -> Payload:
    size = f" ({size_bytes:,} bytes so far)" if size_bytes is not None else ""
    return _ops(":hourglass: a file never completed",
                f"`{escape(path)}` is still incomplete after {waited_s:.0f} s{size}: not reduced; "
                "it is checked again at each scan.")


def format_failure_rate(night: str, n_failed: int, n_finished: int, threshold: float) -> Payload:
    rate = n_failed / n_finished if n_finished else 0.0
    return _ops(f":warning: failure rate {100 * rate:.0f}% on night {night}",
                f"{n_failed} of {n_finished} finished CCD jobs of night *{escape(night)}* failed "
                f"(threshold {100 * threshold:.0f}%). See `driftwatch status {escape(night)}`.")


def format_nightly_summary(s: NightSummary) -> Payload:
    latency = (f"{s.median_latency_s:.0f} s" if s.median_latency_s is not None
               and math.isfinite(s.median_latency_s) else "n/a")
    body = (f"*{s.n_exposures}* exposures ({s.n_exposures_failed} failed) · CCDs: "
            f"*{s.n_ccds_done}* done, *{s.n_ccds_failed}* failed, {s.n_ccds_skipped} skipped · "
            f"*{s.n_candidates}* candidates ({s.n_alerted} alerted) · median latency {latency} "
            "(file arrival to last CCD done)")
    return _ops(f":bar_chart: night {s.night} summary", body)


def format_outage_restored(route: str, since: datetime, restored: datetime, n_late: int,
                           last_error: str | None) -> Payload:
    why = f" (last error: {escape(last_error)})" if last_error else ""
    return _ops(":electric_plug: Slack reachable again",
                f"Route *{escape(route)}* was unreachable since {_when(since)}{why}; restored at "
                f"{_when(restored)}, {n_late} message{'s' if n_late != 1 else ''} delivered late.")


def format_test(host: str, at: datetime, route: str) -> Payload:
    return _ops(":white_check_mark: driftwatch test message",
                f"Test message from *{escape(host)}* to route *{escape(route)}*: alerts work.",
                [_when(at)])
