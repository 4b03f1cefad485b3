from __future__ import annotations

import signal
import subprocess
import sys
import time

import requests

from driftwatch.alerts import format as fmt
from driftwatch.alerts.standin import read_record
from tests.alerts.conftest import candidate, exposure


def test_standin_records_and_shows(tmp_path):
    record, port_file = tmp_path / "rec.jsonl", tmp_path / "port"
    proc = subprocess.Popen([sys.executable, "-m", "driftwatch.alerts.standin", "--port", "0",
                             "--record", str(record), "--port-file", str(port_file)],
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        url = f"http://127.0.0.1:{int(port_file.read_text())}/services/x"
        payload = fmt.format_candidates(exposure(), [candidate(0)])
        assert requests.post(url, json=payload, timeout=5).text == "ok"
        assert requests.post(url, data=b"not json", timeout=5).status_code == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    assert [e["payload"] for e in read_record(record)] == [payload]
    shown = subprocess.run([sys.executable, "-m", "driftwatch.alerts.standin", "--show",
                            str(record)], capture_output=True, text=True, check=True).stdout
    assert "1 message(s) received" in shown and "G000123" in shown
    assert "/services/x" not in record.read_text()
