"""``WriteToKinesisStream``: the sink writing segment events to Amazon Kinesis Data Streams.

Usage::

    dead_letters = events | "WriteToKinesis" >> WriteToKinesisStream("segment-events",
                                                                     region="eu-west-1")

Input elements are ``(partition_key: str, data: bytes)``; elements of one partition key must
arrive in the order they are to reach the stream (within a bundle). The output is a
PCollection, in the global window, of dead-letter dicts (records that could not be
delivered; :func:`transforms.dead_letters.sink_dead_letter`), empty when all went well::

    {"stage": "kinesis_sink", "reason": "record_too_large" | "retries_exhausted" |
     "blocked_by_earlier_failure" | "invalid_partition_key",
     "error": "<detail, e.g. the Kinesis code: message>", "file": None,
     "raw": "<data as text>", "partition_key": "<key>"}

Guarantees (docs/contract.md §6): PutRecords within the service limits; retries of failed entries
only (whole requests on throttling, 5xx, timeouts and connection errors) with full-jitter
exponential backoff, bounded in attempts and time; an adaptive (AIMD) client rate limiter
and an optional hard cap; per-key order across retries (at most one record per key in
flight); at-least-once delivery; fatal errors fail the job at once naming the stream; memory
bounded by record and byte limits; optional shard-aware KPL aggregation. Limits (rate cap,
in-flight requests, buffers) apply per DoFn instance, i.e. per worker thread running it.

Metrics (namespace ``segment_events``): counters kinesis_records_sent, kinesis_bytes_sent,
kinesis_requests, kinesis_retries (records re-queued), kinesis_throttled_records,
kinesis_dead_lettered (and, with aggregation, kinesis_user_records_sent and
kinesis_wrong_shard_resent: user records re-sent after a reshard); distributions
kinesis_batch_records and kinesis_request_latency_ms.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from transforms import progress
from transforms.kinesis.batching import DEFAULT_MAX_RECORD_BYTES
from transforms.kinesis.client import make_kinesis_client
from transforms.kinesis.failures import KinesisSinkError
from transforms.kinesis.settings import (
    GivenUp,
    SinkMetrics,
    SinkSettings,
)
from transforms.kinesis.writer import KinesisWriter
from transforms.kinesis.writer_state import WriterState
from transforms.metrics import METRICS_NAMESPACE

_LOGGER = logging.getLogger(__name__)

_COUNTERS = (
    "kinesis_records_sent",
    "kinesis_bytes_sent",
    "kinesis_requests",
    "kinesis_retries",
    "kinesis_throttled_records",
    "kinesis_dead_lettered",
    "kinesis_user_records_sent",
    "kinesis_wrong_shard_resent",
)
_DISTRIBUTIONS = ("kinesis_batch_records", "kinesis_request_latency_ms")

__all__ = ["KinesisSinkError", "WriteToKinesisStream"]


class _BeamSinkMetrics(SinkMetrics):
    """Forwards the writer's metrics to Beam (called on the bundle thread only)."""

    def __init__(self) -> None:
        self._counters = {n: Metrics.counter(METRICS_NAMESPACE, n) for n in _COUNTERS}
        self._distributions = {
            n: Metrics.distribution(METRICS_NAMESPACE, n) for n in _DISTRIBUTIONS
        }

    def inc(self, name: str, n: int = 1) -> None:
        if n:
            self._counters[name].inc(n)
            # The progress lines show some of them (transforms.progress.SHOWN).
            progress.count(name, n)

    def observe(self, name: str, value: int) -> None:
        self._distributions[name].update(value)


def _windowed(dead: GivenUp) -> WindowedValue:
    # Emitted in the global window (finish_bundle has no input window to inherit), at the
    # timestamp of the element the record came from.
    return WindowedValue(dead.value, dead.timestamp, (GlobalWindow(),))


class _PutRecordsFn(beam.DoFn):
    """Sends ``(partition_key, data)`` records with PutRecords; yields dead letters."""

    def __init__(
        self,
        stream_name: str,
        settings: SinkSettings,
        client_factory: Callable[[], Any] | None,
        client_options: dict[str, Any],
    ):
        self._stream_name = stream_name
        self._settings = settings
        self._client_factory = client_factory
        self._client_options = client_options
        self._client: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._state: WriterState | None = None
        self._writer: KinesisWriter | None = None
        self._metrics: SinkMetrics | None = None

    def setup(self) -> None:
        if self._client_factory is not None:
            self._client = self._client_factory()
        else:
            self._client = make_kinesis_client(
                max_pool_connections=self._settings.max_in_flight_requests + 2,
                **self._client_options,
            )
        self._executor = ThreadPoolExecutor(
            max_workers=self._settings.max_in_flight_requests, thread_name_prefix="kinesis-put"
        )
        # Rate limiters and the shard map outlive bundles: a throttled stream stays
        # throttled across small streaming bundles.
        self._state = WriterState(self._settings)
        self._metrics = _BeamSinkMetrics()

    def start_bundle(self) -> None:
        self._writer = KinesisWriter(
            self._client,
            self._stream_name,
            self._settings,
            self._executor,
            self._metrics,
            state=self._state,
        )

    def process(
        self, element: tuple[str, bytes], timestamp: Any = beam.DoFn.TimestampParam
    ) -> Iterator[WindowedValue]:
        partition_key, data = element
        for dead in self._writer.add(partition_key, data, timestamp):
            yield _windowed(dead)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        # Returns only when every buffered record is acknowledged or dead-lettered.
        for dead in self._writer.flush():
            yield _windowed(dead)
        self._writer = None

    def teardown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        close = getattr(self._client, "close", None)
        if callable(close):
            close()
        self._client = None


class WriteToKinesisStream(beam.PTransform):
    """Writes ``(partition_key, data)`` records to a Kinesis data stream.

    Returns the PCollection of dead-letter dicts (see the module docstring).
    """

    def __init__(
        self,
        stream_name: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        role_arn: str | None = None,
        max_records_per_second: float | None = None,
        aggregate: bool = False,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        dead_letter: bool = True,
        client_factory: Callable[[], Any] | None = None,
        max_in_flight_requests: int = 8,
        max_buffered_records: int = 100_000,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        max_attempts: int = 10,
        max_retry_seconds: float = 300.0,
        backoff_base_seconds: float = 0.1,
        backoff_max_seconds: float = 10.0,
        adaptive_rate_limit: bool = True,
        aggregation_max_bytes: int | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        unreachable_timeout_seconds: float = 10.0,
        label: str | None = None,
    ):
        """Configures the sink; invalid settings raise ValueError here, before the run.

        Every setting after the stream name is keyword-only.

        Args:
            stream_name: the Kinesis data stream.
            region: AWS region (None: boto3's default chain).
            endpoint_url: a Kinesis-compatible endpoint, e.g. a local kinesalite.
            role_arn: IAM role to assume through STS for writing.
            max_records_per_second: hard cap on records per second, per worker (DoFn
                instance) — e.g. so a backfill does not starve live consumers.
            aggregate: KPL-aggregate records (shard-aware; needs kinesis:ListShards).
            max_record_bytes: record limit incl. partition key; larger go to the dead letter.
            dead_letter: False fails the job on any record that cannot be delivered.
            client_factory: builds the boto3 Kinesis client (tests); picklable.
            max_in_flight_requests: concurrent PutRecords requests per DoFn instance.
            max_buffered_records: unacknowledged records held per DoFn instance.
            max_buffered_bytes: unacknowledged bytes held per DoFn instance.
            max_attempts: sends of one record before it is dead-lettered.
            max_retry_seconds: time after a record's first send before it is dead-lettered.
            backoff_base_seconds: first retry's backoff ceiling (full jitter, doubling).
            backoff_max_seconds: largest backoff ceiling.
            adaptive_rate_limit: back off the send rate on throttling (AIMD).
            aggregation_max_bytes: size of one aggregated record (default KPL's 50 KiB).
            connect_timeout: seconds to connect (default client only).
            read_timeout: seconds to wait for a response (default client only).
            unreachable_timeout_seconds: how long an endpoint that never answered may
                refuse connections before the job fails naming it.
            label: the transform label.
        """
        super().__init__(label)
        if not stream_name or not isinstance(stream_name, str):
            raise ValueError("WriteToKinesisStream needs a stream name")
        settings = SinkSettings(
            max_record_bytes=max_record_bytes,
            max_in_flight_requests=max_in_flight_requests,
            max_buffered_records=max_buffered_records,
            max_buffered_bytes=max_buffered_bytes,
            max_attempts=max_attempts,
            max_retry_seconds=max_retry_seconds,
            backoff_base_seconds=backoff_base_seconds,
            backoff_max_seconds=backoff_max_seconds,
            max_records_per_second=max_records_per_second,
            adaptive_rate_limit=adaptive_rate_limit,
            aggregate=aggregate,
            dead_letter=dead_letter,
            unreachable_timeout_seconds=unreachable_timeout_seconds,
        )
        if aggregation_max_bytes is not None:
            settings = dataclasses.replace(settings, aggregation_max_bytes=aggregation_max_bytes)
        settings.validate()
        self._stream_name = stream_name
        self._settings = settings
        self._client_factory = client_factory
        self._client_options = {
            "region": region,
            "endpoint_url": endpoint_url,
            "role_arn": role_arn,
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
        }

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        # Dead letters leave finish_bundle in the global window; putting the input there
        # too keeps the output's windowing (and coder) consistent whatever came upstream.
        return (
            pcoll
            | "WindowIntoGlobal" >> beam.WindowInto(GlobalWindows())
            | "PutRecords"
            >> beam.ParDo(
                _PutRecordsFn(
                    self._stream_name, self._settings, self._client_factory, self._client_options
                )
            ).with_output_types(dict[str, Any])
        )
