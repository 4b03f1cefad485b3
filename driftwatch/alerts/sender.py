"""Deliver the outbox to Slack incoming webhooks: rate-limited, retried, in order, URL-free.

:class:`AlertSender` runs as one thread of the daemon (``start``/``stop``), or synchronously
(``deliver_pending_once``, ``run_until_idle``) from ``driftwatch alerts send`` and tests. Per
route (one webhook, one channel) it sends the oldest pending row first, and nothing newer
while that one waits, so a channel reads in order. For each try:

- a token bucket (``alerts.rate_per_s``, ``alerts.burst``) spaces the requests;
- 200: ``sent``. 429: wait the ``Retry-After`` seconds (nothing is sent to that route before),
  not counted as a failed try. 5xx and network errors: retried with exponential backoff
  (``alerts.retry_backoff_s`` doubling up to ``alerts.retry_max_backoff_s``); a message that
  gets ``alerts.max_attempts`` server errors is given up (``failed``), while an unreachable
  server (connection refused, timeout, DNS) never makes a message fail: it waits, because
  alerts must not be lost to an outage. Any other 4xx: ``failed`` with the answer recorded.
- The thread also queues the nightly summary at ``alerts.summary_time_utc`` (checked each minute).
- A route becoming unreachable is logged once, with the time; when it answers again the
  restoration is logged and, once the backlog is through, one operations message says
  "unreachable since ..., restored, N messages delivered late".

The webhook URL is a :class:`~driftwatch.config.Secret`, revealed only in the call to
``requests.post``. Errors are described from the exception type and the OS reason, and any
text that could carry the URL (requests' messages, a response body) is scrubbed of it, so the
URL never reaches a log line, an exception, the database or ``alerts list``.

A lock file (``<paths.state>/alert-sender.lock``) keeps a second sender (a manual
``alerts send`` while the daemon runs) from sending the same rows.
"""

from __future__ import annotations

import email.utils
import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from driftwatch.alerts import outbox
from driftwatch.alerts.ratelimit import TokenBucket
from driftwatch.config import Config, Secret, secret_env_name
from driftwatch.errors import AlertError
from driftwatch.store.models import Alert, utcnow

log = logging.getLogger(__name__)

SessionScope = Callable[[], AbstractContextManager[Session]]

SENT = "sent"
RATE_LIMITED = "rate_limited"
UNREACHABLE = "unreachable"     # network error or 5xx: retry with backoff
REJECTED = "rejected"           # any other answer: give up
SCHEDULE_CHECK_S = 60.0         # how often the thread looks whether the nightly summary is due


# ---------------------------------------------------------------------------------------------
# One HTTP request
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one POST (never holds the URL)."""

    status: int | None                 # HTTP status; None when no answer came
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def outcome(self) -> str:
        if self.status is None or self.status >= 500:
            return UNREACHABLE
        if 200 <= self.status < 300:
            return SENT
        if self.status == 429:
            return RATE_LIMITED
        return REJECTED


def scrub(text: str, url: str) -> str:
    """Remove ``url`` and its path (and path pieces) from ``text``."""
    parts = urlsplit(url)
    pieces = {url, url.rstrip("/"), parts.path, quote(parts.path), parts.query,
              parts.netloc + parts.path}
    pieces.update(p for p in parts.path.split("/") if len(p) >= 6)
    if parts.password:
        pieces.add(parts.password)
    for piece in sorted((p for p in pieces if p and len(p) >= 4 and p != "/"), key=len, reverse=True):
        text = text.replace(piece, "****")
    return text


def _describe(exc: BaseException, url: str) -> str:
    """Describe a requests exception by type and OS reason, never by its URL-laden message."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None and cause.strerror:
            return f"{type(exc).__name__}: {cause.strerror}"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, requests.Timeout):
        return f"{type(exc).__name__}: no answer in time"
    return scrub(f"{type(exc).__name__}: {exc}", url)[:300]


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Read a Retry-After header: seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or utcnow())).total_seconds())


class _RedactWebhooks(logging.Filter):
    """Scrub webhook URLs from urllib3's own debug lines ("POST /services/... 200").

    The command line keeps urllib3 at WARNING, but a host application or a test may turn it up
    to DEBUG; this filter keeps the URL out of the log even then. It only rewrites messages.
    """

    LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.connection")

    def __init__(self) -> None:
        super().__init__()
        self.urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = msg
        for url in self.urls:
            clean = scrub(clean, url)
        if clean != msg:
            record.msg, record.args = clean, None
        return True

    def protect(self, url: str) -> None:
        if url not in self.urls:
            self.urls.add(url)
            for name in self.LOGGERS:
                logger = logging.getLogger(name)
                if self not in logger.filters:
                    logger.addFilter(self)


_REDACT = _RedactWebhooks()


def post_webhook(webhook: Secret, payload: dict[str, Any], *, timeout_s: float = 10.0,
                 http: requests.Session | None = None) -> DeliveryResult:
    """POST ``payload`` as JSON to the webhook; never raises for HTTP or network trouble."""
    url = webhook.reveal()
    _REDACT.protect(url)
    body = json.dumps(payload, ensure_ascii=False).encode()
    try:
        response = (http or requests).post(
            url, data=body, headers={"Content-Type": "application/json"},
            timeout=timeout_s, allow_redirects=False)
    except Exception as exc:  # noqa: BLE001 - requests' and urllib3's texts carry the URL
        # A malformed URL (a bad credential) lands here too: the alerts wait, visibly, until
        # the credential is fixed; 'driftwatch alerts test' shows the same error.
        return DeliveryResult(None, _describe(exc, url))
    status = response.status_code
    if 200 <= status < 300:
        return DeliveryResult(status)
    answer = scrub(" ".join(response.text.split())[:200], url)
    retry_after = parse_retry_after(response.headers.get("Retry-After")) if status == 429 else None
    return DeliveryResult(status, f"HTTP {status}: {answer or response.reason}", retry_after)


# ---------------------------------------------------------------------------------------------
# The sender
# ---------------------------------------------------------------------------------------------
@dataclass
class _Route:
    bucket: TokenBucket
    failures: int = 0                     # consecutive unreachable tries
    down_since: datetime | None = None
    last_error: str | None = None
    backlog_to_id: int | None = None      # restored: rows up to this id were delivered late
    outage_since: datetime | None = None  # of the outage whose restoration is being counted
    outage_error: str | None = None
    restored_at: datetime | None = None
    n_late: int = 0
    missing_logged: bool = False
    delivered: int = 0


@dataclass(frozen=True)
class _Head:
    id: int
    dedup_key: str
    kind: str
    payload: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None


class SenderLock:
    """An exclusive lock file: one sender per installation (flock, released by the OS on death)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlertError(f"{self.path}: another alert sender is running "
                             "(the daemon sends alerts itself)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class AlertSender:
    """Send the outbox, one route (webhook) at a time, oldest first.

    Parameters
    ----------
    config:
        The whole configuration (``alerts`` for the behaviour, ``paths`` for the lock file and
        the dry-run folder).
    session_scope:
        A :class:`~driftwatch.store.db.Store`, or any factory of transactional sessions such as
        ``Store.session_scope``. No transaction is held during an HTTP request.
    clock:
        Monotonic seconds for the token buckets.
    now:
        Current UTC time (aware) for the database times.
    idle_poll_s:
        How often the thread looks for new rows when nobody calls :meth:`wake`.
    outage_report_min_s:
        An outage shorter than this (a single 5xx, a blip) is logged but not announced in Slack.
    """

    def __init__(self, config: Config, session_scope: SessionScope | Any, *,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = utcnow, idle_poll_s: float = 1.0,
                 outage_report_min_s: float = 30.0) -> None:
        self.config = config
        self.alerts = config.alerts
        self._scope: SessionScope = getattr(session_scope, "session_scope", session_scope)
        self._clock = clock
        self._now = now
        self.idle_poll_s = idle_poll_s
        self.outage_report_min_s = outage_report_min_s
        self._routes: dict[str, _Route] = {}
        self._http = requests.Session()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = SenderLock(config.paths.state / "alert-sender.lock")
        self._status_path = status_path(config)
        self._locked = False

    # -- lifecycle -----------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the sender lock and resend rows a dead sender left in flight."""
        if self._locked:
            return
        self._lock.acquire()
        self._locked = True
        with self._scope() as session:
            ids = outbox.recover_in_flight(session)
        for alert_id in ids:
            log.warning("alert %d was being sent when the last sender stopped; sending it again "
                        "(Slack may show it twice)", alert_id)

    def release(self) -> None:
        if self._locked:
            self._lock.release()
            self._locked = False

    def start(self) -> None:
        """Start the sender thread (takes the lock; raises AlertError if another sender runs)."""
        if self._thread is not None:
            return
        self.acquire()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="alert-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0, drain_s: float = 3.0) -> bool:
        """Stop the thread; return True if it ended in time.

        First, for up to ``drain_s`` seconds, let it deliver what is pending (the "stopped"
        message just queued) unless a route is down; then stop after the request in hand.
        Whatever is left stays pending for the next start.
        """
        if self._thread is not None and drain_s > 0:
            deadline = time.monotonic() + drain_s
            while time.monotonic() < deadline and self._thread.is_alive():
                if any(r.down_since is not None for r in list(self._routes.values())):
                    break
                with self._scope() as session:
                    if not outbox.state_counts(session).get(outbox.PENDING):
                        break
                self.wake()
                time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        ended = True
        if self._thread is not None:
            self._thread.join(timeout)
            ended = not self._thread.is_alive()
            self._thread = None
        if ended:
            self.release()
            self._http.close()
        return ended

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded configuration (SIGHUP): rates, routes, webhooks, dry-run."""
        self.config = config
        self.alerts = config.alerts
        for route in list(self._routes.values()):  # keep outage state, take the new rate
            route.bucket = TokenBucket(config.alerts.rate_per_s, config.alerts.burst, self._clock)
            route.missing_logged = False

    def wake(self) -> None:
        """Look at the outbox now (call after queueing)."""
        self._wake.set()

    def queue_scheduled(self) -> None:
        """Queue the messages due at a time of day (the nightly summary; once, by key)."""
        with self._scope() as session:
            outbox.queue_nightly_summary_if_due(session, self.config, self._now())

    def _loop(self) -> None:
        next_scheduled = 0.0
        while not self._stop.is_set():
            try:
                if self._clock() >= next_scheduled:
                    next_scheduled = self._clock() + SCHEDULE_CHECK_S
                    self.queue_scheduled()
                wait = self.deliver_pending_once()
            except Exception:  # noqa: BLE001 - the thread must survive a database hiccup
                log.exception("alert sender: unexpected error; trying again in 5 s")
                wait = 5.0
            timeout = self.idle_poll_s if wait is None else min(max(wait, 0.01), self.idle_poll_s)
            self._wake.wait(timeout)
            self._wake.clear()

    def run_until_idle(self, timeout_s: float) -> int:
        """Deliver synchronously until nothing is pending or ``timeout_s``; return rows left."""
        deadline = self._clock() + timeout_s
        while True:
            wait = self.deliver_pending_once()
            if wait is None:
                return 0
            left = deadline - self._clock()
            if left <= 0:
                with self._scope() as session:
                    return outbox.state_counts(session).get(outbox.PENDING, 0)
            time.sleep(min(max(wait, 0.01), left))

    # -- state, for status output ------------------------------------------------------------
    def status(self) -> dict[str, dict[str, Any]]:
        """Per route: reachable or since when not, last error (URL-free), delivered count."""
        return {name: {"reachable": r.down_since is None,
                       "down_since": r.down_since.isoformat() if r.down_since else None,
                       "last_error": r.last_error, "delivered": r.delivered}
                for name, r in list(self._routes.items())}

    def _write_status(self) -> None:
        """Save :meth:`status` for other processes (``alerts list``), on each state change."""
        try:
            self._status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._status_path.with_name(self._status_path.name + ".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "updated": self._now().isoformat(),
                                       "routes": self.status()}, indent=1) + "\n")
            os.replace(tmp, self._status_path)
        except OSError as exc:
            log.warning("%s: cannot write the sender status (%s)", self._status_path, exc.strerror)

    # -- delivery --------------------------------------------------------------------------------
    def _route(self, name: str) -> _Route:
        if name not in self._routes:
            self._routes[name] = _Route(TokenBucket(self.alerts.rate_per_s, self.alerts.burst,
                                                    self._clock))
        return self._routes[name]

    def deliver_pending_once(self) -> float | None:
        """Send what the buckets and backoffs allow now; return seconds until more can go.

        Returns None when nothing is pending at all.
        """
        with self._scope() as session:
            routes = list(session.scalars(select(Alert.route).where(
                Alert.state == outbox.PENDING).distinct()))
        waits = [w for w in (self._deliver_route(r) for r in sorted(routes)) if w is not None]
        for name, r in self._routes.items():  # a restoration whose backlog just ran out
            if r.backlog_to_id is not None and name not in routes:
                self._report_restored(name, r)
        return min(waits) if waits else None

    def _head(self, route: str) -> _Head | None:
        with self._scope() as session:
            a = session.scalars(select(Alert).where(Alert.route == route,
                                                    Alert.state == outbox.PENDING)
                                .order_by(Alert.id).limit(1)).first()
            if a is None:
                return None
            return _Head(a.id, a.dedup_key, a.kind, a.payload, a.attempts, a.created_at,
                         a.next_attempt_at)

    def _update(self, alert_id: int, **values: Any) -> None:
        with self._scope() as session:
            alert = session.get(Alert, alert_id)
            if alert is not None:
                for k, v in values.items():
                    setattr(alert, k, v)

    def _deliver_route(self, name: str) -> float | None:
        route = self._route(name)
        while not self._stop.is_set():
            head = self._head(name)
            if route.backlog_to_id is not None and (head is None or head.id > route.backlog_to_id):
                self._report_restored(name, route)
                continue
            if head is None:
                return None
            if self.alerts.dry_run:
                self._dry_run(head)
                continue
            webhook = self.alerts.webhooks.get(name)
            if webhook is None:
                if not route.missing_logged:
                    cred = self.alerts.routes.get(name, "?")
                    log.warning("alerts for route %r wait: no webhook credential %r (set %s or "
                                "$CREDENTIALS_DIRECTORY/%s)", name, cred, secret_env_name(cred), cred)
                    route.missing_logged = True
                return 30.0
            if head.next_attempt_at is not None:
                wait = (head.next_attempt_at - self._now()).total_seconds()
                if wait > 0:
                    return wait
            wait = route.bucket.try_take()
            if wait > 0:
                return wait
            self._update(head.id, state=outbox.SENDING)
            result = post_webhook(webhook, json.loads(head.payload),
                                  timeout_s=self.alerts.timeout_s, http=self._http)
            wait = self._record(name, route, head, result)
            if wait is not None:
                return wait
        return None

    def _record(self, name: str, route: _Route, head: _Head, result: DeliveryResult) -> float | None:
        """Write the outcome of one try; return a wait when the route must pause."""
        now = self._now()
        outcome = result.outcome
        if outcome == UNREACHABLE:
            route.failures += 1
            route.last_error = result.error
            # Only answered tries count towards giving up: an outage must not use them up.
            attempts = head.attempts + (result.status is not None)
            if result.status is not None and attempts >= self.alerts.max_attempts:
                self._update(head.id, state=outbox.FAILED_STATE, attempts=attempts,
                             last_error=result.error, next_attempt_at=None)
                log.error("alert %d (%s) given up after %d tries: %s", head.id, head.dedup_key,
                          attempts, result.error)
            backoff = min(self.alerts.retry_max_backoff_s,
                          self.alerts.retry_backoff_s * 2 ** min(route.failures - 1, 30))
            if result.status is None or attempts < self.alerts.max_attempts:
                self._update(head.id, state=outbox.PENDING, attempts=attempts,
                             last_error=result.error,
                             next_attempt_at=now + timedelta(seconds=backoff))
            if route.down_since is None:
                route.down_since = now
                self._write_status()
                log.warning("Slack route %r unreachable since %s (%s); alerts wait and are "
                            "retried with backoff", name, now.isoformat(timespec="seconds"),
                            result.error)
            else:
                log.debug("Slack route %r still unreachable: %s; next try in %.1f s",
                          name, result.error, backoff)
            return backoff
        route.failures = 0
        if route.down_since is not None:  # it answers again
            with self._scope() as session:
                last_id = session.scalar(select(Alert.id).where(
                    Alert.route == name, Alert.state == outbox.PENDING)
                    .order_by(Alert.id.desc()).limit(1))
            route.outage_since, route.outage_error = route.down_since, route.last_error
            route.restored_at, route.n_late = now, 0
            route.backlog_to_id = max(head.id, last_id or 0)
            log.warning("Slack route %r reachable again (unreachable since %s)", name,
                        route.down_since.isoformat(timespec="seconds"))
            route.down_since = None
            self._write_status()
        if outcome == RATE_LIMITED:
            retry_after = result.retry_after_s if result.retry_after_s is not None else 1.0
            self._update(head.id, state=outbox.PENDING, last_error=result.error,
                         next_attempt_at=now + timedelta(seconds=retry_after))
            log.warning("Slack route %r asked to slow down (429): next message in %.1f s",
                        name, retry_after)
            return retry_after
        if outcome == REJECTED:
            self._update(head.id, state=outbox.FAILED_STATE, attempts=head.attempts + 1,
                         last_error=result.error, next_attempt_at=None)
            log.error("alert %d (%s) rejected by Slack: %s; not retried ('driftwatch alerts "
                      "retry' re-queues it)", head.id, head.dedup_key, result.error)
            return None
        self._update(head.id, state=outbox.SENT, attempts=head.attempts + 1, sent_at=now,
                     last_error=None, next_attempt_at=None)
        route.delivered += 1
        route.last_error = None
        if route.backlog_to_id is not None and head.id <= route.backlog_to_id:
            route.n_late += 1
        log.info("alert %d sent (%s, route %s)", head.id, head.dedup_key, name)
        return None

    def _report_restored(self, name: str, route: _Route) -> None:
        assert route.outage_since is not None and route.restored_at is not None
        if (route.restored_at - route.outage_since).total_seconds() >= self.outage_report_min_s:
            with self._scope() as session:
                outbox.queue_outage_restored(session, self.config, name, route.outage_since,
                                             route.restored_at, route.n_late, route.outage_error)
        log.warning("Slack route %r: restored at %s after an outage since %s; %d message(s) "
                    "delivered late", name, route.restored_at.isoformat(timespec="seconds"),
                    route.outage_since.isoformat(timespec="seconds"), route.n_late)
        route.backlog_to_id = route.outage_since = route.restored_at = None
        route.n_late = 0

    def _dry_run(self, head: _Head) -> None:
        folder = self.config.paths.products / "alerts-dry-run" / head.created_at.strftime("%Y-%m-%d")
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", head.dedup_key)[:120]
        path = folder / f"{head.id:06d}_{slug}.json"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(json.loads(head.payload), indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        log.info("dry run: alert %d (%s) not sent, written to %s: %s", head.id, head.dedup_key,
                 path, head.payload)
        self._update(head.id, state=outbox.DRY_RUN, sent_at=self._now(),
                     last_error=f"dry run: {path}")


def status_path(config: Config) -> Path:
    """Where the running sender keeps its per-route state (reachable, down since)."""
    return config.paths.state / "alert-sender.json"


def read_status(config: Config) -> dict[str, Any] | None:
    """Return the last state the sender saved, or None (no sender has run, or unreadable)."""
    try:
        return json.loads(status_path(config).read_text())
    except (OSError, ValueError):
        return None


def send_test(config: Config, route: str = "default", *, host: str | None = None) -> str:
    """Send one test message to ``route`` now; return what happened, raise AlertError if not sent.

    In dry-run mode the JSON is written under ``<products>/alerts-dry-run/`` instead.
    """
    import socket

    from driftwatch.alerts import format as fmt

    if route not in config.alerts.routes:
        raise AlertError(f"unknown alert route {route!r} (configured: "
                         f"{', '.join(sorted(config.alerts.routes))})")
    payload = fmt.format_test(host or socket.gethostname(), utcnow(), route)
    if config.alerts.dry_run:
        folder = config.paths.products / "alerts-dry-run" / "test"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"test-{utcnow().strftime('%Y%m%dT%H%M%S')}.json"
        path.write_text(json.dumps(payload, indent=2) + "\n")
        log.info("dry run: test message written to %s: %s", path, json.dumps(payload))
        return f"dry run: test message written to {path}"
    webhook = config.alerts.webhooks.get(route)
    if webhook is None:
        cred = config.alerts.routes[route]
        raise AlertError(f"route {route!r}: no webhook credential {cred!r} (set "
                         f"{secret_env_name(cred)} or $CREDENTIALS_DIRECTORY/{cred})")
    result = post_webhook(webhook, payload, timeout_s=config.alerts.timeout_s)
    if result.outcome != SENT:
        raise AlertError(f"route {route!r}: test message not delivered: {result.error}")
    return f"test message delivered to route {route!r} (HTTP {result.status})"
