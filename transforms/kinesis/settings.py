"""The sink's settings, its metrics interface and its given-up records.

Shared by the PutRecords engine (:mod:`transforms.kinesis.writer`) and the Beam sink
(:mod:`transforms.kinesis.sink`); Beam-independent. The sink's error is
:class:`transforms.kinesis.failures.KinesisSinkError`; its dead letters are built by
:func:`transforms.dead_letters.sink_dead_letter`, like every stage's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transforms.dead_letters import KINESIS_SINK
from transforms.kinesis.aggregation import (
    DEFAULT_AGGREGATION_MAX_BYTES,
)
from transforms.kinesis.batching import (
    DEFAULT_MAX_RECORD_BYTES,
    MAX_RECORDS_PER_REQUEST,
    MAX_REQUEST_BYTES,
)

DEAD_LETTER_STAGE = KINESIS_SINK


@dataclasses.dataclass(frozen=True)
class SinkSettings:
    """Tuning of the Kinesis sink; defaults suit production.

    Attributes:
        max_record_bytes: per-record limit (data + partition key); larger records are
            dead-lettered. 1 MiB, or up to 10 MiB for streams raised to it.
        max_request_records: entries per PutRecords request (service limit 500).
        max_request_bytes: bytes per request (service limit 5 MiB); a single record larger
            than this (only possible with a raised record limit) is sent alone.
        max_in_flight_requests: concurrent PutRecords requests.
        max_buffered_records: unacknowledged records held before ``add`` blocks.
        max_buffered_bytes: unacknowledged bytes held before ``add`` blocks.
        max_attempts: sends of one record before it is given up.
        max_retry_seconds: time since a record's first send after which it is given up.
        backoff_base_seconds: backoff ceiling of the first retry (full jitter, doubling).
        backoff_max_seconds: largest backoff ceiling.
        max_records_per_second: hard cap on user records sent per second (None: none).
        adaptive_rate_limit: slow down on throttling (AIMD) instead of retrying at full rate.
        min_adaptive_rate: the AIMD floor, records per second.
        aggregate: pack records with the KPL aggregated format (shard-aware).
        aggregation_max_bytes: capacity of one aggregated record.
        shard_map_ttl_seconds: how long the ListShards map is trusted when aggregating.
        dead_letter: give up records to the dead letter; False raises instead.
        unreachable_timeout_seconds: while no request has ever been answered, how long
            connection failures (refused, reset, DNS, connect timeout) may last before
            the job fails naming the endpoint; records are never dead-lettered for an
            endpoint that was never reached. After a first answer, outages are retried
            like any transient error.
    """

    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_request_records: int = MAX_RECORDS_PER_REQUEST
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_in_flight_requests: int = 8
    max_buffered_records: int = 100_000
    max_buffered_bytes: int = 64 * 1024 * 1024
    max_attempts: int = 10
    max_retry_seconds: float = 300.0
    backoff_base_seconds: float = 0.1
    backoff_max_seconds: float = 10.0
    max_records_per_second: float | None = None
    adaptive_rate_limit: bool = True
    min_adaptive_rate: float = 10.0
    aggregate: bool = False
    aggregation_max_bytes: int = DEFAULT_AGGREGATION_MAX_BYTES
    shard_map_ttl_seconds: float = 60.0
    dead_letter: bool = True
    unreachable_timeout_seconds: float = 10.0

    def validate(self) -> None:
        """Raises ValueError naming the first invalid setting."""
        checks = [
            ("max_record_bytes", 1 <= self.max_record_bytes <= 10 * 1024 * 1024),
            ("max_request_records", 1 <= self.max_request_records <= MAX_RECORDS_PER_REQUEST),
            ("max_request_bytes", self.max_request_bytes >= 1),
            ("max_in_flight_requests", self.max_in_flight_requests >= 1),
            ("max_buffered_records", self.max_buffered_records >= 1),
            ("max_buffered_bytes", self.max_buffered_bytes >= 1),
            ("max_attempts", self.max_attempts >= 1),
            ("max_retry_seconds", self.max_retry_seconds > 0),
            ("backoff_base_seconds", self.backoff_base_seconds >= 0),
            ("backoff_max_seconds", self.backoff_max_seconds >= self.backoff_base_seconds),
            (
                "max_records_per_second",
                self.max_records_per_second is None or self.max_records_per_second > 0,
            ),
            ("min_adaptive_rate", self.min_adaptive_rate > 0),
            ("aggregation_max_bytes", self.aggregation_max_bytes >= 64),
            ("shard_map_ttl_seconds", self.shard_map_ttl_seconds > 0),
            ("unreachable_timeout_seconds", self.unreachable_timeout_seconds > 0),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"invalid Kinesis sink setting {name}={getattr(self, name)!r}")


class SinkMetrics:
    """Receives the sink's counters and distributions; the default discards them."""

    def inc(self, name: str, n: int = 1) -> None:
        """Adds ``n`` to counter ``name``."""

    def observe(self, name: str, value: int) -> None:
        """Adds ``value`` to distribution ``name``."""


@dataclasses.dataclass
class GivenUp:
    """A record given up: its dead letter (a dict of
    :func:`transforms.dead_letters.sink_dead_letter`), with the element timestamp the
    record came with."""

    value: dict[str, Any]
    timestamp: Any
