"""The sender against a real HTTP server on 127.0.0.1 (pytest-httpserver)."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest
from sqlalchemy import select
from werkzeug import Request, Response

from driftwatch.alerts import outbox
from driftwatch.alerts.sender import AlertSender, parse_retry_after, post_webhook, scrub, send_test
from driftwatch.config import Secret
from driftwatch.errors import AlertError
from driftwatch.store.models import Alert
from tests.alerts.conftest import SECRET_PATH, candidate, exposure, make_config


class Script:
    """Answers given in turn (then 200), with the monotonic time of every request."""

    def __init__(self, *answers: Response) -> None:
        self.answers = list(answers)
        self.times: list[float] = []
        self.bodies: list[dict] = []

    def __call__(self, request: Request) -> Response:
        self.times.append(time.monotonic())
        self.bodies.append(json.loads(request.get_data()))
        return self.answers.pop(0) if self.answers else Response("ok", 200)


def _serve(httpserver, *answers: Response) -> Script:
    script = Script(*answers)
    httpserver.expect_request(SECRET_PATH, method="POST").respond_with_handler(script)
    return script


def _queue(store, cfg, n: int) -> list[int]:
    ids = []
    with store.session_scope() as s:
        for i in range(n):
            ids.append(outbox.queue_exposure_alert(s, cfg, exposure(1000 + i), [candidate(i)])[0].id)
    return ids


def _states(store) -> list[tuple[int, str, int, str | None]]:
    with store.session_scope() as s:
        return [(a.id, a.state, a.attempts, a.last_error)
                for a in s.scalars(select(Alert).order_by(Alert.id))]


def _expnums(script: Script) -> list[str]:
    return [b["blocks"][0]["text"]["text"].rsplit(" ", 1)[1] for b in script.bodies]


def test_normal_delivery_and_payload_shape(tmp_path, store, httpserver):
    script = _serve(httpserver)
    cfg = make_config(tmp_path, httpserver.url_for(SECRET_PATH))
    ids = _queue(store, cfg, 3)
    assert AlertSender(cfg, store).run_until_idle(10) == 0
    assert [s[1] for s in _states(store)] == ["sent"] * 3
    assert _expnums(script) == ["1000", "1001", "1002"]  # oldest first
    body = script.bodies[0]
    assert set(body) == {"text", "blocks"}
    assert [b["type"] for b in body["blocks"]] == ["header", "context", "divider", "section"]
    assert "G000123" in body["blocks"][3]["text"]["text"]
    with store.session_scope() as s:
        assert all(a.sent_at is not None for a in s.scalars(select(Alert).where(Alert.id.in_(ids))))


def test_429_retry_after_is_honoured(tmp_path, store, httpserver):
    script = _serve(httpserver, Response("rate_limited", 429, headers={"Retry-After": "1"}))
    cfg = make_config(tmp_path, httpserver.url_for(SECRET_PATH))
    _queue(store, cfg, 2)
    assert AlertSender(cfg, store).run_until_idle(10) == 0
    assert len(script.times) == 3
    assert script.times[1] - script.times[0] >= 1.0  # nothing before Retry-After expired
    assert _expnums(script) == ["1000", "1000", "1001"]
    states = _states(store)
    assert [s[1] for s in states] == ["sent", "sent"] and states[0][2] == 1  # 429 is not a failure


def test_5xx_retried_with_backoff(tmp_path, store, httpserver):
    script = _serve(httpserver, Response("oops", 500), Response("oops", 503))
    cfg = make_config(tmp_path, httpserver.url_for(SECRET_PATH), retry_backoff_s=0.2)
    _queue(store, cfg, 1)
    assert AlertSender(cfg, store).run_until_idle(10) == 0
    t = script.times
    assert len(t) == 3 and t[1] - t[0] >= 0.2 and t[2] - t[1] >= 0.4  # doubling backoff
    assert _states(store)[0][1:3] == ("sent", 3)


def test_give_up_on_4xx_and_after_max_attempts(tmp_path, store, httpserver):
    script = _serve(httpserver, Response("invalid_payload", 400),
                    Response("boom", 500), Response("boom", 500))
    cfg = make_config(tmp_path, httpserver.url_for(SECRET_PATH), max_attempts=2)
    _queue(store, cfg, 3)
    assert AlertSender(cfg, store).run_until_idle(10) == 0
    states = _states(store)
    assert [s[1] for s in states] == ["failed", "failed", "sent"]
    assert states[0][3] == "HTTP 400: invalid_payload" and states[0][2] == 1
    assert states[1][3] == "HTTP 500: boom" and states[1][2] == 2
    assert len(script.times) == 4
    with store.session_scope() as s:
        assert outbox.retry_failed(s, [states[0][0]]) == 1
    assert [s[1] for s in _states(store)][0] == "pending"


def test_never_more_than_the_configured_rate(tmp_path, store, httpserver):
    script = _serve(httpserver)
    rate, burst = 5.0, 2
    cfg = make_config(tmp_path, httpserver.url_for(SECRET_PATH), rate_per_s=rate, burst=burst)
    _queue(store, cfg, 12)
    sender = AlertSender(cfg, store)
    sender.start()
    deadline = time.monotonic() + 10
    while len(script.times) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    sender.stop()
    t = script.times
    assert len(t) == 12
    for i in range(len(t)):
        for j in range(i, len(t)):  # any window [t_i, t_j] holds at most burst + rate * width
            # (+ 0.1 s: server-side arrival times jitter on a busy 2-core machine)
            assert j - i + 1 <= burst + rate * (t[j] - t[i] + 0.1)
    assert t[-1] - t[0] >= (12 - burst) / rate - 0.05
    assert _expnums(script) == [str(1000 + i) for i in range(12)]


def test_test_message(tmp_path, httpserver):
    script = _serve(httpserver)
    cfg = make_config(tmp_path, httpserver.url_for(SECRET_PATH))
    assert "delivered" in send_test(cfg)
    assert "test message" in script.bodies[0]["text"]


def test_url_never_leaks(tmp_path, store, httpserver, caplog):
    """Network errors, a server echoing the URL in its answers: no log, error or row shows it."""
    caplog.set_level(logging.DEBUG)
    url = httpserver.url_for(SECRET_PATH)
    echo = f"no_service at {url} ({SECRET_PATH})"
    _serve(httpserver, Response(echo, 500), Response(echo, 404))
    cfg = make_config(tmp_path, url, max_attempts=5)
    _queue(store, cfg, 2)
    AlertSender(cfg, store).run_until_idle(10)

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}{SECRET_PATH}"
    result = post_webhook(Secret(dead, "x"), {"text": "t"}, timeout_s=1)
    assert result.status is None and "Connection refused" in result.error
    dead_cfg = make_config(tmp_path, dead)
    with pytest.raises(AlertError) as err:
        send_test(dead_cfg)
    sender = AlertSender(dead_cfg, store)
    with store.session_scope() as s:
        outbox.queue_file_incomplete(s, dead_cfg, "/in/late.fits.fz", 10)
    sender.deliver_pending_once()

    with store.session_scope() as s:
        listed = repr(outbox.list_alerts(s))
    ours = "\n".join(caplog.handler.format(r) for r in caplog.records
                     if not r.name.startswith("werkzeug"))  # not the test server's access log
    saved = (tmp_path / "state" / "alert-sender.json").read_text()
    assert '"reachable": false' in saved and "Connection refused" in saved
    texts = {"log": ours, "saved status": saved, "error": str(err.value) + repr(err.value) + result.error,
             "status": json.dumps(sender.status()), "list": listed,
             "config": json.dumps(cfg.to_dict())}
    store.dispose()
    db = b"".join(p.read_bytes() for p in (tmp_path / "state").glob("driftwatch.sqlite*"))
    assert b"no_service" in db  # the answer is recorded...
    for needle in ("sEcReTtOkEn0123456789", "B0TEST"):  # ...without the URL
        assert needle.encode() not in db
        for name, text in texts.items():
            assert needle not in text, name
    assert "Slack route 'default' unreachable since" in ours


def test_scrub_and_retry_after():
    url = "https://hooks.slack.com/services/T1/B2/abcdefghij"
    assert "abcdefghij" not in scrub(f"Max retries exceeded with url: /services/T1/B2/abcdefghij", url)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


def test_outage_does_not_use_up_attempts(tmp_path, store, httpserver):
    """Connection refused many times, then a 500: the message is still retried, then sent."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}{SECRET_PATH}"
    cfg = make_config(tmp_path, dead, max_attempts=2, retry_backoff_s=0.01,
                      retry_max_backoff_s=0.02)
    _queue(store, cfg, 1)
    sender = AlertSender(cfg, store)
    for _ in range(5):
        sender.deliver_pending_once()
        time.sleep(0.03)
    assert _states(store)[0][1:3] == ("pending", 0)
    script = _serve(httpserver, Response("boom", 500))
    sender.reconfigure(make_config(tmp_path, httpserver.url_for(SECRET_PATH), max_attempts=2,
                                   retry_backoff_s=0.01, retry_max_backoff_s=0.02))
    assert sender.run_until_idle(5) == 0
    assert _states(store)[0][1:3] == ("sent", 2) and len(script.times) == 2


def test_thread_drains_on_stop_and_queues_the_summary(tmp_path, store, httpserver):
    from datetime import datetime, timezone

    from driftwatch.store.models import Exposure

    script = _serve(httpserver)
    cfg = make_config(tmp_path, httpserver.url_for(SECRET_PATH), rate_per_s=10.0, burst=1)
    with store.session_scope() as s:
        s.add(Exposure(path="/in/a.fits.fz", night="2026-11-21", expnum=1, role="drift",
                       state="done"))
    noon = datetime(2026, 11, 22, 12, 0, 30, tzinfo=timezone.utc)
    sender = AlertSender(cfg, store, now=lambda: noon)
    sender.start()
    _queue(store, cfg, 5)  # queued just before stopping, as the daemon does with "stopped"
    assert sender.stop(timeout=5, drain_s=3)
    texts = [b["text"] for b in script.bodies]
    assert len(texts) == 6
    assert sum(t.startswith(":bar_chart: night 2026-11-21 summary") for t in texts) == 1
    with store.session_scope() as s:
        assert outbox.state_counts(s) == {"sent": 6}


def test_malformed_webhook_is_reported_without_the_url():
    bad = Secret("htps:/hooks.example/services/T1/B2/zzzzSECRETzzzz", "x")
    result = post_webhook(bad, {"text": "t"}, timeout_s=1)
    assert result.status is None and result.error and "zzzzSECRETzzzz" not in result.error


def test_per_kind_routes_go_to_their_own_webhook(tmp_path, store, httpserver):
    main = _serve(httpserver)
    flashes = Script()
    httpserver.expect_request("/services/FLASH", method="POST").respond_with_handler(flashes)
    cfg = make_config(tmp_path, httpserver.url_for(SECRET_PATH),
                      extra_env={"DRIFTWATCH_FLASH_HOOK": httpserver.url_for("/services/FLASH")},
                      routes={"default": "slack-webhook", "fl": "flash-hook"},
                      kind_routes={"flash": "fl"})
    with store.session_scope() as s:
        outbox.queue_exposure_alert(s, cfg, exposure(1), [candidate(0), candidate(1, kind="flash")])
        outbox.queue_exposure_alert(s, cfg, exposure(2), [candidate(2, kind="flash")])
        outbox.queue_file_incomplete(s, cfg, "/in/x.fits.fz", 900)  # ops: default route
    assert AlertSender(cfg, store).run_until_idle(10) == 0
    assert [b["text"][:36] for b in main.bodies] == ["1 transient candidate in exposure 1 ",
                                                     ":hourglass: a file never completed: "]
    assert _expnums(flashes) == ["1", "2"]
    assert all("flash" in b["text"] for b in flashes.bodies)
