"""Reshards a stream at known points of a write, and reads it back as a KCL consumer.

Used with ``FaultProxy.before_put_records`` by the resharding tests and
``bench/bench_resharding.py``: the proxy calls a hook before the n-th PutRecords, the
hook splits or merges shards on the real server and waits until the stream is ACTIVE.
"""

from __future__ import annotations

from typing import Any

from tools.kcl import read_stream_as_kcl
from tools.kinesalite import list_shards


def wait_active(client: Any, stream: str) -> None:
    """Waits (bounded polling) until the stream is ACTIVE again."""
    client.get_waiter("stream_exists").wait(
        StreamName=stream, WaiterConfig={"Delay": 0.05, "MaxAttempts": 600}
    )


def open_shards(client: Any, stream: str) -> list[dict[str, Any]]:
    """The open shards, by starting hash key."""
    shards = [
        s
        for s in list_shards(client, stream)
        if "EndingSequenceNumber" not in s["SequenceNumberRange"]
    ]
    return sorted(shards, key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]))


def split(client: Any, stream: str, index: int, done: list[str] | None = None) -> None:
    """Splits the ``index``-th open shard (by hash keys) in half; waits until ACTIVE."""
    shard = open_shards(client, stream)[index]
    low = int(shard["HashKeyRange"]["StartingHashKey"])
    high = int(shard["HashKeyRange"]["EndingHashKey"])
    client.split_shard(
        StreamName=stream, ShardToSplit=shard["ShardId"], NewStartingHashKey=str((low + high) // 2)
    )
    wait_active(client, stream)
    if done is not None:
        done.append("split")


def merge(client: Any, stream: str, index: int, done: list[str] | None = None) -> None:
    """Merges the ``index``-th open shard with the next one; waits until ACTIVE."""
    shards = open_shards(client, stream)
    lower, upper = shards[index], shards[index + 1]
    client.merge_shards(
        StreamName=stream, ShardToMerge=lower["ShardId"], AdjacentShardToMerge=upper["ShardId"]
    )
    wait_active(client, stream)
    if done is not None:
        done.append("merge")


def kcl_records(client: Any, stream: str) -> list[dict[str, Any]]:
    """Every user record a KCL 2.x consumer reads, shards parent-first, as
    :func:`tools.stream_check.check_numbered_stream` takes them."""
    return [
        {
            "shard_id": user.shard_id,
            "sequence_number": user.sequence_number,
            "partition_key": user.partition_key,
            "data": user.data,
        }
        for users in read_stream_as_kcl(client, stream).values()
        for user in users
    ]
