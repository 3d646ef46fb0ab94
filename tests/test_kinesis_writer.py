"""Unit tests of the PutRecords engine (transforms/kinesis/writer.py) against a fake client.

The fake is an in-memory stream with scripted faults; it stands in for Kinesis only here.
The same behaviours are tested over real HTTP against kinesalite in test_kinesis_sink.py.

No test here measures time. Concurrency is made visible by holding the fake's calls open
(``hold``/``release``) and synchronising on its condition; waiting is checked through
the writer's injected clock (how it is read), never with a stopwatch.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.support.dead_letter_schema import validate_dead_letter
from transforms.kinesis.failures import KinesisSinkError
from transforms.kinesis.settings import (
    SinkMetrics,
    SinkSettings,
)
from transforms.kinesis.writer import (
    KinesisWriter,
)


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} injected"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PutRecords",
    )


# Generous: a wait that runs out fails the test loudly; no test proceeds on a timeout.
WAIT_SECONDS = 10.0


class FakeKinesis:
    """In-memory PutRecords. ``script(call_no, n_records)`` returns the call's fault:
    None (ok), ("raise", exc), ("raise_after_write", exc) or ("entries", {idx: code}).

    ``max_concurrent`` is the most calls that were inside ``put_records`` at once. After
    ``hold()`` every call stays inside until ``release()``, so calls the writer makes
    meanwhile really overlap: a writer that exceeded its in-flight limit would be seen.
    """

    def __init__(self, script=None):
        self.script = script or (lambda call, n: None)
        self.lock = threading.Lock()
        self.call_started = threading.Condition(self.lock)
        self.stream: list[tuple[str, bytes]] = []
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.keys_per_call: list[list[str]] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self.gate: threading.Event | None = None
        self.gate_timeouts = 0

    def hold(self) -> None:
        """From now on, calls wait inside ``put_records`` until ``release()``."""
        self.gate = threading.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()

    def wait_for_calls(self, n: int, what: str) -> None:
        """Returns once ``n`` calls have started; fails the test after WAIT_SECONDS."""
        with self.call_started:
            if not self.call_started.wait_for(lambda: self.calls >= n, WAIT_SECONDS):
                pytest.fail(f"{what}: {self.calls} of {n} calls started in {WAIT_SECONDS} s")

    def put_records(self, StreamName, Records):  # noqa: N803 - boto3's parameter names
        with self.lock:
            call = self.calls
            self.calls += 1
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
            self.batch_sizes.append(len(Records))
            self.keys_per_call.append([r["PartitionKey"] for r in Records])
            self.call_started.notify_all()
        try:
            gate = self.gate
            if gate is not None and not gate.wait(WAIT_SECONDS):
                with self.lock:
                    self.gate_timeouts += 1  # asserted by the tests that hold calls
            fault = self.script(call, len(Records))
            with self.lock:
                if fault and fault[0] == "raise":
                    raise fault[1]
                failed = fault[1] if fault and fault[0] == "entries" else {}
                results = []
                for i, r in enumerate(Records):
                    if i in failed:
                        results.append({"ErrorCode": failed[i], "ErrorMessage": "injected"})
                    else:
                        self.stream.append((r["PartitionKey"], r["Data"]))
                        results.append(
                            {
                                "SequenceNumber": str(len(self.stream)),
                                "ShardId": "shardId-000000000000",
                            }
                        )
                if fault and fault[0] == "raise_after_write":
                    raise fault[1]
                return {"FailedRecordCount": len(failed), "Records": results}
        finally:
            with self.lock:
                self.concurrent -= 1


class SubmitCounter:
    """An executor that counts what the writer submits (on the writer's own thread).

    With a ``clock`` (a :class:`CountingClock` given to the writer), it also logs, per
    submitted request, ``(reads, time)`` of that clock: a request goes out with the time
    of the writer's last reading, the one it checked its backoff and rate limits against.
    """

    def __init__(self, inner, clock=None):
        self.inner = inner
        self.clock = clock
        self.submitted = 0
        self.sent_at: list[tuple[int, float]] = []

    def submit(self, fn, *args, **kwargs):
        self.submitted += 1
        if self.clock is not None:
            self.sent_at.append((self.clock.reads, self.clock.last))
        return self.inner.submit(fn, *args, **kwargs)


class CountingClock:
    """The writer's clock: ``time.monotonic``, counting how often the writer reads it.

    The writer reads its clock once per turn of its loop, so the count tells a writer that
    blocks until its next timer (a few reads) from one that polls (a read per turn).
    """

    def __init__(self):
        self.reads = 0
        self.first = self.last = float("nan")

    def __call__(self) -> float:
        self.reads += 1
        self.last = time.monotonic()
        if self.reads == 1:
            self.first = self.last
        return self.last


def add_while_held(writer: KinesisWriter, client: FakeKinesis, executor: SubmitCounter, records):
    """Adds ``records`` while every PutRecords call is held open, then waits until every
    call submitted meanwhile is inside ``put_records``: they all overlap, however many
    the writer let out. Below its buffer limit ``add`` never waits for an answer.

    The executor needs a thread per call the writer might submit, or the wait fails.
    """
    client.hold()
    dead = [d for key, data in records for d in writer.add(key, data)]
    client.wait_for_calls(executor.submitted, "the calls submitted while adding")
    return dead


class CountingMetrics(SinkMetrics):
    def __init__(self):
        self.counters = collections.Counter()
        self.distributions = collections.defaultdict(list)

    def inc(self, name, n=1):
        self.counters[name] += n

    def observe(self, name, value):
        self.distributions[name].append(value)


@pytest.fixture
def executor():
    with ThreadPoolExecutor(4) as ex:
        yield ex


def fast(**overrides) -> SinkSettings:
    base = dict(
        backoff_base_seconds=0.0, backoff_max_seconds=0.0, max_attempts=50, max_in_flight_requests=4
    )
    base.update(overrides)
    return SinkSettings(**base)


def events(n_keys: int, per_key: int) -> list[tuple[str, bytes]]:
    """Interleaved events: key k's j-th event is b"k:j"."""
    return [(f"key-{k}", f"{k}:{j}".encode()) for j in range(per_key) for k in range(n_keys)]


def assert_delivered_in_order(stream, sent):
    """All sent records present; per key non-decreasing order; duplicates are exact repeats."""
    expected = collections.defaultdict(list)
    for key, data in sent:
        expected[key].append(data)
    got = collections.defaultdict(list)
    for key, data in stream:
        got[key].append(data)
    assert set(got) == set(expected)
    for key, datas in expected.items():
        order = {d: i for i, d in enumerate(datas)}
        positions = [order[d] for d in got[key]]
        assert positions == sorted(positions), f"order broken for {key}"
        assert sorted(set(positions)) == list(range(len(datas))), f"missing records of {key}"


def run(writer: KinesisWriter, records) -> list:
    """Adds every record and flushes; returns what was given up (dead letters checked
    against schemas/dead_letter.schema.json)."""
    dead = []
    for key, data in records:
        dead.extend(writer.add(key, data))
    dead.extend(writer.flush())
    for given_up in dead:
        validate_dead_letter(given_up.value)
    return dead


def test_happy_path_full_batches_and_metrics(executor):
    client, metrics = FakeKinesis(), CountingMetrics()
    writer = KinesisWriter(client, "s", fast(), executor, metrics)
    records = events(1000, 2)
    assert run(writer, records) == []
    assert_delivered_in_order(client.stream, records)
    assert max(client.batch_sizes) == 500
    assert metrics.counters["kinesis_records_sent"] == 2000
    assert metrics.counters["kinesis_requests"] == client.calls
    assert metrics.counters["kinesis_bytes_sent"] == sum(len(k) + len(d) for k, d in records)
    assert len(metrics.distributions["kinesis_request_latency_ms"]) == client.calls
    assert writer.buffered_records == 0


def test_at_most_one_record_per_key_per_request(executor):
    client = FakeKinesis()
    writer = KinesisWriter(client, "s", fast(), executor)
    run(writer, events(7, 30))
    for keys in client.keys_per_call:
        assert len(keys) == len(set(keys))


def test_in_flight_requests_are_bounded():
    client = FakeKinesis()
    # More threads than requests: only the writer can keep calls from overlapping.
    with ThreadPoolExecutor(16) as pool:
        executor = SubmitCounter(pool)
        writer = KinesisWriter(client, "s", fast(max_in_flight_requests=2), executor)
        records = events(5000, 1)
        # 10 full batches are ready while adding; with every answer held back, the
        # writer may have 2 requests out, no more.
        dead = add_while_held(writer, client, executor, records)
        held = client.max_concurrent
        client.release()
        assert held == 2  # the held calls overlapped up to the limit, not beyond
        assert executor.submitted == 2
        assert dead + writer.flush() == []
    assert client.gate_timeouts == 0
    assert client.max_concurrent == 2
    assert client.calls == 10
    assert_delivered_in_order(client.stream, records)


def test_buffer_is_bounded_while_adding(executor):
    client = FakeKinesis()
    client.gate = threading.Event()  # requests hang until released
    writer = KinesisWriter(client, "s", fast(max_buffered_records=1200), executor)
    releaser = threading.Timer(0.2, client.gate.set)
    releaser.start()
    peak = 0
    for key, data in events(3000, 1):
        writer.add(key, data)
        peak = max(peak, writer.buffered_records)
    writer.flush()
    releaser.join()
    assert peak < 1200
    assert len(client.stream) == 3000


def test_partial_failures_retry_only_failed_entries(executor):
    def script(call, n):
        return ("entries", {i: "InternalFailure" for i in range(0, n, 3)}) if call < 3 else None

    client, metrics = FakeKinesis(script), CountingMetrics()
    writer = KinesisWriter(client, "s", fast(), executor, metrics)
    records = events(1500, 1)
    assert run(writer, records) == []
    assert len(client.stream) == 1500  # no duplicates: only failed entries were resent
    assert metrics.counters["kinesis_retries"] == 3 * len(range(0, 500, 3))
    assert_delivered_in_order(client.stream, records)


def test_whole_request_failures_are_retried(executor):
    faults = [
        ("raise", client_error("InternalFailure", 500)),
        ("raise", EndpointConnectionError(endpoint_url="http://x")),
        ("raise", client_error("ProvisionedThroughputExceededException")),
    ]

    def script(call, n):
        return faults[call] if call < len(faults) else None

    client, metrics = FakeKinesis(script), CountingMetrics()
    writer = KinesisWriter(client, "s", fast(max_in_flight_requests=1), executor, metrics)
    records = events(300, 1)
    assert run(writer, records) == []
    assert_delivered_in_order(client.stream, records)
    assert metrics.counters["kinesis_throttled_records"] == 300
    assert writer.adaptive_rate is not None  # throttling engaged the AIMD limiter


def test_retries_exhausted_go_to_dead_letter_and_the_key_s_later_records_follow_it(executor):
    def script(call, n):
        return ("entries", {0: "ProvisionedThroughputExceededException"})

    client, metrics = FakeKinesis(script), CountingMetrics()
    writer = KinesisWriter(
        client, "s", fast(max_attempts=3, max_in_flight_requests=1), executor, metrics
    )
    dead = run(writer, [("a", b"a1"), ("a", b"a2"), ("b", b"b1"), ("a", b"a3")])
    # Every request's first entry is throttled for good: a1. a2 (queued behind it) and
    # a3 (added after it was given up) must not overtake it: dead-lettered unsent.
    assert [d.value["raw"] for d in dead] == ["a1", "a2", "a3"]
    assert [d.value["reason"] for d in dead] == [
        "retries_exhausted",
        "blocked_by_earlier_failure",
        "blocked_by_earlier_failure",
    ]
    assert dead[0].value["error"].startswith("ProvisionedThroughputExceededException")
    assert dead[0].value == {
        "stage": "kinesis_sink",
        "reason": "retries_exhausted",
        "error": dead[0].value["error"],
        "file": None,
        "raw": "a1",
        "partition_key": "a",
    }
    assert client.stream == [("b", b"b1")]
    assert metrics.counters["kinesis_dead_lettered"] == 3


def test_retry_time_budget_dead_letters(executor):
    now = [0.0]

    def script(call, n):
        now[0] += 10.0  # each attempt "takes" 10 s of the fake clock
        return ("raise", client_error("InternalFailure", 500))

    client = FakeKinesis(script)
    writer = KinesisWriter(
        client, "s", fast(max_retry_seconds=25.0), executor, clock=lambda: now[0]
    )
    dead = run(writer, [("a", b"x")])
    assert [d.value["reason"] for d in dead] == ["retries_exhausted"]
    assert client.calls == 3


def test_oversize_and_invalid_key_are_dead_lettered_without_sending(executor):
    client = FakeKinesis()
    writer = KinesisWriter(client, "s", fast(max_record_bytes=100), executor)
    dead = run(writer, [("k", b"x" * 99), ("k", b"x" * 100), ("", b"y"), ("z" * 257, b"y")])
    assert [d.value["reason"] for d in dead] == [
        "record_too_large",
        "invalid_partition_key",
        "invalid_partition_key",
    ]
    assert "101 bytes" in dead[0].value["error"]
    assert client.stream == [("k", b"x" * 99)]


def test_dead_letter_disabled_raises(executor):
    writer = KinesisWriter(
        FakeKinesis(), "my-stream", fast(max_record_bytes=10, dead_letter=False), executor
    )
    with pytest.raises(KinesisSinkError, match="my-stream.*record_too_large"):
        writer.add("k", b"x" * 20)


@pytest.mark.parametrize(
    "code",
    [
        "ResourceNotFoundException",
        "AccessDeniedException",
        "ValidationException",
        "KMSAccessDeniedException",
    ],
)
def test_fatal_errors_raise_at_once(executor, code):
    client = FakeKinesis(lambda call, n: ("raise", client_error(code)))
    writer = KinesisWriter(client, "orders", fast(), executor)
    writer.add("k", b"x")
    with pytest.raises(KinesisSinkError) as info:
        writer.flush()
    message = str(info.value)
    assert "'orders'" in message and code in message and "\n" not in message
    assert client.calls == 1
    with pytest.raises(KinesisSinkError):  # the writer stays failed
        writer.add("k", b"y")


def test_wrong_element_types_raise_type_error(executor):
    writer = KinesisWriter(FakeKinesis(), "s", fast(), executor)
    with pytest.raises(TypeError, match="partition_key: str, data: bytes"):
        writer.add("k", "not bytes")


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_request_records"):
        SinkSettings(max_request_records=501).validate()
    with pytest.raises(ValueError, match="max_records_per_second"):
        SinkSettings(max_records_per_second=0).validate()


# A fault for one call: ok, a whole-request error, a write whose answer is lost, or a set
# of failed entries.
_fault = st.one_of(
    st.none(),
    st.sampled_from(
        [
            ("raise", client_error("InternalFailure", 500)),
            ("raise", client_error("ProvisionedThroughputExceededException")),
            ("raise", EndpointConnectionError(endpoint_url="http://x")),
            ("raise_after_write", EndpointConnectionError(endpoint_url="http://x")),
        ]
    ),
    st.tuples(
        st.just("entries"),
        st.dictionaries(
            st.integers(0, 40),
            st.sampled_from(["InternalFailure", "ProvisionedThroughputExceededException"]),
            max_size=10,
        ),
    ),
)


@settings(max_examples=40, deadline=None)
# Always tried: 13 keys in batches of 3 fill 4 requests while adding; 2 may go out.
@example(spec=[(k, 0) for k in range(13)], faults=[], in_flight=2, batch=3)
@given(
    st.lists(st.tuples(st.integers(0, 12), st.integers(0, 3)), min_size=1, max_size=150),
    st.lists(_fault, max_size=25),
    st.integers(1, 4),
    st.integers(1, 60),
)
def test_property_per_key_order_and_no_loss_under_faults(spec, faults, in_flight, batch):
    """Whatever fails, every record arrives, per-key order holds, duplicates are repeats,
    and no more than ``in_flight`` requests are ever out at once."""

    def script(call, n):
        return faults[call] if call < len(faults) else None

    client = FakeKinesis(script)
    records = []
    counts = collections.Counter()
    for key, size in spec:
        counts[key] += 1
        records.append((f"k{key}", f"{key}:{counts[key]}:{'p' * size}".encode()))
    # More threads than the 13 keys (at most one request per key can be out while the
    # answers are held): the pool never hides a writer that exceeds its limit.
    with ThreadPoolExecutor(16) as pool:
        executor = SubmitCounter(pool)
        # Throttling engages the adaptive limiter, which paces by the real clock: a floor
        # of 1000 records/s keeps its waits short (a few held answers are a low sent rate).
        settings = fast(
            max_in_flight_requests=in_flight, max_request_records=batch, min_adaptive_rate=1000.0
        )
        writer = KinesisWriter(client, "s", settings, executor)
        # Answers held while adding: every full batch the writer lets out overlaps.
        dead = add_while_held(writer, client, executor, records)
        held = client.max_concurrent
        client.release()
        assert held <= in_flight
        dead.extend(writer.flush())
        assert dead == []
    assert client.gate_timeouts == 0
    assert client.max_concurrent <= in_flight
    assert_delivered_in_order(client.stream, records)
    for keys in client.keys_per_call:
        assert len(keys) == len(set(keys))


class _MaxJitter:
    """A random source whose full-jitter draw is always the ceiling."""

    def uniform(self, low, high):
        return high


BACKOFF = 0.2


def test_backoff_is_waited_for_by_blocking_not_polling(executor):
    faults = {0: ("raise", client_error("InternalFailure", 500))}
    client = FakeKinesis(lambda call, n: faults.get(call))
    clock = CountingClock()
    counter = SubmitCounter(executor, clock)
    writer = KinesisWriter(
        client,
        "s",
        fast(backoff_base_seconds=BACKOFF, backoff_max_seconds=BACKOFF),
        counter,
        clock=clock,
        rng=_MaxJitter(),
    )
    assert run(writer, [("k", b"x")]) == []
    assert client.calls == 2
    (reads_first, first), (reads_retry, retry) = counter.sent_at
    # By the writer's own clock, the retry went out no earlier than the backoff allowed...
    assert retry >= first + BACKOFF, (first, retry)
    # ...and meanwhile the writer read that clock a handful of times (the failure's
    # answer, then a turn or two of its loop around one blocking wait): it waited on its
    # queue for the backoff. A writer that polled would read it on every turn, thousands
    # of times in BACKOFF seconds.
    assert reads_retry - reads_first <= 10, reads_retry - reads_first


def test_request_latency_metric_is_the_call_duration_in_ms(executor, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def script(call, n):
        now[0] += 0.25  # the call "takes" 250 ms of the fake performance counter
        return None

    client, metrics = FakeKinesis(script), CountingMetrics()
    writer = KinesisWriter(client, "s", fast(max_in_flight_requests=1), executor, metrics)
    assert run(writer, [("a", b"1"), ("b", b"2")]) == []
    assert metrics.distributions["kinesis_request_latency_ms"] == [250]


def test_rate_cap_paces_requests_by_the_writer_clock(executor):
    rate = 5000.0
    client = FakeKinesis()
    clock = CountingClock()
    counter = SubmitCounter(executor, clock)
    settings = fast(max_records_per_second=rate, max_in_flight_requests=1)
    writer = KinesisWriter(client, "s", settings, counter, clock=clock)
    assert run(writer, events(4000, 1)) == []
    started = clock.first  # the writer's first reading: its token bucket starts full then
    # One request at a time, so the calls are in submit order.
    assert len(counter.sent_at) == len(client.batch_sizes) == client.calls
    capacity = rate * 0.5  # the bucket's burst: 2500 records
    sent = 0
    for (_, at), n in zip(counter.sent_at, client.batch_sizes, strict=True):
        sent += n
        # By the writer's own clock, never more than one burst plus the rate since then.
        assert sent <= capacity + rate * (at - started) + 1e-6, (sent, at - started)
    assert sent == 4000 > capacity  # past one burst: the cap had to hold requests back
