"""Pure batching and per-partition-key ordering logic of the Kinesis sink.

:class:`KeyOrderedBuffer` holds every record that is not yet acknowledged, one FIFO queue
per partition key. Only the head of a key's queue is ever eligible to be sent, and it stays
the head (blocking the key's later records) until it is acknowledged or dead-lettered. So at
most one record per key is in flight at any time, which is what keeps a profile's events in
order across partial failures and retries: Kinesis gives no ordering guarantee between
records of one PutRecords request, and a partial failure can fail an earlier record while a
later one succeeds.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Iterable
from typing import Any

MAX_RECORDS_PER_REQUEST = 500
MAX_REQUEST_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
MAX_PARTITION_KEY_CHARS = 256


def record_size(partition_key: str, data: bytes) -> int:
    """The size Kinesis counts against the record and request limits: data + partition key."""
    return len(data) + len(partition_key.encode("utf-8"))


class PendingRecord:
    """One user record waiting to be acknowledged.

    Attributes:
        partition_key: the Kinesis partition key.
        data: the payload.
        size: ``record_size(partition_key, data)``.
        timestamp: the element timestamp, kept for the dead letter.
        attempts: how many times the record was sent.
        first_sent: clock time of the first send, or None.
        not_before: clock time before which a retry must not be sent.
    """

    __slots__ = (
        "partition_key",
        "data",
        "size",
        "timestamp",
        "attempts",
        "first_sent",
        "not_before",
    )

    def __init__(self, partition_key: str, data: bytes, size: int, timestamp: Any = None):
        self.partition_key = partition_key
        self.data = data
        self.size = size
        self.timestamp = timestamp
        self.attempts = 0
        self.first_sent: float | None = None
        self.not_before = 0.0

    def __repr__(self) -> str:  # no payload or key in reprs: they may end up in logs
        return f"PendingRecord(size={self.size}, attempts={self.attempts})"


class KeyOrderedBuffer:
    """Unacknowledged records, with at most one record per partition key out at a time.

    A record is in exactly one of these states:

    * *queued*: behind an earlier record of its key;
    * *ready*: head of its key, may be taken into a request;
    * *delayed*: head of its key, waiting for its retry backoff (``not_before``);
    * *taken*: head of its key, in a request in flight.

    ``complete`` (acknowledged or dead-lettered) removes the head and makes the next record of
    the key ready. Ready records are taken in FIFO order.
    """

    def __init__(self) -> None:
        self._queues: dict[str, collections.deque[PendingRecord]] = {}
        self._ready: collections.deque[PendingRecord] = collections.deque()
        self._delayed: list[tuple[float, int, PendingRecord]] = []
        self._tiebreak = itertools.count()
        self.buffered_records = 0
        self.buffered_bytes = 0
        self.ready_bytes = 0
        self.taken_records = 0

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    @property
    def delayed_count(self) -> int:
        return len(self._delayed)

    def __len__(self) -> int:
        return self.buffered_records

    def add(self, record: PendingRecord) -> None:
        """Appends a record behind the earlier records of its key."""
        queue = self._queues.get(record.partition_key)
        if queue is None:
            self._queues[record.partition_key] = collections.deque((record,))
            self._ready.append(record)
            self.ready_bytes += record.size
        else:
            queue.append(record)
        self.buffered_records += 1
        self.buffered_bytes += record.size

    def release_due(self, now: float) -> int:
        """Moves delayed records whose backoff has passed to ready; returns how many."""
        moved = 0
        while self._delayed and self._delayed[0][0] <= now:
            record = heapq.heappop(self._delayed)[2]
            self._ready.append(record)
            self.ready_bytes += record.size
            moved += 1
        return moved

    def next_due(self) -> float | None:
        """The earliest ``not_before`` of the delayed records, or None."""
        return self._delayed[0][0] if self._delayed else None

    def take(self, max_records: int, max_bytes: int) -> list[PendingRecord]:
        """Takes ready records in FIFO order within the limits (always at least one if any).

        The first record is taken even if it alone exceeds ``max_bytes``: the caller has
        already checked it against the record limit, and it has to go alone then.
        """
        out: list[PendingRecord] = []
        total = 0
        ready = self._ready
        while ready and len(out) < max_records:
            size = ready[0].size
            if out and total + size > max_bytes:
                break
            out.append(ready.popleft())
            total += size
        self.ready_bytes -= total
        self.taken_records += len(out)
        return out

    def give_back(self, records: Iterable[PendingRecord]) -> None:
        """Returns taken-but-unsent records to the front of the ready queue, in order."""
        records = list(records)
        for record in reversed(records):
            self._ready.appendleft(record)
            self.ready_bytes += record.size
        self.taken_records -= len(records)

    def retry_later(self, record: PendingRecord, not_before: float) -> None:
        """Puts a taken record back as delayed until ``not_before`` (it stays its key's head)."""
        record.not_before = not_before
        heapq.heappush(self._delayed, (not_before, next(self._tiebreak), record))
        self.taken_records -= 1

    def complete_and_drop(self, record: PendingRecord) -> list[PendingRecord]:
        """Removes a taken head record and every record queued behind it of its key.

        For a record given up: the records behind it must not overtake it, so they are
        given up too (in order), and none of its key becomes ready.

        Returns:
            The records that were queued behind it, in order.
        """
        queue = self._queues.get(record.partition_key)
        if not queue or queue[0] is not record:
            raise RuntimeError("completed a record that is not the head of its key")
        del self._queues[record.partition_key]
        dropped = list(queue)[1:]
        self.taken_records -= 1
        self.buffered_records -= len(queue)
        self.buffered_bytes -= sum(r.size for r in queue)
        return dropped

    def complete(self, record: PendingRecord) -> None:
        """Removes a taken record (acknowledged or dead-lettered); its key's next becomes ready.

        Raises:
            RuntimeError: the record is not the head of its key (an ordering bug).
        """
        queue = self._queues.get(record.partition_key)
        if not queue or queue[0] is not record:
            raise RuntimeError("completed a record that is not the head of its key")
        queue.popleft()
        self.taken_records -= 1
        self.buffered_records -= 1
        self.buffered_bytes -= record.size
        if queue:
            nxt = queue[0]
            self._ready.append(nxt)
            self.ready_bytes += nxt.size
        else:
            del self._queues[record.partition_key]


def plain_entries(
    records: list[PendingRecord],
) -> list[tuple[dict[str, Any], list[PendingRecord], int]]:
    """One PutRecords entry per record: ``(entry, [record], size)``."""
    return [({"Data": r.data, "PartitionKey": r.partition_key}, [r], r.size) for r in records]
