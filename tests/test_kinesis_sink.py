"""Integration tests of WriteToKinesisStream: Beam DirectRunner -> real HTTP -> fault proxy
-> kinesalite. Every test reads every shard back and checks what a consumer would see.
"""

from __future__ import annotations

import base64
import collections
import datetime
import glob
import hashlib
import json
import time
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from aws_kinesis_agg.deaggregator import iter_deaggregate_records

from tests.support.dead_letter_schema import validate_dead_letters
from tools.kinesalite import list_shards, read_all_records
from transforms.kinesis.sink import WriteToKinesisStream

pytestmark = pytest.mark.integration

THROTTLE = "ProvisionedThroughputExceededException"
# Short backoffs keep the suite fast; the retry logic is the same as with the defaults.
FAST = {"backoff_base_seconds": 0.02, "backoff_max_seconds": 0.3, "region": "us-east-1"}


def partition_key(k: int) -> str:
    return hashlib.sha256(f"profile-{k}".encode()).hexdigest()


def payload(k: int, j: int, pad: int) -> bytes:
    return json.dumps({"k": k, "j": j, "pad": "x" * pad}, separators=(",", ":")).encode()


def generate(_: Any, n_keys: int, per_key: int, pad: int, extra: list) -> Any:
    """Key k's events j = 0..per_key-1, interleaved across keys, in one bundle and in order.

    ``extra`` elements ``(position, (pk, data))`` are inserted before event ``position``.
    """
    extra = sorted(extra, key=lambda e: e[0])
    i = 0
    for j in range(per_key):
        for k in range(n_keys):
            while extra and extra[0][0] == i:
                yield extra.pop(0)[1]
            yield partition_key(k), payload(k, j, pad)
            i += 1
    for _, element in extra:
        yield element


class SinkRun:
    def __init__(self, dead: list[dict], counters: dict[str, int], dists: dict[str, Any]):
        self.dead, self.counters, self.dists = dead, counters, dists


def run_sink(
    tmp_path,
    stream: str,
    endpoint: str,
    *,
    n_keys: int,
    per_key: int,
    pad: int = 100,
    extra: list | None = None,
    **sink_kwargs: Any,
) -> SinkRun:
    """Runs generate -> WriteToKinesisStream; dead letters are written to files, read back."""
    out = str(tmp_path / f"dead-{time.monotonic_ns()}")
    pipeline = beam.Pipeline()
    dead = (
        pipeline
        | "Start" >> beam.Impulse()
        | "Generate" >> beam.FlatMap(generate, n_keys, per_key, pad, extra or [])
        | "WriteToKinesis" >> WriteToKinesisStream(stream, endpoint_url=endpoint, **sink_kwargs)
    )
    _ = (
        dead
        | "ToJson" >> beam.Map(json.dumps)
        | "WriteDeadLetters" >> beam.io.WriteToText(out, num_shards=1)
    )
    result = pipeline.run()
    result.wait_until_finish()
    query = result.metrics().query(MetricsFilter().with_namespace("segment_events"))
    counters: dict[str, int] = collections.Counter()
    for c in query["counters"]:
        counters[c.key.metric.name] += c.committed
    dists = {d.key.metric.name: d.committed for d in query["distributions"]}
    dead_letters = []
    for path in glob.glob(out + "*"):
        with open(path, encoding="utf-8") as fh:
            dead_letters.extend(validate_dead_letters(line for line in fh if line.strip()))
    return SinkRun(dead_letters, counters, dists)


def expected_events(n_keys: int, per_key: int, pad: int = 100) -> dict[str, list[bytes]]:
    return {partition_key(k): [payload(k, j, pad) for j in range(per_key)] for k in range(n_keys)}


def shard_of(shards: list[dict], hash_value: int) -> str:
    for s in shards:
        r = s["HashKeyRange"]
        if int(r["StartingHashKey"]) <= hash_value <= int(r["EndingHashKey"]):
            return s["ShardId"]
    raise AssertionError("hash outside every shard")


def md5_int(key: str) -> int:
    return int.from_bytes(hashlib.md5(key.encode()).digest(), "big")


def user_records(client, stream: str) -> list[dict]:
    """Every record of every shard, deaggregated, in per-shard sequence order."""
    out = []
    for rec in read_all_records(client, stream):
        boto = {
            "Data": rec["data"],
            "PartitionKey": rec["partition_key"],
            "SequenceNumber": rec["sequence_number"],
            "ApproximateArrivalTimestamp": datetime.datetime.now(datetime.UTC),
        }
        for user in iter_deaggregate_records([boto], data_format="Boto3"):
            k = user["kinesis"]
            aggregated = bool(k.get("aggregated"))
            data = base64.b64decode(k["data"]) if aggregated else k["data"]
            out.append(
                {
                    "shard_id": rec["shard_id"],
                    "partition_key": k["partitionKey"],
                    "data": data,
                    "aggregated": aggregated,
                }
            )
    return out


def check_stream(
    client, stream: str, expected: dict[str, list[bytes]], allow_duplicates: bool = False
) -> list[dict]:
    """What a consumer sees: every expected event, each key on its own shard, per-key order
    kept; duplicates (if allowed) only as repeats of the same payload."""
    shards = list_shards(client, stream)
    records = user_records(client, stream)
    assert records, "nothing was written"
    got: dict[str, list[bytes]] = collections.defaultdict(list)
    for r in records:
        assert r["shard_id"] == shard_of(shards, md5_int(r["partition_key"])), "wrong shard"
        got[r["partition_key"]].append(r["data"])
    assert set(got) == set(expected), "keys missing or unexpected"
    for key, datas in expected.items():
        index = {d: i for i, d in enumerate(datas)}
        positions = [index[d] for d in got[key]]  # KeyError: a payload never sent
        assert positions == sorted(positions), "per-key order broken"
        assert sorted(set(positions)) == list(range(len(datas))), "events missing"
        if not allow_duplicates:
            assert len(positions) == len(datas), "unexpected duplicates"
    return records


def shard_ranges(client, stream: str, indexes: list[int]) -> list[tuple[int, int]]:
    shards = list_shards(client, stream)
    return [
        (
            int(shards[i]["HashKeyRange"]["StartingHashKey"]),
            int(shards[i]["HashKeyRange"]["EndingHashKey"]),
        )
        for i in indexes
    ]


# ----------------------------------------------------------------------------- happy path


def test_delivers_everything_in_order_with_metrics(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    run = run_sink(tmp_path, stream, fault_proxy.endpoint_url, n_keys=1200, per_key=2, **FAST)
    check_stream(client, stream, expected_events(1200, 2))
    stats = fault_proxy.snapshot()
    assert run.dead == []
    assert run.counters["kinesis_records_sent"] == 2400
    assert run.counters["kinesis_requests"] == stats.put_records_requests
    assert run.counters["kinesis_retries"] == 0
    assert run.counters["kinesis_bytes_sent"] == sum(
        len(d) + 64 for ds in expected_events(1200, 2).values() for d in ds
    )
    assert run.dists["kinesis_batch_records"].max == 500
    assert run.dists["kinesis_request_latency_ms"].count == stats.put_records_requests
    # One record per key per request, full batches while the buffer fills.
    assert stats.put_records_entries == 2400
    assert max(stats.entries_per_request) == 500


# ----------------------------------------------------------------------------- faults


def test_per_shard_throttling_retries_only_throttled_entries(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    fault_proxy.throttle_shards(shard_ranges(client, stream, [0, 2]), requests=3)
    run = run_sink(tmp_path, stream, fault_proxy.endpoint_url, n_keys=1000, per_key=2, **FAST)
    check_stream(client, stream, expected_events(1000, 2))
    stats = fault_proxy.snapshot()
    throttled = stats.injected[THROTTLE]
    assert throttled > 0
    assert run.counters["kinesis_throttled_records"] == throttled
    assert run.counters["kinesis_retries"] == throttled
    # No amplification: besides the 2000 records, only the throttled entries were resent.
    assert stats.put_records_entries == 2000 + throttled
    # Bounded requests: the AIMD limiter shrinks batches while throttled, no more.
    assert stats.put_records_requests <= 20
    assert run.dead == []


def test_partial_internal_failures(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    fault_proxy.fail_entries("InternalFailure", every=7, requests=3)
    run = run_sink(tmp_path, stream, fault_proxy.endpoint_url, n_keys=900, per_key=2, **FAST)
    check_stream(client, stream, expected_events(900, 2))
    failed = fault_proxy.snapshot().injected["InternalFailure"]
    assert failed > 50
    assert run.counters["kinesis_retries"] == failed
    assert fault_proxy.snapshot().put_records_entries == 1800 + failed


def test_many_events_per_key_keep_order_under_partial_failures(
    tmp_path, kinesis_stream, fault_proxy
):
    client, stream = kinesis_stream
    fault_proxy.fail_entries("InternalFailure", every=5, requests=40)
    run = run_sink(tmp_path, stream, fault_proxy.endpoint_url, n_keys=20, per_key=40, **FAST)
    check_stream(client, stream, expected_events(20, 40))
    assert run.counters["kinesis_retries"] > 40
    # Head-of-line per key: never two records of one key in a request.
    assert max(fault_proxy.snapshot().entries_per_request) <= 20


@pytest.mark.parametrize("status", [500, 503])
def test_http_5xx_whole_request_retried(tmp_path, kinesis_stream, fault_proxy, status):
    client, stream = kinesis_stream
    fault_proxy.http_error(status, requests=3)
    run = run_sink(tmp_path, stream, fault_proxy.endpoint_url, n_keys=600, per_key=2, **FAST)
    check_stream(client, stream, expected_events(600, 2))
    assert fault_proxy.snapshot().injected[f"http_{status}"] == 3
    assert run.counters["kinesis_retries"] > 0
    assert run.dead == []


def test_connection_resets_before_forwarding(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    fault_proxy.reset(requests=3)
    run = run_sink(tmp_path, stream, fault_proxy.endpoint_url, n_keys=600, per_key=3, **FAST)
    check_stream(client, stream, expected_events(600, 3))  # no duplicates: nothing written
    assert fault_proxy.snapshot().injected["reset"] == 3
    assert run.counters["kinesis_retries"] > 0


def test_lost_answers_give_in_order_duplicates_only(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    fault_proxy.reset(requests=2, after_forward=True)  # written, but the answer is lost
    run_sink(tmp_path, stream, fault_proxy.endpoint_url, n_keys=400, per_key=3, **FAST)
    records = check_stream(client, stream, expected_events(400, 3), allow_duplicates=True)
    assert fault_proxy.snapshot().injected["reset_after_forward"] == 2
    assert len(records) > 1200  # the resent records really are in the stream twice


def test_slow_answers_and_read_timeouts(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    fault_proxy.latency(1.5, requests=2)
    run = run_sink(
        tmp_path, stream, fault_proxy.endpoint_url, n_keys=300, per_key=3, read_timeout=0.5, **FAST
    )
    check_stream(client, stream, expected_events(300, 3), allow_duplicates=True)
    assert run.counters["kinesis_retries"] >= 2 * 300 // 3  # both slow requests were retried
    assert run.dead == []


def test_added_latency_without_timeouts(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    fault_proxy.latency(0.2, requests=4)
    run = run_sink(tmp_path, stream, fault_proxy.endpoint_url, n_keys=1500, per_key=1, **FAST)
    check_stream(client, stream, expected_events(1500, 1))
    stats = fault_proxy.snapshot()
    # Really late answers: the first 4 requests (or all, if fewer) were held 0.2 s.
    assert stats.injected["latency"] == min(4, stats.put_records_requests) > 0
    assert run.counters["kinesis_retries"] == 0
    # That the latency metric is each call's duration in ms: test_kinesis_writer.py, with a
    # fake performance counter.
    assert run.dists["kinesis_request_latency_ms"].count == stats.put_records_requests


def test_endpoint_down_for_some_requests_then_back(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    fault_proxy.down(requests=5)
    run = run_sink(tmp_path, stream, fault_proxy.endpoint_url, n_keys=500, per_key=2, **FAST)
    check_stream(client, stream, expected_events(500, 2))
    assert fault_proxy.snapshot().injected["down"] == 5
    assert run.dead == []


def test_endpoint_down_for_a_second_then_back(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    fault_proxy.down(seconds=1.0)
    run = run_sink(
        tmp_path, stream, fault_proxy.endpoint_url, n_keys=200, per_key=2, max_attempts=40, **FAST
    )
    check_stream(client, stream, expected_events(200, 2))
    assert fault_proxy.snapshot().injected["down"] >= 1
    assert run.dead == []


# ----------------------------------------------------------------------------- dead letters


def test_oversize_record_is_dead_lettered_and_the_rest_delivered(
    tmp_path, kinesis_stream, fault_proxy
):
    client, stream = kinesis_stream
    limit = 1_048_576
    at_limit = (partition_key(10_000), b"a" * (limit - 64))  # exactly 1 MiB: delivered
    too_big = (partition_key(10_001), b"b" * (limit - 64 + 1))  # one byte over: dead letter
    run = run_sink(
        tmp_path,
        stream,
        fault_proxy.endpoint_url,
        n_keys=300,
        per_key=2,
        extra=[(5, too_big), (7, at_limit)],
        **FAST,
    )
    expected = expected_events(300, 2)
    expected[at_limit[0]] = [at_limit[1]]
    check_stream(client, stream, expected)
    assert len(run.dead) == 1
    dead = run.dead[0]
    assert dead["stage"] == "kinesis_sink"
    assert dead["reason"] == "record_too_large"
    assert dead["partition_key"] == too_big[0]
    assert dead["file"] is None
    assert dead["raw"] == too_big[1].decode()
    assert str(limit + 1) in dead["error"]
    assert run.counters["kinesis_dead_lettered"] == 1


def test_retries_exhausted_go_to_dead_letter(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    blocked = shard_ranges(client, stream, [1])
    fault_proxy.throttle_shards(blocked, requests=None)  # shard 1 throttles for good
    # A shard that never accepts anything is artificial: without the adaptive limiter the
    # test shows the retry bound alone (the limiter would only slow it down).
    run = run_sink(
        tmp_path,
        stream,
        fault_proxy.endpoint_url,
        n_keys=120,
        per_key=2,
        max_attempts=3,
        adaptive_rate_limit=False,
        **FAST,
    )
    lo, hi = blocked[0]
    expected = expected_events(120, 2)
    on_blocked = {k for k in expected if lo <= md5_int(k) <= hi}
    assert on_blocked
    check_stream(client, stream, {k: v for k, v in expected.items() if k not in on_blocked})
    assert sorted((d["partition_key"], d["raw"]) for d in run.dead) == sorted(
        (k, d.decode()) for k in on_blocked for d in expected[k]
    )
    # Per profile: its first event exhausted its retries, and the second, which must not
    # overtake it, is dead-lettered behind it without being sent.
    for key in on_blocked:
        reasons = [d["reason"] for d in run.dead if d["partition_key"] == key]
        assert reasons == ["retries_exhausted", "blocked_by_earlier_failure"]
    first = [d for d in run.dead if d["reason"] == "retries_exhausted"]
    assert all(d["error"].startswith(THROTTLE) for d in first)
    # Exactly max_attempts sends per given-up record: bounded, no storm.
    assert fault_proxy.snapshot().injected[THROTTLE] == 3 * len(on_blocked)


def test_dead_letter_disabled_fails_the_job(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    too_big = (partition_key(1), b"x" * 2_000)
    with pytest.raises(Exception, match=f"{stream}.*record_too_large"):
        run_sink(
            tmp_path,
            stream,
            fault_proxy.endpoint_url,
            n_keys=10,
            per_key=1,
            extra=[(3, too_big)],
            dead_letter=False,
            max_record_bytes=1_000,
            **FAST,
        )


# ----------------------------------------------------------------------------- fatal errors


@pytest.mark.parametrize("aggregate", [False, True])
def test_missing_stream_fails_fast_naming_it(tmp_path, kinesis_stream, fault_proxy, aggregate):
    with pytest.raises(Exception, match="no-such-stream.*ResourceNotFoundException"):
        run_sink(
            tmp_path,
            "no-such-stream",
            fault_proxy.endpoint_url,
            n_keys=50,
            per_key=1,
            aggregate=aggregate,
            **FAST,
        )
    requests = fault_proxy.snapshot().requests
    # Fast because not retried: the first answer fails the run. One PutRecords, or
    # (aggregating) one ListShards and no PutRecords.
    expected = {"ListShards": 1} if aggregate else {"PutRecords": 1}
    assert dict(requests) == expected


def test_access_denied_fails_at_once(tmp_path, kinesis_stream, fault_proxy):
    _, stream = kinesis_stream
    fault_proxy.http_error(400, requests=100, code="AccessDeniedException")
    with pytest.raises(Exception, match=f"{stream}.*AccessDeniedException"):
        run_sink(tmp_path, stream, fault_proxy.endpoint_url, n_keys=50, per_key=1, **FAST)
    assert fault_proxy.snapshot().put_records_requests == 1


# ----------------------------------------------------------------------------- rate and memory


def test_max_records_per_second_caps_the_send_rate(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    rate = 600.0
    burst = int(rate * 0.5)  # the bucket's burst (0.5 s of the rate): 300, under 500
    run_sink(
        tmp_path,
        stream,
        fault_proxy.endpoint_url,
        n_keys=900,
        per_key=1,
        max_records_per_second=rate,
        **FAST,
    )
    check_stream(client, stream, expected_events(900, 1))
    stats = fault_proxy.snapshot()
    # The cap reached the writer: no request carries more than one burst, where the 900
    # records, all ready at once, would otherwise go as one request of 500 and one of 400.
    # That the writer then waits for the bucket (the pacing itself) is tested against its
    # injected clock in test_kinesis_writer.py; the rate seen here is printed, not asserted.
    assert max(stats.entries_per_request) <= burst, stats.entries_per_request
    assert stats.put_records_requests >= 900 // burst
    span = stats.request_times[-1] - stats.request_times[0]
    paced = stats.put_records_entries - stats.entries_per_request[0]
    print(f"rate cap {rate:.0f}/s: {paced} records after the first request in {span:.2f} s")


def test_small_buffer_limit_still_delivers_everything(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    limit = 50
    run = run_sink(
        tmp_path,
        stream,
        fault_proxy.endpoint_url,
        n_keys=150,
        per_key=3,
        max_buffered_records=limit,
        **FAST,
    )
    check_stream(client, stream, expected_events(150, 3))
    stats = fault_proxy.snapshot()
    # A request carries only unacknowledged records, which the limit bounds: at most 50.
    # Without the limit nothing fills a 500-record batch while adding (150 keys, one
    # record per key per request), so finish_bundle would send 3 requests of 150.
    assert max(stats.entries_per_request) <= limit, stats.entries_per_request
    assert run.counters["kinesis_requests"] == stats.put_records_requests >= 450 // limit


# ----------------------------------------------------------------------------- aggregation


def test_aggregation_round_trip_is_shard_aware(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    run = run_sink(
        tmp_path, stream, fault_proxy.endpoint_url, n_keys=1500, per_key=2, aggregate=True, **FAST
    )
    records = check_stream(client, stream, expected_events(1500, 2))
    assert sum(r["aggregated"] for r in records) > 2500  # really aggregated
    assert run.counters["kinesis_user_records_sent"] == 3000
    assert run.counters["kinesis_records_sent"] < 200
    assert run.counters["kinesis_records_sent"] == len(read_all_records(client, stream))


def test_aggregation_under_per_shard_throttling(tmp_path, kinesis_stream, fault_proxy):
    client, stream = kinesis_stream
    fault_proxy.throttle_shards(shard_ranges(client, stream, [3]), requests=3)
    run = run_sink(
        tmp_path, stream, fault_proxy.endpoint_url, n_keys=800, per_key=3, aggregate=True, **FAST
    )
    check_stream(client, stream, expected_events(800, 3))
    assert fault_proxy.snapshot().injected[THROTTLE] > 0
    assert run.counters["kinesis_throttled_records"] > 0
    assert run.dead == []
