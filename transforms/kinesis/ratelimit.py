"""Client-side rate limiting for the Kinesis sink: a token bucket and an AIMD controller.

Both are pure (the caller passes the time), so they are unit-testable without sleeping.
Rates are in user records per second.
"""

from __future__ import annotations

import collections
import random


def full_jitter_backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Returns a delay drawn uniformly from ``[0, min(cap, base * 2**(attempt-1))]``.

    "Full jitter" spreads the retries of many writers so they do not hit the service in
    lock-step after a shared throttling event.

    Args:
        attempt: how many times the records were sent already (>= 1).
        base: the delay ceiling of the first retry, in seconds.
        cap: the largest delay ceiling, in seconds.
        rng: the random source (injectable for tests).
    """
    ceiling = min(cap, base * (2 ** max(0, min(attempt - 1, 30))))
    return rng.uniform(0.0, ceiling)


class TokenBucket:
    """A token bucket that lets a batch through when the bucket is not in debt.

    A batch may be larger than the tokens left: it is let through when at least
    ``min(n, capacity)`` tokens are available and the bucket goes into debt, so the long-run
    rate never exceeds ``rate`` while batches are not split below the burst size.
    ``rate=None`` means unlimited.
    """

    def __init__(self, rate: float | None, burst_seconds: float = 0.5, now: float = 0.0):
        self._burst_seconds = burst_seconds
        self._rate: float | None = None
        self._capacity = 1.0
        self._tokens = 0.0
        self._last = now
        self.set_rate(rate, now)

    @property
    def rate(self) -> float | None:
        return self._rate

    @property
    def capacity(self) -> float:
        """The burst size in records (1 when unlimited has no meaning: see ``max_batch``)."""
        return self._capacity

    def max_batch(self, default: int) -> int:
        """The largest batch worth sending at once at the current rate."""
        if self._rate is None:
            return default
        return max(1, min(default, int(self._capacity)))

    def set_rate(self, rate: float | None, now: float) -> None:
        """Changes the rate, keeping the tokens earned so far (capped at the new capacity)."""
        self._refill(now)
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        was_unlimited = self._rate is None
        self._rate = rate
        if rate is None:
            return
        self._capacity = max(1.0, rate * self._burst_seconds)
        if was_unlimited:
            # Leaving unlimited mode: start with a full burst, not with a stale balance.
            self._tokens = self._capacity
        self._tokens = min(self._tokens, self._capacity)

    def _refill(self, now: float) -> None:
        if self._rate is not None and now > self._last:
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = max(self._last, now)

    def wait_time(self, n: int, now: float) -> float:
        """Seconds until a batch of ``n`` records may go (0.0 if now)."""
        if self._rate is None:
            return 0.0
        self._refill(now)
        need = min(float(n), self._capacity)
        if self._tokens >= need:
            return 0.0
        return (need - self._tokens) / self._rate

    def consume(self, n: int, now: float) -> None:
        """Takes ``n`` tokens (the balance may go negative)."""
        if self._rate is None:
            return
        self._refill(now)
        self._tokens -= n


class AimdController:
    """Additive-increase / multiplicative-decrease rate control driven by throttling.

    Unlimited until the first throttling. Then the rate is set to ``decrease_factor`` times
    the rate actually sent over the last ``window`` seconds, and grows linearly in time by
    ``recovery_per_second`` times that rate per second. Throttles of requests sent before
    the last decrease do not decrease it again (one decrease per "round trip"), otherwise
    the answers of requests already in flight would collapse the rate to the floor. Once the
    rate grows past ``release_factor`` times the last decreased rate without new throttling,
    the limit is lifted.
    """

    def __init__(
        self,
        min_rate: float = 10.0,
        decrease_factor: float = 0.5,
        recovery_per_second: float = 1.0,
        release_factor: float = 8.0,
        window: float = 1.0,
    ):
        self.min_rate = min_rate
        self.decrease_factor = decrease_factor
        self.recovery_per_second = recovery_per_second
        self.release_factor = release_factor
        self.window = window
        self._base: float | None = None
        self._decreased_at = float("-inf")
        self._sent: collections.deque[tuple[float, int]] = collections.deque()
        self._sent_total = 0
        self.decreases = 0

    def on_sent(self, n: int, now: float) -> None:
        """Records that ``n`` records were dispatched at ``now`` (for the sent-rate estimate)."""
        self._sent.append((now, n))
        self._sent_total += n
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._sent and self._sent[0][0] < now - self.window:
            self._sent_total -= self._sent.popleft()[1]

    def sent_rate(self, now: float) -> float:
        """Records per second dispatched over the last ``window`` seconds."""
        self._trim(now)
        return self._sent_total / self.window

    def on_throttled(self, sent_at: float, now: float, fraction: float = 1.0) -> bool:
        """Reacts to a request sent at ``sent_at`` that was throttled in whole or in part.

        Args:
            sent_at: when the throttled request was sent.
            now: the current time.
            fraction: the share of the request's records that were throttled. A request
                throttled in whole halves the rate; one with 10% throttled entries (e.g. one
                hot shard) cuts it by 10% only, so a single hot shard does not starve the rest.

        Returns:
            True if the rate was decreased.
        """
        if sent_at < self._decreased_at:
            return False
        factor = max(self.decrease_factor, 1.0 - min(1.0, max(0.0, fraction)))
        current = self.rate(now)
        sent = self.sent_rate(now)
        # Decrease from what was really sent when the limit was above it, else the cut
        # would not slow anything down.
        reference = sent if current is None else min(current, max(sent, self.min_rate))
        self._base = max(self.min_rate, reference * factor)
        self._decreased_at = now
        self.decreases += 1
        return True

    def rate(self, now: float) -> float | None:
        """The current allowed rate, or None when unlimited."""
        if self._base is None:
            return None
        elapsed = max(0.0, now - self._decreased_at)
        rate = self._base * (1.0 + self.recovery_per_second * elapsed)
        if rate >= self._base * self.release_factor:
            self._base = None
            return None
        return rate
