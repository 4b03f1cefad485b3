"""sd_notify against real unix datagram sockets (a path and an abstract '@' name)."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from driftwatch.service.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield sock, str(path)
    sock.close()


def test_messages_reach_a_path_socket(listener):
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.enabled and n.watchdog_interval_s == 2.0
    assert n.ready("watching 1 folder")
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching 1 folder"
    assert n.watchdog_due() and n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert not n.watchdog_due()  # just pinged
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert n.reloading()
    assert sock.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    n.close()


def test_abstract_socket():
    name = f"driftwatch-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.status("3 exposures queued")
        assert sock.recv(4096) == b"STATUS=3 exposures queued"
        n.close()
    finally:
        sock.close()


def test_outside_systemd_everything_is_a_no_op():
    n = Notifier({})
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.watchdog_due()


def test_watchdog_for_another_pid_is_ignored(listener):
    _, path = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
                  "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog_interval_s is None and not n.watchdog_due()


def test_a_vanished_socket_does_not_raise(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False
    n.close()


def test_a_reader_that_does_not_keep_up_never_stalls_the_sender(listener):
    import time

    _, path = listener  # bound, never read: the datagram queue fills up
    n = Notifier({"NOTIFY_SOCKET": path})
    t0 = time.monotonic()
    results = [n.status(f"message {i}") for i in range(14)]
    n.close()
    assert results[0] and not results[-1]       # later ones are dropped, not waited for
    assert time.monotonic() - t0 < 14 * 0.5 + 1
