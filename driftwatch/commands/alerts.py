"""``driftwatch alerts test | list [--pending] | retry [--id N ...] | send``: the Slack outbox."""

from __future__ import annotations

import argparse
import json
import sys

from driftwatch.commands._common import add_config_option, load_from_args
from driftwatch.errors import AlertError

NAME = "alerts"
HELP = "send a test message to Slack, show the alerts outbox, re-queue failed alerts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="alerts_command", metavar="ACTION")
    sub.required = True
    test = sub.add_parser("test", help="send one test message now (exit 1 if it is not delivered)")
    test.add_argument("--route", default="default", help="the route to test (default: default)")
    lst = sub.add_parser("list", help="show the outbox, oldest first (never the webhook URLs)")
    lst.add_argument("--pending", action="store_true", help="only messages not yet sent")
    lst.add_argument("--limit", type=int, default=50, help="the newest N messages (default 50)")
    lst.add_argument("--json", action="store_true", help="JSON lines for scripts")
    retry = sub.add_parser("retry", help="put failed messages back in the queue")
    retry.add_argument("--id", type=int, action="append", default=[], metavar="N",
                       help="only this alert (repeatable); default: every failed one")
    send = sub.add_parser("send", help="deliver pending messages now, when the daemon is not "
                                       "running (it sends them itself)")
    send.add_argument("--timeout", type=float, default=60.0,
                      help="give up after this many seconds (default 60)")
    for p in (test, lst, retry, send):
        add_config_option(p)


def run(args: argparse.Namespace) -> int:
    cfg = load_from_args(args)
    if args.alerts_command == "test":
        from driftwatch.alerts.sender import send_test

        print(send_test(cfg, args.route))
        return 0

    from driftwatch.alerts import outbox
    from driftwatch.store.db import Store

    store = Store.from_config(cfg)
    try:
        if args.alerts_command == "list":
            with store.session_scope() as s:
                rows = outbox.list_alerts(s, pending_only=args.pending, limit=args.limit)
                counts = outbox.state_counts(s)
            _print_rows(rows, as_json=args.json)
            if not args.json:
                from driftwatch.alerts.sender import read_status

                summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
                print(f"# outbox: {summary or 'empty'}", file=sys.stderr)
                for route, st in ((read_status(cfg) or {}).get("routes") or {}).items():
                    if not st.get("reachable", True):
                        print(f"# Slack route {route!r} unreachable since {st['down_since']} "
                              f"({st.get('last_error')})", file=sys.stderr)
            return 0
        if args.alerts_command == "retry":
            with store.session_scope() as s:
                n = outbox.retry_failed(s, args.id)
            print(f"{n} failed alert(s) re-queued")
            return 0
        from driftwatch.alerts.sender import AlertSender
        from driftwatch.config import secret_env_name

        with store.session_scope() as s:
            routes = {r.route for r in outbox.list_alerts(s, pending_only=True, limit=100_000)}
        missing = sorted(r for r in routes if r not in cfg.alerts.webhooks)
        if missing and not cfg.alerts.dry_run:
            creds = [cfg.alerts.routes.get(r, "?") for r in missing]
            raise AlertError(f"no webhook credential for route(s) {', '.join(missing)} (set "
                             f"{', '.join(secret_env_name(c) for c in creds)} or put the URL in "
                             "$CREDENTIALS_DIRECTORY)")
        sender = AlertSender(cfg, store)
        sender.acquire()
        try:
            left = sender.run_until_idle(args.timeout)
        finally:
            sender.release()
        if left:
            raise AlertError(f"{left} alert(s) still pending after {args.timeout:.0f} s "
                             "(see 'driftwatch alerts list --pending')")
        print("outbox delivered")
        return 0
    finally:
        store.dispose()


def _print_rows(rows, *, as_json: bool) -> None:
    def t(v):
        return v.strftime("%Y-%m-%d %H:%M:%S") if v is not None else "-"

    if as_json:
        for r in rows:
            print(json.dumps({"id": r.id, "created_at": t(r.created_at), "route": r.route,
                              "kind": r.kind, "state": r.state, "attempts": r.attempts,
                              "dedup_key": r.dedup_key, "sent_at": t(r.sent_at),
                              "next_attempt_at": t(r.next_attempt_at),
                              "last_error": r.last_error}))
        return
    print(f"{'id':>5} {'created (UTC)':19} {'route':10} {'kind':18} {'state':10} {'tries':>5} "
          f"{'sent (UTC)':19} key / last error")
    for r in rows:
        extra = f"  [{r.last_error}]" if r.last_error and r.state != "sent" else ""
        print(f"{r.id:>5} {t(r.created_at):19} {r.route[:10]:10} {r.kind[:18]:18} "
              f"{r.state:10} {r.attempts:>5} {t(r.sent_at):19} {r.dedup_key}{extra}")
