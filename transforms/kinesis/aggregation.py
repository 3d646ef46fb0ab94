"""Shard-aware KPL record aggregation for the Kinesis sink.

Many small user records are packed into one Kinesis record in the standard KPL aggregated
format (``aws_kinesis_agg``), which KCL consumers and ``aws_kinesis_agg.deaggregator``
unpack transparently. The shard map (open shards' hash-key ranges from ListShards) groups
user records by the shard their partition key hashes to, so records of different shards
are never aggregated together, and the aggregate carries an explicit hash key inside that
shard's range so it lands where its user records belong. (KCL drops user records whose
hash does not belong to the shard it reads, so mixing shards would lose data downstream.)
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Any

import aws_kinesis_agg
from aws_kinesis_agg.aggregator import AggRecord

from transforms.kinesis.batching import PendingRecord

# KPL's default AggregationMaxSize: big enough to amortise the per-record overhead, small
# enough not to eat a whole shard's 1 MiB/s write budget with one record.
DEFAULT_AGGREGATION_MAX_BYTES = 51_200
# A shard accepts 1 MiB/s: a request carrying more for one shard is throttled for sure.
DEFAULT_MAX_SHARD_BYTES_PER_REQUEST = 1024 * 1024
_MAX_PARTITION_KEY_BYTES = 256
# The largest hash key: a stream's shards cover 0..MAX_HASH.
MAX_HASH = 2**128 - 1

Entry = tuple[dict[str, Any], list[PendingRecord], int]


def hash_key(partition_key: str) -> int:
    """The 128-bit hash Kinesis maps a partition key with: MD5 as a big-endian integer."""
    return int.from_bytes(hashlib.md5(partition_key.encode("utf-8")).digest(), "big")


class ShardMap:
    """Shards' hash-key ranges: open ones map partition keys to shard ids, and every
    listed shard's range (closed ones too) checks where an aggregate landed."""

    def __init__(
        self,
        ranges: list[tuple[int, int, str]],
        closed: list[tuple[int, int, str]] = (),  # type: ignore[assignment]
    ):
        """Args:
        ranges: ``(starting_hash_key, ending_hash_key, shard_id)`` of open shards.
        closed: the same for closed shards (parents of a reshard), for :meth:`range_of`.
        """
        self._ranges = sorted(ranges)
        self._starts = [r[0] for r in self._ranges]
        self._by_id = {shard_id: (start, end) for start, end, shard_id in [*closed, *ranges]}

    @classmethod
    def from_shards(cls, shards: list[dict[str, Any]]) -> ShardMap:
        """Builds the map from ListShards ``Shards`` (closed shards map no key)."""
        open_ranges, closed = [], []
        for s in shards:
            entry = (
                int(s["HashKeyRange"]["StartingHashKey"]),
                int(s["HashKeyRange"]["EndingHashKey"]),
                s["ShardId"],
            )
            if "EndingSequenceNumber" in s.get("SequenceNumberRange", {}):
                closed.append(entry)
            else:
                open_ranges.append(entry)
        return cls(open_ranges, closed)

    def __len__(self) -> int:
        return len(self._ranges)

    def shard_for_hash(self, value: int) -> str | None:
        """The id of the open shard whose range holds ``value``, or None (gap in the map)."""
        i = bisect.bisect_right(self._starts, value) - 1
        if i >= 0 and value <= self._ranges[i][1]:
            return self._ranges[i][2]
        return None

    def shard_for_key(self, partition_key: str) -> str | None:
        return self.shard_for_hash(hash_key(partition_key))

    def range_of(self, shard_id: str) -> tuple[int, int] | None:
        """The hash-key range of a listed shard (open or closed), or None if unknown."""
        return self._by_id.get(shard_id)


def misfits(partition_keys: list[str], hash_range: tuple[int, int] | None) -> int:
    """How many partition keys hash outside ``hash_range`` (all of them if it is None).

    A KCL 2.x consumer drops a whole aggregate when one user record hashes outside the
    range of the shard it reads (``AggregatorUtil.deaggregate``), so one misfit means the
    aggregate is lost to such consumers.
    """
    if hash_range is None:
        return len(partition_keys)
    start, end = hash_range
    return sum(1 for key in partition_keys if not start <= hash_key(key) <= end)


def stream_params(stream: str) -> dict[str, str]:
    """The API parameter naming a stream: ``StreamARN`` for an ARN, else ``StreamName``.

    An ARN names a stream of another account (with a resource policy that lets this
    one write); PutRecords, ListShards and DescribeStreamSummary all take it.
    """
    return {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}


def load_shard_map(client: Any, stream: str) -> ShardMap:
    """Reads the stream's shards (name or ARN) with ListShards (paginated)."""
    shards: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = dict(stream_params(stream))
    while True:
        page = client.list_shards(**kwargs)
        shards.extend(page.get("Shards", []))
        token = page.get("NextToken")
        if not token:
            return ShardMap.from_shards(shards)
        kwargs = {"NextToken": token}


def aggregate_capacity(max_record_bytes: int, aggregation_max_bytes: int) -> int:
    """The largest aggregated payload: within the record limit, leaving room for the key."""
    return max(
        1,
        min(
            aggregation_max_bytes,
            max_record_bytes - _MAX_PARTITION_KEY_BYTES,
            aws_kinesis_agg.MAX_BYTES_PER_RECORD,
        ),
    )


def _finish(members: list[PendingRecord], agg: AggRecord | None) -> Entry:
    if agg is None or len(members) == 1:
        # A lone record goes unaggregated, as the KPL does: no format overhead, and every
        # consumer reads it whether or not it deaggregates.
        r = members[0]
        return {"Data": r.data, "PartitionKey": r.partition_key}, members, r.size
    partition_key, _, data = agg.get_contents()
    entry = {
        "Data": data,
        "PartitionKey": partition_key,
        # The first user record's hash: inside the shard's range by construction.
        "ExplicitHashKey": str(hash_key(partition_key)),
    }
    return entry, members, len(data) + len(partition_key.encode("utf-8"))


def _try_add(agg: AggRecord, record: PendingRecord) -> bool:
    try:
        return agg.add_user_record(record.partition_key, record.data)
    except ValueError:  # larger than an empty aggregate can hold
        return False


def build_aggregated_entries(
    records: list[PendingRecord],
    shard_map: ShardMap,
    *,
    aggregate_bytes: int,
    max_entries: int,
    max_request_bytes: int,
    max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES_PER_REQUEST,
) -> tuple[list[Entry], list[PendingRecord]]:
    """Packs user records into aggregated PutRecords entries, one shard per entry.

    Within an entry, user records keep their input order (deaggregation yields them in that
    order). Records that do not fit into ``max_entries`` / ``max_request_bytes`` /
    ``max_shard_bytes`` are returned as leftovers, in input order, for the next request.

    Args:
        records: user records, each already within the record size limit.
        shard_map: the stream's open shards.
        aggregate_bytes: capacity of one aggregated record (see :func:`aggregate_capacity`).
        max_entries: PutRecords entries per request (500).
        max_request_bytes: bytes per request (5 MiB).
        max_shard_bytes: bytes per shard per request (a shard takes 1 MiB/s: more in one
            request is throttled for sure); None for no such limit.

    Returns:
        ``(entries, leftovers)``; each entry is ``(put_records_entry, user_records, size)``.
    """
    groups: dict[str | None, list[PendingRecord]] = {}
    for r in records:
        groups.setdefault(shard_map.shard_for_key(r.partition_key), []).append(r)

    candidates: list[tuple[str | None, Entry]] = []
    for shard_id, members in groups.items():
        if shard_id is None:  # hash outside every open shard: send unaggregated
            candidates.extend((None, _finish([r], None)) for r in members)
            continue
        agg: AggRecord | None = None
        current: list[PendingRecord] = []
        for r in members:
            added = agg is not None and _try_add(agg, r)
            if not added:
                if current:
                    candidates.append((shard_id, _finish(current, agg)))
                agg, current = AggRecord(aggregate_bytes), []
                if not _try_add(agg, r):
                    # Too big for any aggregate (but within the record limit): it goes
                    # alone, after what was packed before it, so the group's order holds.
                    candidates.append((shard_id, _finish([r], None)))
                    agg = None
                    continue
            current.append(r)
        if current:
            candidates.append((shard_id, _finish(current, agg)))

    entries: list[Entry] = []
    leftovers: list[PendingRecord] = []
    total = 0
    per_shard: dict[str | None, int] = {}
    for shard_id, entry in candidates:
        size = entry[2]
        shard_total = per_shard.get(shard_id, 0)
        fits_request = not entries or total + size <= max_request_bytes
        fits_shard = (
            max_shard_bytes is None
            or shard_id is None
            or not shard_total
            or shard_total + size <= max_shard_bytes
        )
        if len(entries) < max_entries and fits_request and fits_shard:
            entries.append(entry)
            total += size
            per_shard[shard_id] = shard_total + size
        else:
            leftovers.extend(entry[1])
    # Leftovers go back to the front of the ready queue: restore their input order.
    if leftovers:
        position = {id(r): i for i, r in enumerate(records)}
        leftovers.sort(key=lambda r: position[id(r)])
    return entries, leftovers
