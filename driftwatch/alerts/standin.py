"""A stand-in for Slack's incoming webhook: a small real HTTP server on 127.0.0.1.

It accepts ``POST <any path>`` with a JSON body, answers ``ok`` (or, for tests, a scripted
sequence of answers such as 500 or 429 with Retry-After), and appends each message it accepted
to a JSON-lines record (time and payload; never the request path, which stands for the secret
part of a real webhook URL). The demo and the tests use it::

    python -m driftwatch.alerts.standin --port 8099 --record received.jsonl [--port-file F]
    python -m driftwatch.alerts.standin --show received.jsonl     # print what it received
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class StandinServer:
    """A webhook stand-in; ``script`` holds (status, headers) answers given before plain 200s."""

    def __init__(self, record: Path | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 script: Iterable[tuple[int, dict[str, str]]] = ()) -> None:
        self.record = record
        self.received: list[dict[str, Any]] = []      # accepted messages, with "mono" times
        self.requests: list[tuple[float, int]] = []   # (monotonic time, status answered)
        self._script = list(script)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                status, headers = server._answer(body)
                payload = b"ok" if status == 200 else f"error {status}".encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # the access log would print the path

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    def _answer(self, body: bytes) -> tuple[int, dict[str, str]]:
        with self._lock:
            now = time.monotonic()
            try:
                payload = json.loads(body)
            except ValueError:
                self.requests.append((now, 400))
                return 400, {}
            status, headers = self._script.pop(0) if self._script else (200, {})
            self.requests.append((now, status))
            if status == 200:
                entry = {"time": datetime.now(timezone.utc).isoformat(), "payload": payload}
                self.received.append({**entry, "mono": now})
                if self.record is not None:
                    with open(self.record, "a") as f:
                        f.write(json.dumps(entry) + "\n")
                        f.flush()
                        os.fsync(f.fileno())
            return status, headers

    def url(self, path: str = "/services/T000/B000/standin") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def start(self) -> StandinServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="webhook-standin",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def serve_forever(self) -> None:
        self._httpd.serve_forever()


def read_record(path: Path) -> list[dict[str, Any]]:
    """Return the messages recorded in ``path`` (oldest first)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def show(path: Path, out=sys.stdout) -> int:
    """Print the recorded messages: time, fallback text and section texts."""
    entries = read_record(path)
    print(f"{len(entries)} message(s) received by the Slack stand-in ({path}):", file=out)
    for i, e in enumerate(entries, 1):
        p = e["payload"]
        print(f"--- {i} at {e['time']}", file=out)
        for block in p.get("blocks", []):
            if block.get("type") in ("header", "section"):
                for line in block["text"]["text"].splitlines():
                    print(f"    {line}", file=out)
            elif block.get("type") == "context":
                print("    " + " | ".join(el.get("text", "") for el in block["elements"]), file=out)
        if not p.get("blocks"):
            print(f"    {p.get('text', '')}", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m driftwatch.alerts.standin",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--record", type=Path, help="append accepted messages here (JSON lines)")
    parser.add_argument("--port-file", type=Path, help="write the port here once listening")
    parser.add_argument("--show", type=Path, metavar="RECORD", help="print a record and exit")
    args = parser.parse_args(argv)
    if args.show:
        return show(args.show)
    server = StandinServer(args.record, host=args.host, port=args.port)
    if args.port_file:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(f"{server.port}\n")
        os.replace(tmp, args.port_file)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server._httpd.shutdown).start())
    print(f"Slack stand-in listening on {server.host}:{server.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
