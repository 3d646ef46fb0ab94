"""Self-describing test snapshots, and a consumer that checks what reached a stream.

The "numbered" data set makes every expected event known without a reference
implementation: profile ``i`` (identity ``ecid:<i>``, primary) is in every snapshot
``k`` with the mapped attribute ``stats.snapshot = k`` and one constant membership.
With the attribute trigger on, the job emits exactly one event per profile and snapshot
(first sight: the entry; later: the attribute change), and each event names its own
``(i, k)`` through ``identityMap.ecid`` and ``stats.snapshot``. So a consumer can tell
what is missing, what is repeated, and whether a profile's events are in snapshot order.

Used by the reliability tests and by ``bench/soak.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import glob
import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

SEGMENT = "7841ba61-23c1-4bb3-a495-00d695fe1e93"
START = dt.date(2024, 1, 1)
NUMBERED_CONFIG = {
    "segments": [{"id": SEGMENT, "name": "Numbered"}],
    "profile_key": "primary",
    "identities": {"include": ["ecid"]},
    "attributes": ["stats.snapshot"],
    "triggers": {"segments": True, "attributes": True, "identities": False},
}


def ecid(index: int) -> str:
    """The identity of numbered profile ``index``."""
    return f"{index:010d}"


def partition_key(index: int) -> str:
    """The Kinesis partition key of numbered profile ``index`` (docs/contract.md §5)."""
    return hashlib.sha256(f"ecid:{ecid(index)}".encode()).hexdigest()


def snapshot_day(k: int) -> str:
    """The date (``YYYY-MM-DD``) of snapshot ``k``."""
    return (START + dt.timedelta(days=k)).isoformat()


def write_numbered_snapshots(
    root: str, profiles: int, snapshots: int, parts: int = 2, first: int = 0
) -> str:
    """Writes ``root/snapshot=<day>/part-NNNN.jsonl`` and ``root/activation.json``.

    Args:
        root: The folder to write into.
        profiles: Profiles per snapshot (indexes ``first`` .. ``first + profiles - 1``).
        snapshots: Daily snapshots ``0 .. snapshots - 1``.
        parts: Files per snapshot.
        first: The first profile index.

    Returns:
        The path of the config file.
    """
    for k in range(snapshots):
        folder = os.path.join(root, f"snapshot={snapshot_day(k)}")
        os.makedirs(folder, exist_ok=True)
        # One line template per snapshot: formatting 10^6 records with json.dumps would
        # dominate a soak's set-up time.
        template = (
            '{"identityMap":{"ecid":[{"id":"%s","primary":true}]},'
            '"segmentMembership":{"ups":{"' + SEGMENT + '":{"status":"realized",'
            '"lastQualificationTime":"2023-12-01T00:00:00Z"}}},'
            '"stats":{"snapshot":' + str(k) + "}}\n"
        )
        handles = [
            open(os.path.join(folder, f"part-{p:04d}.jsonl"), "w", encoding="utf-8")
            for p in range(parts)
        ]
        try:
            for i in range(first, first + profiles):
                handles[i % parts].write(template % ecid(i))
        finally:
            for handle in handles:
                handle.close()
    config = os.path.join(root, "activation.json")
    with open(config, "w", encoding="utf-8") as handle:
        json.dump(NUMBERED_CONFIG, handle)
    return config


def numbered_glob(root: str) -> str:
    """The ``--input`` glob of :func:`write_numbered_snapshots`' files."""
    return os.path.join(root, "snapshot=*", "part-*.jsonl")


def read_lines(prefix: str) -> list[bytes]:
    """Every non-empty line of the files ``prefix*`` (an ``--output_path`` run)."""
    lines = []
    for path in sorted(glob.glob(prefix + "*")):
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                lines.extend(line.rstrip(b"\n") for line in handle if line.strip())
    return lines


@dataclasses.dataclass
class StreamReport:
    """What a deduplicating consumer saw on the stream.

    Attributes:
        records: Records read (repeats included).
        distinct: Distinct ``eventId`` values.
        repeats: Records that repeated an ``eventId`` already seen.
        bad_repeats: Repeats whose bytes or partition key differ from the first copy.
        out_of_order: Partition keys whose first occurrences are not in snapshot order.
        wrong_key: Records whose partition key is not their profile's.
        missing: Expected ``(profile, snapshot)`` pairs never seen.
        unexpected: Seen pairs that were not expected.
        split_ids: ``(profile, snapshot)`` pairs that came with more than one eventId.
        events: The distinct events' bytes, in first-seen order.
    """

    records: int = 0
    distinct: int = 0
    repeats: int = 0
    bad_repeats: int = 0
    out_of_order: int = 0
    wrong_key: int = 0
    missing: int = 0
    unexpected: int = 0
    split_ids: int = 0
    events: list[bytes] = dataclasses.field(default_factory=list)

    def problems(self) -> dict[str, int]:
        """The non-zero error counts (empty when everything is right)."""
        names = (
            "bad_repeats",
            "out_of_order",
            "wrong_key",
            "missing",
            "unexpected",
            "split_ids",
        )
        return {name: getattr(self, name) for name in names if getattr(self, name)}


def check_numbered_stream(
    records: Iterable[dict[str, Any]], expected: set[tuple[int, int]] | None
) -> StreamReport:
    """Consumes records like a deduplicating consumer and checks them.

    Args:
        records: ``{shard_id, sequence_number, partition_key, data}`` dicts (as
            :func:`tools.kinesalite.read_all_records` returns them: per shard, in
            sequence order).
        expected: The ``(profile index, snapshot)`` pairs that must be present, or
            ``None`` to skip the completeness check.

    Returns:
        The report; ``report.problems()`` is empty when all is well.
    """
    report = StreamReport()
    first_copy: dict[str, tuple[str, bytes]] = {}
    ids_of_pair: dict[tuple[int, int], set[str]] = collections.defaultdict(set)
    last_k: dict[str, int] = {}
    disordered: set[str] = set()
    for record in records:
        report.records += 1
        data, key = record["data"], record["partition_key"]
        event = json.loads(data)
        event_id = event["eventId"]
        if event_id in first_copy:
            report.repeats += 1
            if first_copy[event_id] != (key, data):
                report.bad_repeats += 1
            continue
        first_copy[event_id] = (key, data)
        report.events.append(data)
        index = int(event["identityMap"]["ecid"][0]["id"])
        k = event["stats"]["snapshot"]
        ids_of_pair[(index, k)].add(event_id)
        if key != partition_key(index):
            report.wrong_key += 1
        # Records of one key are all on one shard, read in sequence order.
        if key in last_k and k <= last_k[key]:
            disordered.add(key)
        last_k[key] = max(k, last_k.get(key, -1))
    report.distinct = len(first_copy)
    report.out_of_order = len(disordered)
    report.split_ids = sum(1 for ids in ids_of_pair.values() if len(ids) > 1)
    if expected is not None:
        seen = set(ids_of_pair)
        report.missing = len(expected - seen)
        report.unexpected = len(seen - expected)
    return report


def numbered_pairs(profiles: int, snapshots: int, first: int = 0) -> set[tuple[int, int]]:
    """Every ``(profile, snapshot)`` pair of a numbered data set."""
    return {(i, k) for i in range(first, first + profiles) for k in range(snapshots)}
