from __future__ import annotations

import pytest

from driftwatch.alerts.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_rate():
    clock = FakeClock()
    bucket = TokenBucket(2.0, 3, clock)
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take() == pytest.approx(0.5)
    clock.t = 0.5
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(0.5)


def test_never_more_than_burst_plus_rate_times_t():
    clock = FakeClock()
    bucket = TokenBucket(1.0, 2, clock)
    sent = []
    for step in range(1000):  # 10 s in 10 ms steps, taking whenever allowed
        clock.t = step * 0.01
        if bucket.try_take() == 0.0:
            sent.append(clock.t)
    assert len(sent) == 2 + 9  # the burst, then one a second from t = 1 s to 9 s
    for i, t0 in enumerate(sent):
        for j in range(i, len(sent)):
            assert j - i + 1 <= 2 + 1.0 * (sent[j] - t0) + 1e-9


def test_refill_caps_at_burst():
    clock = FakeClock()
    bucket = TokenBucket(1.0, 2, clock)
    clock.t = 100.0
    assert [bucket.try_take() for _ in range(3)][:2] == [0.0, 0.0]
