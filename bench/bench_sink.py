"""Benchmark: WriteToKinesisStream on the DirectRunner vs a tuned raw boto3 writer.

Both send the same events to the same local kinesalite (started here), in the same run,
each to a fresh stream with the same shard count, in alternating rounds; the median of the
rounds is reported. Times are end to end: for the pipeline, from ``run()`` to the end of
``wait_until_finish()`` (pipeline start-up and event generation included); for the raw
writer, event generation plus sending.

    python bench/bench_sink.py [--events 60000] [--rounds 3] [--threads 8] [--aggregate]

Goal: ratio (ours / raw) >= 0.9 and >= 450 records per request.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import apache_beam as beam  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from tools.kinesalite import (  # noqa: E402
    create_stream,
    delete_stream,
    local_client,
    read_all_records,
    start_kinesalite,
)
from transforms.kinesis.client import make_kinesis_client  # noqa: E402
from transforms.kinesis.sink import WriteToKinesisStream  # noqa: E402

REGION = "us-east-1"


def generate_events(_: Any, n: int) -> Any:
    """``n`` events like the pipeline's: sha256 partition key, ~227 bytes with the key."""
    for i in range(n):
        pk = hashlib.sha256(f"email:user{i}@example.com".encode()).hexdigest()
        event = {
            "segmentMembership": {
                "ups": {
                    "7841ba61-23c1-4bb3-a495-00d695fe1e93": {
                        "lastQualificationTime": "2024-01-31T00:00:00Z",
                        "status": "realized",
                    }
                }
            },
            "identityMap": {"ecid": [{"id": f"{i:038d}"}]},
        }
        yield pk, json.dumps(event, separators=(",", ":")).encode()


def run_ours(
    endpoint: str, stream: str, n: int, aggregate: bool, in_flight: int
) -> dict[str, float]:
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    _ = (
        pipeline
        | "Start" >> beam.Impulse()
        | "Generate" >> beam.FlatMap(generate_events, n)
        | "WriteToKinesis"
        >> WriteToKinesisStream(
            stream,
            region=REGION,
            endpoint_url=endpoint,
            aggregate=aggregate,
            max_in_flight_requests=in_flight,
        )
    )
    started = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    query = result.metrics().query(MetricsFilter().with_namespace("segment_events"))
    counters = {c.key.metric.name: c.committed for c in query["counters"]}
    batch = next(
        d.committed for d in query["distributions"] if d.key.metric.name == "kinesis_batch_records"
    )
    user = counters.get("kinesis_user_records_sent", counters["kinesis_records_sent"])
    if user != n or counters.get("kinesis_dead_lettered", 0):
        raise SystemExit(f"ours: sent {user} of {n} records")
    return {
        "seconds": seconds,
        "user_records": user,
        "kinesis_records": counters["kinesis_records_sent"],
        "requests": counters["kinesis_requests"],
        "records_per_request": batch.mean,
        "user_records_per_request": user / counters["kinesis_requests"],
    }


def run_raw(endpoint: str, stream: str, n: int, threads: int) -> dict[str, float]:
    """A tuned raw writer: pre-cut 500-record batches on a thread pool, same client config,
    failed entries retried (none are expected from kinesalite)."""
    client = make_kinesis_client(
        region=REGION, endpoint_url=endpoint, max_pool_connections=threads + 2
    )
    requests = 0

    def put(batch: list[dict[str, Any]]) -> int:
        sent = 0
        while batch:
            resp = client.put_records(StreamName=stream, Records=batch)
            sent += 1
            if not resp["FailedRecordCount"]:
                break
            batch = [r for r, res in zip(batch, resp["Records"], strict=True) if "ErrorCode" in res]
        return sent

    started = time.perf_counter()
    records = [{"PartitionKey": pk, "Data": data} for pk, data in generate_events(None, n)]
    batches = [records[i : i + 500] for i in range(0, n, 500)]
    with ThreadPoolExecutor(threads) as pool:
        requests = sum(pool.map(put, batches))
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "user_records": n,
        "kinesis_records": n,
        "requests": requests,
        "records_per_request": n / requests,
        "user_records_per_request": n / requests,
    }


def count_user_records(client: Any, stream: str) -> int:
    from aws_kinesis_agg.deaggregator import iter_deaggregate_records

    total = 0
    for rec in read_all_records(client, stream):
        boto = {
            "Data": rec["data"],
            "PartitionKey": rec["partition_key"],
            "SequenceNumber": rec["sequence_number"],
            "ApproximateArrivalTimestamp": 0,
        }
        total += sum(1 for _ in iter_deaggregate_records([boto], data_format="Boto3"))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8, help="raw writer threads")
    parser.add_argument("--in-flight", type=int, default=8, help="our max_in_flight_requests")
    parser.add_argument("--aggregate", action="store_true")
    parser.add_argument("--no-verify", action="store_true", help="skip reading streams back")
    args = parser.parse_args(argv)
    if args.events < 50_000:
        print("note: fewer than 50k events", file=sys.stderr)

    # Dummy credentials for the local server only.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench-local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-local")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

    ours: list[dict[str, float]] = []
    raw: list[dict[str, float]] = []
    with start_kinesalite() as server:
        client = local_client(server.endpoint_url)
        # Warm-up (imports, first pipeline, connection set-up), not measured.
        create_stream(client, "warmup", args.shards)
        run_ours(server.endpoint_url, "warmup", 2_000, args.aggregate, args.in_flight)
        run_raw(server.endpoint_url, "warmup", 2_000, args.threads)
        delete_stream(client, "warmup")
        for r in range(args.rounds):
            for name, runs in (("raw", raw), ("ours", ours)):
                stream = f"bench-{name}-{r}"
                create_stream(client, stream, args.shards)
                if name == "ours":
                    res = run_ours(
                        server.endpoint_url, stream, args.events, args.aggregate, args.in_flight
                    )
                else:
                    res = run_raw(server.endpoint_url, stream, args.events, args.threads)
                if not args.no_verify:
                    got = count_user_records(client, stream)
                    if got != args.events:
                        raise SystemExit(f"{name}: stream holds {got} of {args.events}")
                delete_stream(client, stream)
                runs.append(res)
                print(
                    f"round {r} {name:4s}: {res['user_records'] / res['seconds']:9.0f} "
                    f"user records/s in {res['seconds']:.2f}s, {res['requests']} requests",
                    flush=True,
                )

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    ours_rate = statistics.median(r["user_records"] / r["seconds"] for r in ours)
    raw_rate = statistics.median(r["user_records"] / r["seconds"] for r in raw)
    print()
    print(
        f"events: {args.events}, shards: {args.shards}, rounds: {args.rounds}, "
        f"aggregate: {args.aggregate}"
    )
    print(
        f"raw boto3 ({args.threads} threads): {raw_rate:9.0f} records/s, "
        f"{median(raw, 'records_per_request'):.1f} records/request"
    )
    if args.aggregate:
        ours_kinesis = statistics.median(r["kinesis_records"] / r["seconds"] for r in ours)
        print(
            f"WriteToKinesisStream:        {ours_rate:9.0f} user records/s "
            f"({ours_kinesis:.0f} aggregated Kinesis records/s), "
            f"{median(ours, 'records_per_request'):.1f} Kinesis records/request, "
            f"{median(ours, 'user_records_per_request'):.0f} user records/request"
        )
    else:
        print(
            f"WriteToKinesisStream:        {ours_rate:9.0f} records/s, "
            f"{median(ours, 'records_per_request'):.1f} records/request"
        )
    print(f"ratio ours/raw: {ours_rate / raw_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
