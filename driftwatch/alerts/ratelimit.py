"""A token bucket: at most ``burst + rate * T`` messages in any interval of T seconds."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Tokens refill at ``rate_per_s`` up to ``burst``; each message takes one.

    The clock is injectable (monotonic seconds) so that the arithmetic can be tested without
    sleeping. Not thread-safe: each route's bucket belongs to the one sender thread.
    """

    def __init__(self, rate_per_s: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return now

    def wait_time(self) -> float:
        """Seconds until a token is available (0 if one is there now)."""
        self._refill()
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    def try_take(self) -> float:
        """Take a token and return 0, or return the seconds to wait (taking nothing)."""
        wait = self.wait_time()
        if wait == 0.0:
            self._tokens -= 1.0
        return wait
