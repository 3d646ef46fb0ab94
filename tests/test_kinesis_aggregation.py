"""Unit tests of shard-aware KPL aggregation (transforms/kinesis/aggregation.py)."""

from __future__ import annotations

import base64
import datetime
import hashlib

from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.kinesis.aggregation import (
    ShardMap,
    aggregate_capacity,
    build_aggregated_entries,
    hash_key,
)
from transforms.kinesis.batching import PendingRecord, record_size

MAX_HASH = 2**128 - 1


def even_shards(n: int) -> list[dict]:
    """ListShards-like shards splitting the hash space evenly, as CreateStream does."""
    step = (MAX_HASH + 1) // n
    shards = []
    for i in range(n):
        end = MAX_HASH if i == n - 1 else (i + 1) * step - 1
        shards.append(
            {
                "ShardId": f"shardId-{i:012d}",
                "HashKeyRange": {"StartingHashKey": str(i * step), "EndingHashKey": str(end)},
                "SequenceNumberRange": {"StartingSequenceNumber": "1"},
            }
        )
    return shards


def pk(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def make(i: int, payload_bytes: int = 100) -> PendingRecord:
    key = pk(i)
    data = (f'{{"i":{i},"pad":"' + "x" * payload_bytes + '"}').encode()
    return PendingRecord(key, data, record_size(key, data))


def deaggregate(entry: dict) -> list[tuple[str, bytes]]:
    """User records of one PutRecords entry, as a consumer would unpack them."""
    boto_record = {
        "Data": entry["Data"],
        "PartitionKey": entry["PartitionKey"],
        "SequenceNumber": "1",
        "ApproximateArrivalTimestamp": datetime.datetime.now(datetime.UTC),
    }
    out = []
    for user in iter_deaggregate_records([boto_record], data_format="Boto3"):
        k = user["kinesis"]
        data = base64.b64decode(k["data"]) if k.get("aggregated") else k["data"]
        out.append((k["partitionKey"], data))
    return out


def test_hash_key_is_md5_big_endian():
    assert hash_key("a") == int(hashlib.md5(b"a").hexdigest(), 16)


def test_shard_map_ignores_closed_shards_and_finds_ranges():
    shards = even_shards(4)
    closed = dict(
        shards[0],
        ShardId="shardId-closed",
        SequenceNumberRange={"StartingSequenceNumber": "1", "EndingSequenceNumber": "2"},
    )
    smap = ShardMap.from_shards([closed, *shards])
    assert len(smap) == 4
    assert smap.shard_for_hash(0) == "shardId-000000000000"
    assert smap.shard_for_hash(MAX_HASH) == "shardId-000000000003"
    assert smap.shard_for_hash((MAX_HASH + 1) // 2) == "shardId-000000000002"


def test_shard_map_gap_gives_none():
    smap = ShardMap([(0, 10, "a"), (20, 30, "b")])
    assert smap.shard_for_hash(15) is None
    assert smap.shard_for_hash(31) is None


def test_aggregates_never_mix_shards_and_round_trip():
    smap = ShardMap.from_shards(even_shards(4))
    records = [make(i) for i in range(2000)]
    entries, leftovers = build_aggregated_entries(
        records, smap, aggregate_bytes=51_200, max_entries=500, max_request_bytes=5 * 2**20
    )
    assert leftovers == []
    assert len(entries) < 100  # really aggregated: ~2000 records in a few dozen entries
    seen = []
    for entry, members, size in entries:
        shard = smap.shard_for_hash(hash_key(members[0].partition_key))
        assert {smap.shard_for_key(m.partition_key) for m in members} == {shard}
        if len(members) > 1:
            assert smap.shard_for_hash(int(entry["ExplicitHashKey"])) == shard
        assert size == len(entry["Data"]) + len(entry["PartitionKey"])
        assert size <= 51_200 + 64
        assert deaggregate(entry) == [(m.partition_key, m.data) for m in members]
        seen.extend(members)
    assert sorted(id(r) for r in seen) == sorted(id(r) for r in records)


def test_single_record_group_is_sent_unaggregated():
    smap = ShardMap.from_shards(even_shards(1))
    r = make(1)
    entries, _ = build_aggregated_entries(
        [r], smap, aggregate_bytes=51_200, max_entries=500, max_request_bytes=5 * 2**20
    )
    assert entries == [({"Data": r.data, "PartitionKey": r.partition_key}, [r], r.size)]


def test_record_too_big_to_aggregate_goes_alone_in_order():
    smap = ShardMap.from_shards(even_shards(1))
    small1, big, small2 = make(1), make(2, payload_bytes=60_000), make(3)
    entries, _ = build_aggregated_entries(
        [small1, big, small2],
        smap,
        aggregate_bytes=51_200,
        max_entries=500,
        max_request_bytes=5 * 2**20,
    )
    assert [e[1] for e in entries] == [[small1], [big], [small2]]
    assert "ExplicitHashKey" not in entries[1][0]


def test_request_limits_leave_leftovers_in_input_order():
    smap = ShardMap.from_shards(even_shards(8))
    records = [make(i) for i in range(400)]
    entries, leftovers = build_aggregated_entries(
        records, smap, aggregate_bytes=2_000, max_entries=5, max_request_bytes=5 * 2**20
    )
    assert len(entries) == 5
    sent = {id(m) for e in entries for m in e[1]}
    assert [r for r in records if id(r) not in sent] == leftovers


def test_per_shard_bytes_per_request_are_capped():
    smap = ShardMap.from_shards(even_shards(2))
    records = [make(i, payload_bytes=900) for i in range(400)]  # ~1 KB each, ~200 per shard
    entries, leftovers = build_aggregated_entries(
        records,
        smap,
        aggregate_bytes=20_000,
        max_entries=500,
        max_request_bytes=5 * 2**20,
        max_shard_bytes=50_000,
    )
    per_shard = {}
    for _, members, size in entries:
        shard = smap.shard_for_key(members[0].partition_key)
        per_shard[shard] = per_shard.get(shard, 0) + size
    assert len(per_shard) == 2
    assert all(total <= 50_000 for total in per_shard.values())
    assert len(leftovers) > 250


def test_aggregate_capacity_leaves_room_for_the_key():
    assert aggregate_capacity(1_048_576, 51_200) == 51_200
    assert aggregate_capacity(10_000, 51_200) == 10_000 - 256


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3_000)), min_size=1, max_size=150),
    st.integers(1, 16),
    st.integers(300, 20_000),
    st.integers(1, 50),
    st.integers(5_000, 200_000),
    st.one_of(st.none(), st.integers(1_000, 60_000)),
)
def test_property_entries_respect_limits_and_partition_input(
    spec, shards, agg_bytes, max_entries, max_request, max_shard
):
    smap = ShardMap.from_shards(even_shards(shards))
    records = []
    for i, (key, size) in enumerate(spec):
        key_s = pk(key * 100_000 + i)  # distinct keys, as the writer sends one per key
        data = b"d" * size
        records.append(PendingRecord(key_s, data, record_size(key_s, data)))
    entries, leftovers = build_aggregated_entries(
        records,
        smap,
        aggregate_bytes=agg_bytes,
        max_entries=max_entries,
        max_request_bytes=max_request,
        max_shard_bytes=max_shard,
    )
    assert entries, "at least one entry is always produced"
    assert len(entries) <= max_entries
    if len(entries) > 1:
        assert sum(e[2] for e in entries) <= max_request
    packed = [m for e in entries for m in e[1]]
    assert sorted(map(id, packed + leftovers)) == sorted(map(id, records))
    per_shard: dict = {}
    for entry, members, size in entries:
        shard = smap.shard_for_key(members[0].partition_key)
        per_shard.setdefault(shard, []).append(size)
        assert len({smap.shard_for_key(m.partition_key) for m in members}) == 1
        if len(members) > 1:
            assert len(entry["Data"]) <= agg_bytes
            assert deaggregate(entry) == [(m.partition_key, m.data) for m in members]
    if max_shard is not None:
        for sizes in per_shard.values():  # a lone oversize entry may exceed it, no more
            assert len(sizes) == 1 or sum(sizes) <= max_shard
