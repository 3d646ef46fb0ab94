"""Unit and property tests of the per-key ordered buffer (transforms/kinesis/batching.py)."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.kinesis.batching import (
    KeyOrderedBuffer,
    PendingRecord,
    plain_entries,
    record_size,
)


def rec(key: str, seq: int, size: int = 10) -> PendingRecord:
    return PendingRecord(key, f"{key}:{seq}".encode(), size)


def test_record_size_counts_data_and_utf8_key():
    assert record_size("ab", b"xyz") == 5
    assert record_size("é", b"") == 2  # two UTF-8 bytes


def test_only_the_head_of_each_key_is_ready():
    buf = KeyOrderedBuffer()
    a1, a2, b1 = rec("a", 1), rec("a", 2), rec("b", 1)
    for r in (a1, a2, b1):
        buf.add(r)
    assert buf.ready_count == 2
    taken = buf.take(500, 10_000)
    assert taken == [a1, b1]  # a2 waits behind a1
    assert buf.take(500, 10_000) == []
    buf.complete(a1)
    assert buf.take(500, 10_000) == [a2]


def test_retry_keeps_the_key_blocked_until_due():
    buf = KeyOrderedBuffer()
    a1, a2 = rec("a", 1), rec("a", 2)
    buf.add(a1)
    buf.add(a2)
    assert buf.take(500, 10_000) == [a1]
    buf.retry_later(a1, not_before=5.0)
    assert buf.release_due(4.9) == 0
    assert buf.take(500, 10_000) == []  # a2 must not overtake the retried a1
    assert buf.next_due() == 5.0
    assert buf.release_due(5.0) == 1
    assert buf.take(500, 10_000) == [a1]


def test_take_respects_record_and_byte_limits_but_always_takes_one():
    buf = KeyOrderedBuffer()
    records = [PendingRecord(f"k{i}", b"x", 100) for i in range(10)]
    for r in records:
        buf.add(r)
    assert len(buf.take(3, 10_000)) == 3
    assert len(buf.take(500, 250)) == 2
    big = PendingRecord("big", b"x", 10_000)
    buf2 = KeyOrderedBuffer()
    buf2.add(big)
    assert buf2.take(500, 100) == [big]


def test_give_back_restores_front_of_queue_in_order():
    buf = KeyOrderedBuffer()
    records = [rec(f"k{i}", 0) for i in range(5)]
    for r in records:
        buf.add(r)
    taken = buf.take(5, 10_000)
    buf.give_back(taken[2:])
    assert buf.take(5, 10_000) == records[2:]


def test_complete_of_a_non_head_record_is_an_error():
    buf = KeyOrderedBuffer()
    a1, a2 = rec("a", 1), rec("a", 2)
    buf.add(a1)
    buf.add(a2)
    buf.take(500, 10_000)
    with pytest.raises(RuntimeError):
        buf.complete(a2)


def test_counters_track_bytes_and_records():
    buf = KeyOrderedBuffer()
    for i in range(4):
        buf.add(PendingRecord("k", b"x", 7 + i))
    assert (buf.buffered_records, buf.buffered_bytes) == (4, 7 + 8 + 9 + 10)
    first = buf.take(500, 10_000)[0]
    buf.complete(first)
    assert (buf.buffered_records, buf.buffered_bytes) == (3, 8 + 9 + 10)


def test_plain_entries_shape():
    r = PendingRecord("pk", b"data", 6)
    assert plain_entries([r]) == [({"Data": b"data", "PartitionKey": "pk"}, [r], 6)]


# An operation script for the property test: add a record of a key, take a batch, or
# resolve one taken record (ack, retry, or dead letter).
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from("abcde")),
        st.tuples(st.just("take"), st.integers(1, 4)),
        st.tuples(st.just("resolve"), st.sampled_from(["ack", "retry", "dead"])),
        st.tuples(st.just("tick"), st.just(None)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_property_at_most_one_per_key_out_and_per_key_completion_order(ops):
    buf = KeyOrderedBuffer()
    seq = collections.Counter()
    added: dict[str, list[int]] = collections.defaultdict(list)
    completed: dict[str, list[int]] = collections.defaultdict(list)
    out: list[PendingRecord] = []  # taken, not yet resolved
    now = 0.0
    for op, arg in ops:
        if op == "add":
            seq[arg] += 1
            buf.add(PendingRecord(arg, str(seq[arg]).encode(), 1))
            added[arg].append(seq[arg])
        elif op == "take":
            out.extend(buf.take(arg, 10_000))
        elif op == "tick":
            now += 1.0
            buf.release_due(now)
        elif out:
            r = out.pop(0)
            if arg == "retry":
                buf.retry_later(r, now + 1.0)
            else:
                buf.complete(r)
                completed[r.partition_key].append(int(r.data))
        keys_out = [r.partition_key for r in out]
        assert len(keys_out) == len(set(keys_out)), "two records of one key out at once"
    # Drain everything: every record completes, per key in the order added.
    for _ in range(10_000):
        for r in out:
            buf.complete(r)
            completed[r.partition_key].append(int(r.data))
        now += 1.0
        buf.release_due(now)
        out = buf.take(500, 10_000)
        if not out and not buf.delayed_count:
            break
    assert buf.buffered_records == 0
    assert dict(completed) == dict(added)
