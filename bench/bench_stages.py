"""Benchmark: time per record of each stage of the batch path, without Beam.

Runs the job's own functions one stage after the other over the same Avro snapshots,
in one process, and prints microseconds per input record for each stage and its ratio
to the first one (fastavro decoding alone, the input limit measured in the same run):

* ``decode``: ``fastavro.reader`` over every file (the baseline);
* ``parse``: raw record -> grouped shuffle value (validation, key, compact encoding),
  measured as decode + parse with the records streaming from the files, minus decode;
* ``guard``: each profile's presence read from its grouped values (mass-exit counts);
* ``replay``: each profile's values decoded and replayed over the run's snapshots;
* ``format``: each transition to its event bytes and partition key.

Beam's own cost (bundles, coders, the shuffle) is what ``bench_transitions.py`` adds
on top. Run it from two checkouts on the same ``--data`` to compare commits::

    python bench/bench_stages.py --data DIR [--repeat 3]
    PYTHONPATH=/path/to/other/checkout python bench/bench_stages.py --data DIR

``--data`` is a folder made by ``bench_transitions.py --data DIR`` (or
``python -m tools.sample_data``) with ``activation.json`` and ``snapshot=*/part-*.avro``.
"""

from __future__ import annotations

import argparse
import gc
import glob
import os
import sys
import time
from pathlib import Path

if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _stages(data: str):
    import fastavro

    from transforms.config import load_config
    from transforms.events.format import EventFormatter, partition_key_for
    from transforms.segments import codecs
    from transforms.segments.memberships import mass_exit_counts, replay_batch
    from transforms.segments.state import Tally, Triggers
    from transforms.snapshots.profiles import to_profile_record
    from transforms.snapshots.snapshot_time import snapshot_time_from_path

    config = load_config(os.path.join(data, "activation.json"))
    paths = sorted(glob.glob(os.path.join(data, "snapshot=*", "part-*.avro")))
    times = {path: snapshot_time_from_path(path) for path in paths}
    triggers = Triggers.from_config(config)
    formatter = EventFormatter(config)
    # The codec of this checkout (older ones had module functions).
    codec = codecs.ShuffleCodec(config, paths) if hasattr(codecs, "ShuffleCodec") else None
    encode = codec.encode_keyed if codec else codecs.encode_keyed
    decode_value = codec.decode if codec else codecs.decode_tagged

    def decode():
        records = 0
        for path in paths:
            with open(path, "rb") as handle:
                for _ in fastavro.reader(handle):
                    records += 1
        return records

    def parse(records):
        # Decodes again (records stream through as in the job); main() subtracts the
        # decode stage's time.
        del records
        grouped: dict[str, list[bytes]] = {}
        for path in paths:
            snapshot_ms = times[path]
            with open(path, "rb") as handle:
                for raw in fastavro.reader(handle):
                    key, value = encode(to_profile_record(raw, config, snapshot_ms, path))
                    grouped.setdefault(key, []).append(value)
        return grouped

    snapshot_list = sorted(set(times.values()))

    def guard(grouped):
        counts: dict[int, list[int]] = {}
        for values in grouped.values():
            presence = [codecs.presence_of(v) for v in values]
            mass_exit_counts(presence, snapshot_list, frozenset(), counts)
        return grouped

    def replay(grouped):
        tally = Tally()
        transitions = []
        for key, values in grouped.items():
            records = [decode_value(v)[1] for v in values]
            result = replay_batch(records, snapshot_list, triggers, tally, frozenset())
            transitions.extend((key, t) for t in result.transitions)
        return transitions

    def format_(transitions):
        out = []
        for key, transition in transitions:
            formatted = formatter.format_for_sending(key, transition)
            if formatted is not None:
                out.append((partition_key_for(key), formatted.data))
        return out

    return [("decode", decode), ("parse", parse), ("guard", guard), ("replay", replay),
            ("format", format_)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", required=True, help="folder of activation.json and snapshots")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best counts (default 3)")
    args = parser.parse_args(argv)
    stages = _stages(args.data)
    best: dict[str, float] = {}
    records = events = 0
    for _ in range(args.repeat):
        value = None
        for index, (name, stage) in enumerate(stages):
            gc.collect()
            started = time.perf_counter()
            value = stage() if index == 0 else stage(value)
            elapsed = time.perf_counter() - started
            best[name] = min(best.get(name, elapsed), elapsed)
            if name == "decode":
                records = value
        events = len(value)
        del value
    best["parse"] -= best["decode"]
    base = best["decode"] / records * 1e6
    print(f"{records:,} records, {events:,} events (best of {args.repeat})")
    print(f"{'stage':<8} {'us/record':>10} {'ratio to decode':>16}")
    for name, seconds in best.items():
        per = seconds / records * 1e6
        print(f"{name:<8} {per:>10.1f} {per / base:>16.2f}")
    total = sum(best.values()) / records * 1e6
    print(f"{'total':<8} {total:>10.1f} {total / base:>16.2f}  ({1e6 / total:,.0f} records/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
