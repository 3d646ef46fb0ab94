"""Unit tests of the PutRecords engine (transforms/kinesis/writer.py) against a fake client.

The fake is an in-memory stream with scripted faults; it stands in for Kinesis only here.
The same behaviours are tested over real HTTP against kinesalite in test_kinesis_sink.py.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.kinesis.settings import (
    KinesisSinkError,
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


class FakeKinesis:
    """In-memory PutRecords. ``script(call_no, n_records)`` returns the call's fault:
    None (ok), ("raise", exc), ("raise_after_write", exc) or ("entries", {idx: code})."""

    def __init__(self, script=None):
        self.script = script or (lambda call, n: None)
        self.lock = threading.Lock()
        self.stream: list[tuple[str, bytes]] = []
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.keys_per_call: list[list[str]] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self.gate: threading.Event | None = None

    def put_records(self, StreamName, Records):  # noqa: N803 - boto3's parameter names
        with self.lock:
            call = self.calls
            self.calls += 1
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
            self.batch_sizes.append(len(Records))
            self.keys_per_call.append([r["PartitionKey"] for r in Records])
        try:
            if self.gate is not None:
                self.gate.wait(5)
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
    dead = []
    for key, data in records:
        dead.extend(writer.add(key, data))
    dead.extend(writer.flush())
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


def test_in_flight_requests_are_bounded(executor):
    client = FakeKinesis()
    writer = KinesisWriter(client, "s", fast(max_in_flight_requests=2), executor)
    run(writer, events(5000, 1))
    assert client.max_concurrent <= 2
    assert client.calls == 10


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
@given(
    st.lists(st.tuples(st.integers(0, 12), st.integers(0, 3)), min_size=1, max_size=150),
    st.lists(_fault, max_size=25),
    st.integers(1, 4),
    st.integers(1, 60),
)
def test_property_per_key_order_and_no_loss_under_faults(spec, faults, in_flight, batch):
    """Whatever fails, every record arrives, per-key order holds, duplicates are repeats."""

    def script(call, n):
        return faults[call] if call < len(faults) else None

    client = FakeKinesis(script)
    records = []
    counts = collections.Counter()
    for key, size in spec:
        counts[key] += 1
        records.append((f"k{key}", f"{key}:{counts[key]}:{'p' * size}".encode()))
    with ThreadPoolExecutor(in_flight) as ex:
        writer = KinesisWriter(
            client, "s", fast(max_in_flight_requests=in_flight, max_request_records=batch), ex
        )
        assert run(writer, records) == []
    assert_delivered_in_order(client.stream, records)
    for keys in client.keys_per_call:
        assert len(keys) == len(set(keys))


class _MaxJitter:
    """A random source whose full-jitter draw is always the ceiling."""

    def uniform(self, low, high):
        return high


def test_backoff_waits_without_burning_cpu(executor):
    faults = {0: ("raise", client_error("InternalFailure", 500))}
    client = FakeKinesis(lambda call, n: faults.get(call))
    writer = KinesisWriter(
        client,
        "s",
        fast(backoff_base_seconds=0.4, backoff_max_seconds=0.4),
        executor,
        rng=_MaxJitter(),
    )
    cpu = time.thread_time()
    started = time.monotonic()
    assert run(writer, [("k", b"x")]) == []
    assert time.monotonic() - started >= 0.4  # the backoff was honoured...
    assert time.thread_time() - cpu < 0.2  # ...by waiting, not by spinning
    assert client.calls == 2
