"""Unit tests of the sink's rate limiting, backoff and error classification."""

from __future__ import annotations

import random

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.kinesis import failures as ke
from transforms.kinesis.ratelimit import AimdController, TokenBucket, full_jitter_backoff


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.floats(0.001, 1.0), st.floats(1.0, 30.0), st.integers(0, 2**32))
def test_full_jitter_stays_within_the_doubling_ceiling(attempt, base, cap, seed):
    delay = full_jitter_backoff(attempt, base, cap, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2 ** (attempt - 1)) + 1e-9


def test_full_jitter_spreads_delays():
    rng = random.Random(1)
    delays = {round(full_jitter_backoff(5, 0.1, 10.0, rng), 3) for _ in range(50)}
    assert len(delays) > 40


def test_unlimited_bucket_never_waits():
    bucket = TokenBucket(None)
    assert bucket.wait_time(10_000, 0.0) == 0.0
    assert bucket.max_batch(500) == 500


@settings(max_examples=100, deadline=None)
@given(st.floats(5.0, 5000.0), st.lists(st.integers(1, 500), min_size=5, max_size=60))
def test_token_bucket_never_exceeds_rate_plus_one_burst(rate, batches):
    """Sending each batch as soon as allowed never beats ``capacity + rate * elapsed``."""
    bucket = TokenBucket(rate, now=0.0)
    now = 0.0
    sent = 0
    for n in batches:
        n = min(n, bucket.max_batch(500))
        now += bucket.wait_time(n, now)
        bucket.consume(n, now)
        sent += n
        assert sent <= bucket.capacity + rate * now + 1e-6
    if sent > bucket.capacity:
        assert now > 0.0  # past one burst, the cap really made the sender wait


def test_token_bucket_limits_batch_size_to_burst():
    bucket = TokenBucket(100.0, burst_seconds=0.5, now=0.0)
    assert bucket.max_batch(500) == 50
    bucket.consume(50, 0.0)
    assert bucket.wait_time(50, 0.0) == pytest.approx(0.5)
    assert bucket.wait_time(50, 0.5) == 0.0


def test_token_bucket_rejects_non_positive_rate():
    with pytest.raises(ValueError):
        TokenBucket(0.0)


def test_aimd_decreases_from_sent_rate_and_recovers_linearly():
    aimd = AimdController(min_rate=10.0, decrease_factor=0.5, recovery_per_second=0.25)
    assert aimd.rate(0.0) is None
    for t in range(10):
        aimd.on_sent(1000, 0.1 * t)  # 10k records in the last second
    assert aimd.on_throttled(sent_at=0.9, now=1.0)
    assert aimd.rate(1.0) == pytest.approx(5000.0)
    assert aimd.rate(3.0) == pytest.approx(5000.0 * 1.5)


def test_aimd_partial_throttling_cuts_in_proportion():
    aimd = AimdController(min_rate=10.0, decrease_factor=0.5)
    aimd.on_sent(1000, 0.0)
    assert aimd.on_throttled(sent_at=0.0, now=0.5, fraction=0.1)
    assert aimd.rate(0.5) == pytest.approx(900.0)
    recovered = aimd.rate(0.6)  # 900 plus 0.1 s of linear recovery
    assert aimd.on_throttled(sent_at=0.6, now=0.6, fraction=0.9)
    assert aimd.rate(0.6) == pytest.approx(0.5 * recovered)  # the cut never exceeds half


def test_aimd_ignores_throttles_of_requests_sent_before_the_decrease():
    aimd = AimdController(min_rate=10.0)
    aimd.on_sent(1000, 0.0)
    assert aimd.on_throttled(sent_at=0.0, now=0.5)
    first = aimd.rate(0.5)
    # Answers of requests that were already in flight must not cut the rate again.
    assert not aimd.on_throttled(sent_at=0.1, now=0.6)
    assert aimd.rate(0.6) >= first
    # A request sent after the cut and throttled again does.
    assert aimd.on_throttled(sent_at=0.7, now=0.8)
    assert aimd.rate(0.8) < first


def test_aimd_never_goes_below_floor_and_releases_after_recovery():
    aimd = AimdController(min_rate=50.0, recovery_per_second=1.0, release_factor=4.0)
    t = 0.0
    for _ in range(20):
        t += 1.0
        aimd.on_throttled(sent_at=t, now=t)
    assert aimd.rate(t) == pytest.approx(50.0)
    assert aimd.rate(t + 2.0) == pytest.approx(150.0)
    assert aimd.rate(t + 3.0) is None  # recovered 4x without throttling: limit lifted


def client_error(code: str, status: int = 400, message: str = "m") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PutRecords",
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("ResourceNotFoundException"), ke.FATAL),
        (client_error("AccessDeniedException"), ke.FATAL),
        (client_error("ValidationException"), ke.FATAL),
        (client_error("InvalidArgumentException"), ke.FATAL),
        (client_error("KMSAccessDeniedException"), ke.FATAL),
        (client_error("KMSDisabledException"), ke.FATAL),
        (client_error("KMSThrottlingException"), ke.THROTTLED),
        (client_error("ProvisionedThroughputExceededException"), ke.THROTTLED),
        (client_error("LimitExceededException"), ke.THROTTLED),
        (client_error("Whatever", status=429), ke.THROTTLED),
        (client_error("InternalFailure", status=500), ke.RETRYABLE),
        (client_error("503", status=503), ke.RETRYABLE),
        (client_error("SomethingNew", status=502), ke.RETRYABLE),
        (client_error("SomethingNew", status=400), ke.FATAL),
        (EndpointConnectionError(endpoint_url="http://x"), ke.RETRYABLE),
        (ReadTimeoutError(endpoint_url="http://x"), ke.RETRYABLE),
        (ConnectionResetError("reset"), ke.RETRYABLE),
        (NoCredentialsError(), ke.FATAL),
        (ValueError("bug"), ke.FATAL),
    ],
)
def test_exception_classification(exc, kind):
    assert ke.classify_exception(exc).kind == kind


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("ProvisionedThroughputExceededException", ke.THROTTLED),
        ("InternalFailure", ke.RETRYABLE),
        ("KMSNotFoundException", ke.FATAL),
        ("NeverSeenBefore", ke.RETRYABLE),
    ],
)
def test_entry_error_classification(code, kind):
    assert ke.classify_entry_error(code, "msg").kind == kind


def test_failure_message_is_one_line_and_truncated():
    failure = ke.classify_exception(client_error("InternalFailure", 500, "a\nb " + "x" * 2000))
    assert "\n" not in failure.message
    assert len(failure.message) <= 500
    assert failure.describe().startswith("InternalFailure: a b")
