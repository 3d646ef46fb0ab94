"""The Kinesis PutRecords engine behind the sink's DoFn (Beam-independent).

One :class:`KinesisWriter` per bundle. The calling thread owns all state: it buffers
records, builds requests, and handles every response; worker threads of a shared
``ThreadPoolExecutor`` only run ``put_records`` and hand the outcome back through a queue.
So there is no locking around the buffer, and Beam metrics (thread-bound) are updated on the
bundle's thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from transforms.dead_letters import (
    INVALID_PARTITION_KEY,
    RECORD_TOO_LARGE,
)
from transforms.kinesis import failures as kinesis_failures
from transforms.kinesis.aggregation import (
    DEFAULT_MAX_SHARD_BYTES_PER_REQUEST,
    ShardMap,
    aggregate_capacity,
    build_aggregated_entries,
    stream_params,
)
from transforms.kinesis.batching import (
    MAX_PARTITION_KEY_CHARS,
    KeyOrderedBuffer,
    PendingRecord,
    plain_entries,
    record_size,
)
from transforms.kinesis.failure_handling import BLOCKED, BLOCKED_ERROR, FailureHandling
from transforms.kinesis.settings import (
    GivenUp,
    SinkMetrics,
    SinkSettings,
)
from transforms.kinesis.shard_routing import ShardRouting
from transforms.kinesis.writer_state import WriterState

_LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass
class _Request:
    entries: list[tuple[dict[str, Any], list[PendingRecord], int]]
    user_records: int
    sent_at: float


class KinesisWriter:
    """Buffers, batches, sends and retries records for one stream; see the module doc.

    Not thread-safe: call ``add``/``flush`` from one thread.
    """

    def __init__(
        self,
        client: Any,
        stream_name: str,
        settings: SinkSettings,
        executor: Executor,
        metrics: SinkMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        state: WriterState | None = None,
    ):
        settings.validate()
        self._client = client
        self._stream = stream_name
        self._stream_params = stream_params(stream_name)
        self._settings = settings
        self._executor = executor
        self._metrics = metrics or SinkMetrics()
        self._clock = clock
        self._rng = rng or random.Random()
        self._buffer = KeyOrderedBuffer()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._in_flight: dict[int, _Request] = {}
        self._ids = itertools.count()
        self._state = state or WriterState(settings, now=clock())
        self._failures = FailureHandling(
            client, stream_name, settings, self._state, self._buffer, self._metrics, self._rng
        )
        self._routing = ShardRouting(
            client,
            stream_name,
            settings,
            self._state,
            clock,
            self._failures.fail,
            self._set_aggregate_batch_bytes,
        )
        self._hard_limit = self._state.hard_limit
        self._aimd = self._state.aimd
        self._adaptive_limit = self._state.adaptive_limit
        self._limiter_ready_at: float | None = None
        self._agg_bytes = aggregate_capacity(
            settings.max_record_bytes, settings.aggregation_max_bytes
        )
        # With aggregation a request holds many user records: fill it by bytes, keeping
        # headroom for the aggregation framing (key table, varints, digest); narrowed to the
        # per-shard cap once the shard map is known.
        self._batch_bytes = (
            int(settings.max_request_bytes * 0.9)
            if settings.aggregate
            else settings.max_request_bytes
        )
        if settings.aggregate and self._state.shard_map is not None:
            self._set_aggregate_batch_bytes(self._state.shard_map)

    # ------------------------------------------------------------------ public API

    @property
    def buffered_records(self) -> int:
        """Records not yet acknowledged or dead-lettered."""
        return len(self._buffer)

    @property
    def adaptive_rate(self) -> float | None:
        """The current AIMD rate limit (None: unlimited)."""
        return self._aimd.rate(self._clock())

    def add(self, partition_key: str, data: bytes, timestamp: Any = None) -> list[GivenUp]:
        """Buffers one record; may send, and blocks while the buffer is at its limit.

        Returns:
            Dead letters produced meanwhile (the record itself if it is too large).

        Raises:
            KinesisSinkError: a fatal error, or an undeliverable record without dead letter.
            TypeError: the element is not ``(str, bytes)``.
        """
        self._failures.check_failed()
        if not isinstance(partition_key, str) or not isinstance(data, (bytes, bytearray)):
            raise TypeError(
                "WriteToKinesisStream expects (partition_key: str, data: bytes) elements, got "
                f"({type(partition_key).__name__}, {type(data).__name__})"
            )
        data = bytes(data)
        size = record_size(partition_key, data)
        if partition_key in self._state.blocked_keys:
            self._failures.give_up(partition_key, data, timestamp, BLOCKED, BLOCKED_ERROR)
        elif not 1 <= len(partition_key) <= MAX_PARTITION_KEY_CHARS:
            self._failures.give_up(
                partition_key,
                data,
                timestamp,
                INVALID_PARTITION_KEY,
                f"partition key must have 1 to {MAX_PARTITION_KEY_CHARS} characters",
            )
        elif size > self._settings.max_record_bytes:
            self._failures.give_up(
                partition_key,
                data,
                timestamp,
                RECORD_TOO_LARGE,
                f"record is {size} bytes (data + partition key), limit {self._settings.max_record_bytes}",
            )
        else:
            buffer = self._buffer
            buffer.add(PendingRecord(partition_key, data, size, timestamp))
            # Fast path (most records): no response to handle, no full batch, room left.
            if (
                self._results.empty()
                and not self._full_batch_ready()
                and not self._over_limit()
                and not buffer.delayed_count
            ):
                return []
            self._pump(flush=False)
        return self._failures.take_dead()

    def flush(self) -> list[GivenUp]:
        """Sends everything buffered; returns once every record is acknowledged or given up.

        Returns:
            The dead letters not returned yet.
        """
        self._failures.check_failed()
        self._pump(flush=True)
        return self._failures.take_dead()

    # ------------------------------------------------------------------ main loop

    def _over_limit(self) -> bool:
        b = self._buffer
        return (
            b.buffered_records >= self._settings.max_buffered_records
            or b.buffered_bytes >= self._settings.max_buffered_bytes
        )

    def _pump(self, flush: bool) -> None:
        """Collects responses and sends; in flush mode (or over the buffer limit) waits."""
        while True:
            self._collect(timeout=0.0)
            over = self._over_limit()
            self._dispatch(partial=flush or over)
            if flush:
                if not len(self._buffer) and not self._in_flight:
                    return
            elif not self._over_limit():
                return
            self._collect(timeout=self._wait_timeout())

    def _wait_timeout(self) -> float | None:
        """How long to wait for a response before a timer (backoff, rate limit) is due."""
        timers = [t for t in (self._buffer.next_due(), self._limiter_ready_at) if t is not None]
        if not timers:
            if not self._in_flight:
                # Nothing in flight and no timer, yet records remain: cannot happen unless the
                # bookkeeping is wrong; fail rather than hang.
                raise RuntimeError("Kinesis sink stalled with buffered records")
            return None
        return max(0.0, min(timers) - self._clock())

    def _full_batch_ready(self) -> bool:
        b = self._buffer
        if b.ready_bytes >= self._batch_bytes:
            return True
        return not self._settings.aggregate and b.ready_count >= self._settings.max_request_records

    def _worth_sending_partial(self) -> bool:
        """Whether a partial batch should go now rather than wait for responses.

        With nothing in flight it must go (nothing else will release records). Otherwise a
        small batch waits: the responses in flight release more records (the next of each
        key, retries), and many tiny requests would cost more than the wait.
        """
        if not self._in_flight:
            return True
        share = self._settings.max_request_records // self._settings.max_in_flight_requests
        b = self._buffer
        return (
            b.ready_count >= share
            or b.ready_bytes * self._settings.max_in_flight_requests >= self._batch_bytes
        )

    def _dispatch(self, partial: bool) -> None:
        now = self._clock()
        self._buffer.release_due(now)
        self._limiter_ready_at = None
        while (
            len(self._in_flight) < self._settings.max_in_flight_requests
            and self._buffer.ready_count
        ):
            if not self._full_batch_ready() and not (partial and self._worth_sending_partial()):
                return
            self._adaptive_limit.set_rate(self._aimd.rate(now), now)
            default_batch = (
                self._buffer.ready_count
                if self._settings.aggregate
                else self._settings.max_request_records
            )
            limit = min(
                self._hard_limit.max_batch(default_batch),
                self._adaptive_limit.max_batch(default_batch),
            )
            planned = min(limit, self._buffer.ready_count)
            wait = max(
                self._hard_limit.wait_time(planned, now),
                self._adaptive_limit.wait_time(planned, now),
            )
            if wait > 0:
                self._limiter_ready_at = now + wait
                return
            if self._settings.aggregate:
                shard_map = self._routing.get(now)
                records = self._buffer.take(limit, self._batch_bytes)
                entries, leftovers = build_aggregated_entries(
                    records,
                    shard_map,
                    aggregate_bytes=self._agg_bytes,
                    max_entries=self._settings.max_request_records,
                    max_request_bytes=self._settings.max_request_bytes,
                    max_shard_bytes=DEFAULT_MAX_SHARD_BYTES_PER_REQUEST,
                )
                if leftovers:
                    self._buffer.give_back(leftovers)
                user_records = len(records) - len(leftovers)
            else:
                records = self._buffer.take(limit, self._batch_bytes)
                entries, user_records = plain_entries(records), len(records)
            self._send(entries, user_records, now)

    def _send(self, entries: list, user_records: int, now: float) -> None:
        for _, members, _ in entries:
            for r in members:
                r.attempts += 1
                if r.first_sent is None:
                    r.first_sent = now
        self._hard_limit.consume(user_records, now)
        self._adaptive_limit.consume(user_records, now)
        self._aimd.on_sent(user_records, now)
        request_id = next(self._ids)
        self._in_flight[request_id] = _Request(entries, user_records, now)
        self._metrics.inc("kinesis_requests")
        self._metrics.observe("kinesis_batch_records", len(entries))
        self._executor.submit(self._call, request_id, [e[0] for e in entries])

    def _call(self, request_id: int, records: list[dict[str, Any]]) -> None:
        """Runs on a worker thread: one PutRecords call, outcome handed to the queue."""
        started = time.perf_counter()
        try:
            response = self._client.put_records(**self._stream_params, Records=records)
            outcome: tuple = (request_id, response, None)
        except BaseException as exc:  # noqa: BLE001 - handed to the owning thread as is
            outcome = (request_id, None, exc)
        self._results.put((*outcome, (time.perf_counter() - started) * 1000.0))

    def _collect(self, timeout: float | None) -> None:
        """Handles available responses; with a timeout (None: forever) waits for the first.

        With nothing in flight this is a plain wait for the next timer (backoff, rate limit).
        """
        results = self._results
        if timeout == 0.0:
            if results.empty():  # the common case on the per-record path: no exception cost
                return
            item = results.get_nowait()
        else:
            try:
                item = results.get(timeout=timeout)
            except queue.Empty:
                return
        self._handle(*item)
        while not results.empty():
            self._handle(*results.get_nowait())

    # ------------------------------------------------------------------ responses

    def _handle(
        self, request_id: int, response: Any, exc: BaseException | None, latency_ms: float
    ) -> None:
        request = self._in_flight.pop(request_id, None)
        if request is None:  # defensive: every id in the queue was registered in flight
            return
        self._metrics.observe("kinesis_request_latency_ms", int(latency_ms))
        now = self._clock()
        if exc is not None:
            failure = kinesis_failures.classify_exception(exc)
            if not failure.unreachable:
                self._state.answered = True
            self._failures.request_failed(request.entries, request.sent_at, failure, now)
            return
        self._state.answered = True
        results = response.get("Records") or []
        if len(results) != len(request.entries):
            failure = kinesis_failures.Failure(
                kinesis_failures.RETRYABLE,
                "MalformedResponse",
                f"{len(results)} result entries for {len(request.entries)} records",
            )
            self._failures.request_failed(request.entries, request.sent_at, failure, now)
            return
        failed: list[PendingRecord] = []
        wrong_shard: list[PendingRecord] = []
        last_failure: kinesis_failures.Failure | None = None
        throttled = sent = sent_bytes = user_sent = 0
        reloaded = False
        for (_, members, size), result in zip(request.entries, results, strict=True):
            code = result.get("ErrorCode")
            if code:
                last_failure = kinesis_failures.classify_entry_error(
                    code, result.get("ErrorMessage")
                )
                if last_failure.kind == kinesis_failures.FATAL:
                    self._failures.fail(last_failure)
                failed.extend(members)
                if last_failure.kind == kinesis_failures.THROTTLED:
                    throttled += len(members)
                continue
            sent += 1
            sent_bytes += size
            if self._settings.aggregate and len(members) > 1:
                landed, reloaded = self._routing.landed_whole(
                    members, result.get("ShardId"), reloaded
                )
                if not landed:
                    wrong_shard.extend(members)
                    continue
            user_sent += len(members)
            for r in members:
                self._buffer.complete(r)
        self._metrics.inc("kinesis_records_sent", sent)
        self._metrics.inc("kinesis_bytes_sent", sent_bytes)
        if self._settings.aggregate:
            self._metrics.inc("kinesis_user_records_sent", user_sent)
        if wrong_shard:
            self._resend_wrong_shard(wrong_shard, now, map_fresh=reloaded)
        if throttled:
            self._metrics.inc("kinesis_throttled_records", throttled)
            self._failures.on_throttled(
                request.sent_at, now, throttled / max(1, request.user_records)
            )
        if failed:
            assert last_failure is not None
            self._failures.retry_or_give_up(failed, last_failure, now)

    # ------------------------------------------------------------------ shard map

    def _set_aggregate_batch_bytes(self, shard_map: ShardMap) -> None:
        # A request carries at most DEFAULT_MAX_SHARD_BYTES_PER_REQUEST per shard: fill and
        # take about that much, not more (leftovers would be re-aggregated: wasted CPU).
        self._batch_bytes = min(
            int(self._settings.max_request_bytes * 0.9),
            int(0.9 * DEFAULT_MAX_SHARD_BYTES_PER_REQUEST * max(1, len(shard_map))),
        )

    def _resend_wrong_shard(
        self, records: list[PendingRecord], now: float, map_fresh: bool
    ) -> None:
        """Re-sends every user record of aggregates that landed in the wrong shard.

        They are re-aggregated with a fresh shard map (reloaded here unless this response
        already did). Each stays the head of its partition key until the re-sent copy is
        acknowledged, so a profile's later events still wait behind it. Consumers that do
        not drop such aggregates (the ``aws_kinesis_agg`` deaggregator) see these records
        twice, with the same eventId.
        """
        self._metrics.inc("kinesis_wrong_shard_resent", len(records))
        if not map_fresh:
            self._routing.reload()
        failure = kinesis_failures.Failure(
            kinesis_failures.RETRYABLE,
            "WrongShard",
            "an aggregated record landed in a shard whose hash range does not hold all "
            "its user records (the stream was resharded)",
        )
        # No backoff: nothing failed, the records only need a request of their own.
        self._failures.retry_or_give_up(records, failure, now, backoff=False)
