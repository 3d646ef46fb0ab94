"""What the Kinesis writer does with records that failed (Beam-independent).

A failed record is retried after a backoff, or given up: dead-lettered, with every later
record of its partition key behind it; a fatal failure, an undeliverable record without
dead letter, or an endpoint that never answered fails the job. :class:`FailureHandling`
holds the writer's dead letters not yet returned and its job failure, if any; the
failure classification itself is :mod:`transforms.kinesis.failures`.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from transforms.dead_letters import BLOCKED_BY_EARLIER_FAILURE, RETRIES_EXHAUSTED, sink_dead_letter
from transforms.kinesis import failures as kinesis_failures
from transforms.kinesis.batching import KeyOrderedBuffer, PendingRecord
from transforms.kinesis.failures import KinesisSinkError
from transforms.kinesis.ratelimit import full_jitter_backoff
from transforms.kinesis.settings import GivenUp, SinkMetrics, SinkSettings
from transforms.kinesis.writer_state import WriterState

_LOGGER = logging.getLogger(__name__)


# The reason of a record dead-lettered because an earlier record of its key was.
BLOCKED = BLOCKED_BY_EARLIER_FAILURE
BLOCKED_ERROR = (
    "an earlier record of this partition key was dead-lettered; sent now, this one would "
    "overtake it (replay the dead letters in order)"
)


class FailureHandling:
    """Retries, dead letters and job failures of one writer (bundle); not thread-safe."""

    def __init__(
        self,
        client: Any,
        stream_name: str,
        settings: SinkSettings,
        state: WriterState,
        buffer: KeyOrderedBuffer,
        metrics: SinkMetrics,
        rng: random.Random,
    ):
        self._client = client
        self._stream = stream_name
        self._settings = settings
        self._state = state
        self._buffer = buffer
        self._metrics = metrics
        self._rng = rng
        self.dead: list[GivenUp] = []
        self.failed: KinesisSinkError | None = None

    def request_failed(
        self,
        entries: list[tuple[dict[str, Any], list[PendingRecord], int]],
        sent_at: float,
        failure: kinesis_failures.Failure,
        now: float,
    ) -> None:
        """A whole request failed (no per-record results): fail, or retry its records."""
        if failure.kind == kinesis_failures.FATAL:
            self.fail(failure)
        members = [r for _, ms, _ in entries for r in ms]
        if failure.unreachable and not self._state.answered:
            self.check_reachable(members, failure, now)
        if failure.kind == kinesis_failures.THROTTLED:
            self._metrics.inc("kinesis_throttled_records", len(members))
            self.on_throttled(sent_at, now, 1.0)
        self.retry_or_give_up(members, failure, now)

    def on_throttled(self, sent_at: float, now: float, fraction: float) -> None:
        """Lowers the adaptive rate limit after ``fraction`` of a request was throttled."""
        if not self._settings.adaptive_rate_limit:
            return
        aimd = self._state.aimd
        if aimd.on_throttled(sent_at, now, fraction):
            # Sustained throttling cuts the rate about once per round trip: log the first
            # cut loudly, the rest at debug level, so logs stay readable in a backfill.
            level = logging.DEBUG if now - self._state.throttle_logged < 60 else logging.WARNING
            if level == logging.WARNING:
                self._state.throttle_logged = now
            _LOGGER.log(
                level,
                "Kinesis stream %s is throttling; client rate limited to %.0f rec/s",
                self._stream,
                aimd.rate(now) or 0.0,
            )

    def retry_or_give_up(
        self,
        records: list[PendingRecord],
        failure: kinesis_failures.Failure,
        now: float,
        backoff: bool = True,
    ) -> None:
        # One backoff for the whole group: its records come back together as one batch
        # instead of trickling back as many small requests.
        attempt = max(r.attempts for r in records)
        not_before = now
        if backoff:
            not_before += full_jitter_backoff(
                attempt,
                self._settings.backoff_base_seconds,
                self._settings.backoff_max_seconds,
                self._rng,
            )
        retried = 0
        for r in records:
            first_sent = r.first_sent if r.first_sent is not None else now
            if (
                r.attempts >= self._settings.max_attempts
                or now - first_sent >= self._settings.max_retry_seconds
            ):
                behind = self._buffer.complete_and_drop(r)
                self.give_up(
                    r.partition_key,
                    r.data,
                    r.timestamp,
                    RETRIES_EXHAUSTED,
                    f"{failure.describe()} (after {r.attempts} attempts)",
                )
                for later in behind:
                    self.give_up(
                        later.partition_key, later.data, later.timestamp, BLOCKED, BLOCKED_ERROR
                    )
            else:
                self._buffer.retry_later(r, not_before)
                retried += 1
        if retried:
            self._metrics.inc("kinesis_retries", retried)
            _LOGGER.debug(
                "Retrying %d records on stream %s after %s", retried, self._stream, failure.code
            )

    def give_up(
        self, partition_key: str, data: bytes, timestamp: Any, reason: str, error: str
    ) -> None:
        """Dead-letters a record, and blocks its partition key for the writer's lifetime.

        A profile's later events must not reach the stream before this one: sent now and
        this one replayed later, an entry would arrive after the exit that followed it.
        So every later record of the key (queued, or added afterwards by this DoFn
        instance) is dead-lettered behind it with reason ``blocked_by_earlier_failure``,
        and a replay of the dead letters sends them all in order.
        """
        self._state.blocked_keys.add(partition_key)
        self._metrics.inc("kinesis_dead_lettered")
        if not self._settings.dead_letter:
            self.failed = KinesisSinkError(
                f"Kinesis stream '{self._stream}': a record could not be delivered "
                f"({reason}: {error}) and the dead letter is disabled"
            )
            raise self.failed
        self.dead.append(
            GivenUp(
                sink_dead_letter(reason, error, partition_key=partition_key, data=data), timestamp
            )
        )

    def take_dead(self) -> list[GivenUp]:
        dead, self.dead = self.dead, []
        return dead

    def fail(self, failure: kinesis_failures.Failure) -> None:
        hint = ""
        if failure.code == "ResourceNotFoundException":
            hint = " (does the stream exist in this region/account?)"
        self.failed = KinesisSinkError(
            f"Kinesis stream '{self._stream}': {failure.code}{hint}: {failure.message}"
        )
        _LOGGER.error("%s", self.failed)
        raise self.failed

    def check_reachable(
        self, records: list[PendingRecord], failure: kinesis_failures.Failure, now: float
    ) -> None:
        """Fails the job when an endpoint that never answered stays unreachable.

        Fails after ``unreachable_timeout_seconds`` of connection failures, or earlier if
        a record would otherwise be given up: a dead letter for an endpoint never reached
        would turn a wrong URL or a closed network into a "successful" run.
        """
        state = self._state
        if state.unreachable_since is None:
            state.unreachable_since = now
        elapsed = now - state.unreachable_since
        exhausted = any(
            r.attempts >= self._settings.max_attempts
            or now - (r.first_sent if r.first_sent is not None else now)
            >= self._settings.max_retry_seconds
            for r in records
        )
        if elapsed < self._settings.unreachable_timeout_seconds and not exhausted:
            return
        endpoint = getattr(getattr(self._client, "meta", None), "endpoint_url", None)
        where = f"the endpoint {endpoint}" if endpoint else "the Kinesis endpoint"
        self.failed = KinesisSinkError(
            f"Kinesis stream '{self._stream}': cannot reach {where} (no request answered "
            f"in {elapsed:.0f} s): {failure.describe()}"
        )
        _LOGGER.error("%s", self.failed)
        raise self.failed

    def check_failed(self) -> None:
        if self.failed is not None:
            raise self.failed
