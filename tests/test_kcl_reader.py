"""tools.kcl: a stream read back through KCL 2.x's own deaggregation (AggregatorUtil).

Against a real kinesalite. Aggregates are built with aws_kinesis_agg (the KPL format).
The drop test is what shows the reader behaves as KCL, not as aws_kinesis_agg's Python
deaggregator: an aggregate holding one user record that hashes outside the shard it was
written to is dropped whole.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
from aws_kinesis_agg.aggregator import AggRecord
from aws_kinesis_agg.deaggregator import iter_deaggregate_records

from tools.kcl import KclToolsError, UserRecord, deaggregate_shards, read_stream_as_kcl
from tools.kinesalite import (
    KinesaliteServer,
    create_stream,
    delete_stream,
    list_shards,
    local_client,
    read_all_records,
)

pytestmark = pytest.mark.integration

_ids = itertools.count()


def hash_key(partition_key: str) -> int:
    return int.from_bytes(hashlib.md5(partition_key.encode("utf-8")).digest(), "big")


def keys_in(shard: dict[str, Any], count: int, prefix: str = "user") -> list[str]:
    """``count`` partition keys that hash into ``shard``'s range."""
    low = int(shard["HashKeyRange"]["StartingHashKey"])
    high = int(shard["HashKeyRange"]["EndingHashKey"])
    keys = (f"{prefix}-{i}" for i in itertools.count())
    return list(itertools.islice((k for k in keys if low <= hash_key(k) <= high), count))


def aggregate(keys: list[str]) -> tuple[str, bytes]:
    """A KPL aggregate of one user record per key (data ``data-<key>``): (pk, bytes)."""
    agg = AggRecord()
    for key in keys:
        assert agg.add_user_record(key, f"data-{key}".encode())
    partition_key, _, data = agg.get_contents()
    return partition_key, data


@pytest.fixture
def two_shards(kinesalite: KinesaliteServer, aws_local_env: None) -> Iterator[tuple[Any, str]]:
    """A fresh 2-shard stream: ``(client, stream_name)``; deleted afterwards."""
    client = local_client(kinesalite.endpoint_url)
    name = f"kcl-{os.getpid()}-{next(_ids)}"
    create_stream(client, name, shards=2)
    try:
        yield client, name
    finally:
        delete_stream(client, name)


def test_aggregate_inside_the_shard_comes_back_whole_and_in_order(two_shards):
    client, stream = two_shards
    shard_a, shard_b = list_shards(client, stream)
    keys = keys_in(shard_a, 5)
    partition_key, data = aggregate(keys)
    put = client.put_record(StreamName=stream, PartitionKey=partition_key, Data=data)
    assert put["ShardId"] == shard_a["ShardId"]

    per_shard = read_stream_as_kcl(client, stream)

    assert per_shard == {
        shard_a["ShardId"]: [
            UserRecord(
                shard_id=shard_a["ShardId"],
                sequence_number=put["SequenceNumber"],
                sub_sequence_number=index,
                partition_key=key,
                data=f"data-{key}".encode(),
                aggregated=True,
            )
            for index, key in enumerate(keys)
        ],
        shard_b["ShardId"]: [],
    }


def test_aggregate_with_one_user_record_outside_the_shard_is_dropped_whole(two_shards):
    client, stream = two_shards
    shard_a, shard_b = list_shards(client, stream)
    inside = keys_in(shard_a, 3)
    stray = keys_in(shard_b, 1, prefix="stray")
    # Written to shard A by its explicit hash key, though one user record belongs to B.
    _, mixed = aggregate([*inside[:2], *stray, inside[2]])
    dropped = client.put_record(
        StreamName=stream,
        PartitionKey=inside[0],
        ExplicitHashKey=shard_a["HashKeyRange"]["StartingHashKey"],
        Data=mixed,
    )
    partition_key, whole = aggregate(inside)
    kept = client.put_record(StreamName=stream, PartitionKey=partition_key, Data=whole)
    assert dropped["ShardId"] == kept["ShardId"] == shard_a["ShardId"]
    # The aggregate is in shard A, and a deaggregator that checks no range yields it all.
    raw = read_all_records(client, stream)
    assert [r["sequence_number"] for r in raw] == [
        dropped["SequenceNumber"],
        kept["SequenceNumber"],
    ]
    lenient = iter_deaggregate_records([_boto3_record(raw[0])], data_format="Boto3")
    assert [r["kinesis"]["partitionKey"] for r in lenient] == [*inside[:2], *stray, inside[2]]

    per_shard = read_stream_as_kcl(client, stream)

    # KCL: nothing of the first aggregate, not even the user records before the stray one.
    assert [
        (r.sequence_number, r.sub_sequence_number, r.partition_key)
        for r in per_shard[shard_a["ShardId"]]
    ] == [(kept["SequenceNumber"], index, key) for index, key in enumerate(inside)]
    assert per_shard[shard_b["ShardId"]] == []


def _boto3_record(record: dict[str, Any]) -> dict[str, Any]:
    """A GetRecords record from a ``read_all_records`` dict, for aws_kinesis_agg."""
    return {
        "Data": record["data"],
        "PartitionKey": record["partition_key"],
        "SequenceNumber": record["sequence_number"],
        "ApproximateArrivalTimestamp": datetime.datetime.now(datetime.UTC),
    }


def test_plain_record_comes_back_as_itself(two_shards):
    client, stream = two_shards
    data = b'{"event":"plain"}\twith a tab\nand a newline \xff'
    put = client.put_record(StreamName=stream, PartitionKey="plain-\u00e9", Data=data)

    per_shard = read_stream_as_kcl(client, stream)

    assert [r for records in per_shard.values() for r in records] == [
        UserRecord(
            shard_id=put["ShardId"],
            sequence_number=put["SequenceNumber"],
            sub_sequence_number=0,
            partition_key="plain-\u00e9",
            data=data,
            aggregated=False,
        )
    ]


def test_parent_shard_is_read_before_its_children(kinesalite, aws_local_env):
    client = local_client(kinesalite.endpoint_url)
    stream = f"kcl-{os.getpid()}-{next(_ids)}"
    create_stream(client, stream, shards=1)
    try:
        (parent,) = list_shards(client, stream)
        before = client.put_record(StreamName=stream, PartitionKey="k", Data=b"before")
        client.split_shard(
            StreamName=stream,
            ShardToSplit=parent["ShardId"],
            NewStartingHashKey=str(2**127),
        )
        create_stream(client, stream)  # waits until ACTIVE again
        after = client.put_record(StreamName=stream, PartitionKey="k", Data=b"after")

        per_shard = read_stream_as_kcl(client, stream)

        shards = list_shards(client, stream)
        children = sorted(s["ShardId"] for s in shards if s.get("ParentShardId"))
        assert list(per_shard) == [parent["ShardId"], *children]
        assert [r.data for r in per_shard[parent["ShardId"]]] == [b"before"]
        assert [r.data for records in per_shard.values() for r in records] == [
            b"before",
            b"after",
        ]
        assert per_shard[after["ShardId"]][0].sequence_number == after["SequenceNumber"]
        assert before["ShardId"] == parent["ShardId"] != after["ShardId"]
    finally:
        delete_stream(client, stream)


def test_a_failing_jvm_raises_with_its_stderr():
    # A well-formed aggregate whose user record points past the partition key table:
    # KCL's AggregatorUtil throws while deaggregating it.
    import aws_kinesis_agg
    from aws_kinesis_agg import messages_pb2

    message = messages_pb2.AggregatedRecord()
    message.records.add(partition_key_index=3, data=b"x")
    body = message.SerializeToString()
    data = aws_kinesis_agg.MAGIC + body + hashlib.md5(body).digest()
    shard = {
        "shard_id": "shardId-000000000000",
        "starting_hash_key": 0,
        "ending_hash_key": 2**128 - 1,
        "records": [{"SequenceNumber": "1", "PartitionKey": "p", "Data": data}],
    }

    with pytest.raises(KclToolsError, match=r"(?s)failed with exit 1.*AggregatorUtil"):
        deaggregate_shards([shard])
