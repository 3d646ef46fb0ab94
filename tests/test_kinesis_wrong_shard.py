"""Wrong-shard re-sends of the aggregating writer, against an in-memory resharding stream.

The fake stream reshards between requests (as a real stream can at any time) and places
each record as Kinesis does: by its explicit hash key, else by the MD5 of its partition
key, into the open shard whose range holds it. A KCL 2.x model then reads every shard,
dropping whole any aggregate with a user record outside its shard's range. The same is
tested over real HTTP against kinesalite, with the real KCL's deaggregation, in
test_kinesis_resharding.py.
"""

from __future__ import annotations

import base64
import datetime
import threading
from concurrent.futures import ThreadPoolExecutor

from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.kinesis.aggregation import MAX_HASH, ShardMap, hash_key
from transforms.kinesis.settings import SinkMetrics, SinkSettings
from transforms.kinesis.writer import KinesisWriter


class ReshardingKinesis:
    """An in-memory stream whose shards split before chosen PutRecords calls.

    ``splits[call]`` lists the open shards to split in half before that call. Each shard's
    records are kept apart, as a consumer reads them (parents before children).
    """

    def __init__(self, splits: dict[int, int]):
        self.lock = threading.Lock()
        self.splits = splits
        self.calls = 0
        self.next_id = 1
        # shard id -> [start, end, open, parent]
        self.shards: dict[str, list] = {"shardId-000000000000": [0, MAX_HASH, True, None]}
        self.records: dict[str, list[dict]] = {"shardId-000000000000": []}

    def _split_open(self, count: int) -> None:
        for shard_id in [s for s, v in self.shards.items() if v[2]][:count]:
            start, end, _, _ = self.shards[shard_id]
            self.shards[shard_id][2] = False
            middle = (start + end) // 2
            for lo, hi in ((start, middle), (middle + 1, end)):
                child = f"shardId-{self.next_id:012d}"
                self.next_id += 1
                self.shards[child] = [lo, hi, True, shard_id]
                self.records[child] = []

    def list_shards(self, **kwargs):
        with self.lock:
            shards = []
            for shard_id, (start, end, is_open, _) in self.shards.items():
                numbers = {"StartingSequenceNumber": "0"}
                if not is_open:
                    numbers["EndingSequenceNumber"] = "1"
                shards.append(
                    {
                        "ShardId": shard_id,
                        "HashKeyRange": {"StartingHashKey": str(start), "EndingHashKey": str(end)},
                        "SequenceNumberRange": numbers,
                    }
                )
            return {"Shards": shards}

    def put_records(self, StreamName, Records):  # noqa: N803 - boto3's parameter names
        with self.lock:
            self._split_open(self.splits.get(self.calls, 0))
            self.calls += 1
            results = []
            for r in Records:
                value = int(r.get("ExplicitHashKey") or hash_key(r["PartitionKey"]))
                shard_id = next(
                    s for s, (lo, hi, is_open, _) in self.shards.items() if is_open and lo <= value <= hi
                )
                self.records[shard_id].append(r)
                results.append({"ShardId": shard_id, "SequenceNumber": str(self.calls)})
            return {"FailedRecordCount": 0, "Records": results}

    def read_as_kcl(self) -> list[tuple[str, bytes]]:
        """Every shard, parents first; an aggregate with a misfit user record is dropped."""
        out = []
        for shard_id in self._parent_first():
            lo, hi = self.shards[shard_id][:2]
            for r in self.records[shard_id]:
                boto = {"Data": r["Data"], "PartitionKey": r["PartitionKey"], "SequenceNumber": "1"}
                users = [(u["PartitionKey"], u["Data"]) for u in _deaggregate(boto)]
                if len(users) > 1 and any(not lo <= hash_key(k) <= hi for k, _ in users):
                    continue  # AggregatorUtil.deaggregate drops the whole aggregate
                out.extend(users)
        return out

    def _parent_first(self) -> list[str]:
        order, placed = [], set()
        while len(order) < len(self.shards):
            for shard_id, (_, _, _, parent) in self.shards.items():
                if shard_id not in placed and (parent is None or parent in placed):
                    order.append(shard_id)
                    placed.add(shard_id)
        return order


def _deaggregate(boto: dict) -> list[dict]:
    boto = {**boto, "ApproximateArrivalTimestamp": datetime.datetime.now(datetime.UTC)}
    out = []
    for user in iter_deaggregate_records([boto], data_format="Boto3"):
        k = user["kinesis"]
        data = base64.b64decode(k["data"]) if k.get("aggregated") else k["data"]
        out.append({"PartitionKey": k["partitionKey"], "Data": data})
    return out


class Counting(SinkMetrics):
    def __init__(self):
        self.counters: dict[str, int] = {}

    def inc(self, name, n=1):
        self.counters[name] = self.counters.get(name, 0) + n

    def observe(self, name, value):
        pass


def _write(stream: ReshardingKinesis, records: list[tuple[str, bytes]]) -> Counting:
    settings = SinkSettings(
        aggregate=True,
        backoff_base_seconds=0.0,
        backoff_max_seconds=0.0,
        max_in_flight_requests=1,
        max_request_records=20,
    )
    metrics = Counting()
    with ThreadPoolExecutor(2) as executor:
        writer = KinesisWriter(stream, "s", settings, executor, metrics=metrics)
        for key, data in records:
            assert writer.add(key, data) == []
        assert writer.flush() == []
    return metrics


def _events(n_keys: int, per_key: int) -> list[tuple[str, bytes]]:
    return [(f"profile-{k}", f"{k}:{j}".encode()) for j in range(per_key) for k in range(n_keys)]


def _check_read(read: list[tuple[str, bytes]], sent: list[tuple[str, bytes]]) -> None:
    assert set(read) == set(sent), "a KCL reader lost records"
    # Per key, the first sighting of each record follows the send order.
    firsts: dict[str, list[bytes]] = {}
    seen = set()
    for key, data in read:
        if (key, data) not in seen:
            seen.add((key, data))
            firsts.setdefault(key, []).append(data)
    for key, datas in firsts.items():
        assert datas == [d for k, d in sent if k == key], key


def test_split_during_write_loses_nothing_and_counts_the_resent():
    stream = ReshardingKinesis({2: 1, 5: 2})  # split the one shard, then both children
    sent = _events(200, 4)
    metrics = _write(stream, sent)
    _check_read(stream.read_as_kcl(), sent)
    assert metrics.counters.get("kinesis_wrong_shard_resent", 0) > 0
    assert metrics.counters["kinesis_user_records_sent"] == len(sent)


def test_map_is_reloaded_once_per_response_with_an_unknown_shard():
    stream = ReshardingKinesis({1: 1})
    calls = {"n": 0}
    original = stream.list_shards

    def counting(**kwargs):
        calls["n"] += 1
        return original(**kwargs)

    stream.list_shards = counting
    _write(stream, _events(100, 2))
    # Once at the start, once for the response naming the new children; the re-sent
    # records then aggregate with the fresh map and land whole.
    assert calls["n"] == 2


def test_whole_aggregates_are_not_resent_without_a_reshard():
    stream = ReshardingKinesis({})
    sent = _events(100, 3)
    metrics = _write(stream, sent)
    assert metrics.counters.get("kinesis_wrong_shard_resent", 0) == 0
    _check_read(stream.read_as_kcl(), sent)


@settings(max_examples=25, deadline=None)
@given(
    splits=st.dictionaries(st.integers(0, 12), st.integers(1, 4), max_size=4),
    n_keys=st.integers(1, 60),
    per_key=st.integers(1, 4),
)
def test_any_split_series_loses_nothing_for_a_kcl_reader(splits, n_keys, per_key):
    stream = ReshardingKinesis(splits)
    sent = _events(n_keys, per_key)
    _write(stream, sent)
    _check_read(stream.read_as_kcl(), sent)


def test_shard_map_knows_closed_ranges():
    shards = ReshardingKinesis({})
    shards._split_open(1)
    shard_map = ShardMap.from_shards(shards.list_shards()["Shards"])
    assert len(shard_map) == 2
    assert shard_map.range_of("shardId-000000000000") == (0, MAX_HASH)
    assert shard_map.range_of("shardId-unknown") is None
