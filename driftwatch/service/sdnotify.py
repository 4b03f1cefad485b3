"""The systemd notification protocol (sd_notify(3)) in a few lines, with no dependency.

systemd passes the path of a unix datagram socket in ``$NOTIFY_SOCKET`` (a leading ``@`` means
an abstract socket: the name starts with a NUL byte). The service sends newline-separated
``KEY=VALUE`` lines: ``READY=1`` once started, ``WATCHDOG=1`` at least every ``WatchdogSec``
(systemd passes it as ``$WATCHDOG_USEC``), ``STOPPING=1`` when shutting down and ``STATUS=...``
for ``systemctl status``. Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 0.5


def _address(value: str) -> str | bytes:
    return b"\0" + value[1:].encode() if value.startswith("@") else value


class Notifier:
    """Send state changes to systemd; a no-op when not started by systemd with Type=notify."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env["NOTIFY_SOCKET"]) if env.get("NOTIFY_SOCKET") else None
        self.watchdog_usec = 0
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(usec)
        self._sock: socket.socket | None = None
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half of WatchdogSec, or None when systemd does not ask."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; return False when not under systemd or it failed."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A reader that does not keep up (a full datagram queue) must not stall the loop.
                self._sock.settimeout(SEND_TIMEOUT_S)
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            # systemd went away or the socket is wrong: losing a notification must not stop the
            # service (the watchdog, if any, will act), so log and carry on.
            log.warning("sd_notify to %s failed: %s", os.fsdecode(self._address), exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        self._last_ping = time.monotonic()
        return self.send("WATCHDOG=1")

    def watchdog_due(self, now: float | None = None) -> bool:
        """True when a WATCHDOG=1 ping is due (always False when systemd asked for none)."""
        interval = self.watchdog_interval_s
        if interval is None or self._address is None:
            return False
        return (time.monotonic() if now is None else now) - self._last_ping >= interval

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
