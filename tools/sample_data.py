"""Deterministic sample snapshots for the demo, the tests and the benchmarks.

``python -m tools.sample_data --out DIR`` writes daily snapshots as
``DIR/snapshot=YYYY-MM-DD/part-NNNN.<avro|jsonl>`` plus ``DIR/activation.json``, a config
mapping some of the segments. The same arguments always give the same bytes: every
random choice comes from one seeded generator, and nothing reads the clock.

The profiles churn the way real audiences do: memberships enter and exit between days
(exits both as explicit ``exited`` entries and as entries that vanish), a few profiles
are absent from a snapshot and come back, a few are deleted with ``_deleted``
tombstones, new profiles appear, and some records repeat a profile within a snapshot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys
from collections.abc import Iterator

import fastavro

AVRO_SCHEMA = {
    "type": "record",
    "name": "Profile",
    "namespace": "segment_events.sample",
    "fields": [
        {
            "name": "identityMap",
            "type": {
                "type": "map",
                "values": {
                    "type": "array",
                    "items": {
                        "type": "record",
                        "name": "Identity",
                        "fields": [
                            {"name": "id", "type": "string"},
                            {"name": "primary", "type": ["null", "boolean"], "default": None},
                            {
                                "name": "authenticatedState",
                                "type": ["null", "string"],
                                "default": None,
                            },
                        ],
                    },
                },
            },
        },
        {
            "name": "segmentMembership",
            "type": {
                "type": "map",
                "values": {
                    "type": "map",
                    "values": {
                        "type": "record",
                        "name": "Membership",
                        "fields": [
                            {"name": "status", "type": "string"},
                            {
                                "name": "lastQualificationTime",
                                "type": ["null", "string"],
                                "default": None,
                            },
                        ],
                    },
                },
            },
        },
        {
            "name": "person",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Person",
                    "fields": [
                        {
                            "name": "name",
                            "type": {
                                "type": "record",
                                "name": "Name",
                                "fields": [
                                    {"name": "firstName", "type": ["null", "string"]},
                                    {"name": "lastName", "type": ["null", "string"]},
                                ],
                            },
                        }
                    ],
                },
            ],
            "default": None,
        },
        {
            "name": "personalEmail",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Email",
                    "fields": [{"name": "address", "type": ["null", "string"]}],
                },
            ],
            "default": None,
        },
        {"name": "_deleted", "type": ["null", "boolean"], "default": None},
    ],
}

_FIRST_NAMES = ("John", "Zoë", "Ana", "Łukasz", "Mei", "Omar", "Sofía", "Ravi", "Emma", "Kofi")
_LAST_NAMES = ("Doe", "García", "Müller", "Nakamura", "Okafor", "Smith", "Rossi", "Kim")


def segment_ids(count: int, seed: int = 7) -> list[str]:
    """Stable UUID-like segment ids."""
    rng = random.Random(seed)
    ids = []
    for _ in range(count):
        a, b, c, d, e = (rng.getrandbits(bits) for bits in (32, 16, 12, 12, 48))
        ids.append(f"{a:08x}-{b:04x}-4{c:03x}-a{d:03x}-{e:012x}")
    return ids


def generate_snapshots(
    profiles: int,
    snapshots: int,
    segments: int = 20,
    start: dt.date = dt.date(2024, 1, 1),
    seed: int = 42,
    churn: float = 0.05,
    absent: float = 0.02,
    deleted: float = 0.005,
    duplicates: float = 0.01,
) -> Iterator[tuple[dt.date, list[dict]]]:
    """Yields ``(date, records)`` for each daily snapshot, oldest first.

    Args:
        profiles: Profiles in the first snapshot (a few more appear later).
        snapshots: Number of daily snapshots.
        segments: Number of segments (namespace ``ups``).
        start: Date of the first snapshot.
        seed: Seed of the only random generator used.
        churn: Chance per profile, segment and day that a membership flips.
        absent: Chance per profile and day (after the first) of missing a snapshot.
        deleted: Chance per profile and day of being deleted (a tombstone, then gone).
        duplicates: Chance per profile and day of a second record for the profile.
    """
    rng = random.Random(seed)
    seg_ids = segment_ids(segments)
    members: list[dict[str, str]] = []  # per profile: segment id -> lastQualificationTime
    alive: list[bool] = []
    people: list[tuple[str, str, str]] = []

    def new_profile(day: dt.date) -> None:
        index = len(members)
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        people.append((first, last, f" {first}.{last}{index}@Example.COM "))
        qualified = _stamp(day, rng.randrange(86400) - 86400)
        members.append({s: qualified for s in seg_ids if rng.random() < 0.3})
        alive.append(True)

    for _ in range(profiles):
        new_profile(start)
    for day_index in range(snapshots):
        day = start + dt.timedelta(days=day_index)
        records = []
        if day_index:
            for _ in range(max(1, profiles // 50)):
                new_profile(day)
        for index, current in enumerate(members):
            if not alive[index]:
                continue
            exited = {}
            if day_index:
                for seg in seg_ids:
                    if rng.random() < churn:
                        if seg in current:
                            del current[seg]
                            if rng.random() < 0.5:
                                exited[seg] = _stamp(day, -rng.randrange(3600, 43200))
                        else:
                            current[seg] = _stamp(day, -rng.randrange(3600, 43200))
                if rng.random() < deleted:
                    alive[index] = False
                    records.append(_record(index, people[index], {}, {}, deleted=True))
                    continue
                if rng.random() < absent:
                    continue
            record = _record(index, people[index], current, exited)
            records.append(record)
            if rng.random() < duplicates:
                records.append(_record(index, people[index], {}, {}, phone=True))
        yield day, records


def _stamp(day: dt.date, offset_seconds: int) -> str:
    moment = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    moment += dt.timedelta(seconds=offset_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(
    index: int,
    person: tuple[str, str, str],
    current: dict[str, str],
    exited: dict[str, str],
    deleted: bool = False,
    phone: bool = False,
) -> dict:
    first, last, email = person
    identities = {
        "email": [{"id": email, "primary": True, "authenticatedState": None}],
        "ecid": [{"id": f"{index:038d}", "primary": None, "authenticatedState": None}],
    }
    if phone:
        identities["phone"] = [
            {
                "id": f"+1 (555) {index % 1000:03d}-{index % 10000:04d}",
                "primary": None,
                "authenticatedState": None,
            }
        ]
    memberships = {
        s: {"status": "realized" if i % 3 else "existing", "lastQualificationTime": t}
        for i, (s, t) in enumerate(sorted(current.items()))
    }
    memberships.update(
        {s: {"status": "exited", "lastQualificationTime": t} for s, t in sorted(exited.items())}
    )
    return {
        "identityMap": identities,
        "segmentMembership": {"ups": memberships} if memberships else {},
        "person": {"name": {"firstName": first, "lastName": last}},
        "personalEmail": {"address": email.strip().lower()},
        "_deleted": True if deleted else None,
    }


def write_snapshots(
    out: str,
    profiles: int,
    snapshots: int,
    segments: int = 20,
    fmt: str = "avro",
    parts: int = 2,
    seed: int = 42,
    mapped_segments: int | None = None,
) -> list[str]:
    """Writes snapshots and ``activation.json`` under ``out``; returns the files written."""
    if fmt not in ("avro", "jsonl"):
        raise ValueError(f"unknown format {fmt!r}: expected avro or jsonl")
    written = []
    parsed_schema = fastavro.parse_schema(AVRO_SCHEMA)
    for day, records in generate_snapshots(profiles, snapshots, segments, seed=seed):
        folder = os.path.join(out, f"snapshot={day.isoformat()}")
        os.makedirs(folder, exist_ok=True)
        for part in range(parts):
            chunk = records[part::parts]
            path = os.path.join(folder, f"part-{part:04d}.{fmt}")
            if fmt == "avro":
                with open(path, "wb") as handle:
                    fastavro.writer(handle, parsed_schema, chunk, codec="deflate")
            else:
                with open(path, "w", encoding="utf-8") as handle:
                    for record in chunk:
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            written.append(path)
        with open(os.path.join(folder, "_SUCCESS"), "w", encoding="utf-8"):
            pass
    mapped = segment_ids(segments)[: mapped_segments or max(1, segments // 2)]
    config = {
        "segments": [
            {
                "id": seg,
                "namespace": "ups",
                "name": f"Sample segment {i}",
                "createdAt": 1648553325000 + i,
                "updatedAt": 1648553330000 + i,
                "mappingCreatedAt": 1649856570000,
                "mappingUpdatedAt": 1649856570000,
            }
            for i, seg in enumerate(mapped)
        ],
        "profile_key": "primary",
        "identities": {
            "include": ["email_lc_sha256", "ecid", "phone_sha256"],
            "hash": {"email": "email_lc_sha256", "phone": "phone_sha256"},
        },
        "attributes": ["person.name.firstName"],
        "triggers": {"segments": True, "attributes": False, "identities": False},
        "include_segment_names": True,
        "include_segment_timestamps": False,
        "event_id": True,
        "absent_profile_ttl": None,
        "max_exit_fraction": 0.5,
    }
    with open(os.path.join(out, "activation.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2)
        handle.write("\n")
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line of the generator."""
    parser = argparse.ArgumentParser(prog="python -m tools.sample_data", description=__doc__)
    parser.add_argument("--out", required=True, help="Output folder.")
    parser.add_argument("--profiles", type=int, default=200, help="Profiles. Default: 200.")
    parser.add_argument("--snapshots", type=int, default=3, help="Daily snapshots. Default: 3.")
    parser.add_argument("--segments", type=int, default=20, help="Segments. Default: 20.")
    parser.add_argument(
        "--format", choices=("avro", "jsonl"), default="avro", help="File format. Default: avro."
    )
    parser.add_argument("--parts", type=int, default=2, help="Files per snapshot. Default: 2.")
    parser.add_argument("--seed", type=int, default=42, help="Random seed. Default: 42.")
    args = parser.parse_args(argv)
    if args.profiles < 1 or args.snapshots < 1 or args.segments < 1 or args.parts < 1:
        print(
            "error: --profiles, --snapshots, --segments and --parts must be >= 1", file=sys.stderr
        )
        return 2
    files = write_snapshots(
        args.out, args.profiles, args.snapshots, args.segments, args.format, args.parts, args.seed
    )
    print(f"wrote {len(files)} files and activation.json under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
