"""Benchmark: peak memory against the length of a backfill, with and without splitting.

Generates the same profiles over S and over 3*S daily snapshots (Avro, as in
``bench_transitions.py``) and runs on each, in child processes, side by side:

* ``beam``: the job in one run (``python -m pipeline``, DirectRunner -> FnApiRunner);
* ``beam split``: the job with ``--snapshots_per_run N`` (one run per N snapshots, each
  starting from the profile states the previous run carried over);
* ``plain``: the single-process loop of ``bench_transitions.py``.

It prints time, records/s and peak RSS of each, the growth of peak RSS from S to 3*S
snapshots, and checks that all three give the same events.

    python bench/bench_memory.py [--profiles 30000] [--snapshots 3] [--per_run 2]
                                 [--segments 20]

Goal: the split job's peak RSS does not grow with the number of snapshots. A split run
holds its N snapshots plus the carried states (about one snapshot's worth), so compare
split runs with each other: at S and at 3*S snapshots both have carried states.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_transitions as bench  # noqa: E402


def run_all(data: str, per_run: int) -> dict[str, dict]:
    """Runs the three jobs on one data folder; returns their reports."""
    config_path = os.path.join(data, "activation.json")
    pattern = os.path.join(data, "snapshot=*", "part-*.avro")
    work = tempfile.mkdtemp(prefix="bench-memory-out-")
    reports = {}
    lines = {}
    try:
        for name, beam_args in (("beam", ""), ("beam split", f"--snapshots_per_run {per_run}")):
            os.environ[bench.BEAM_ARGS_ENV] = beam_args
            out = os.path.join(work, name.replace(" ", "_"), "events")
            reports[name] = bench.run_child("beam", config_path, pattern, out)
            lines[name] = bench.read_lines(out + "*")
        out = os.path.join(work, "plain.jsonl")
        reports["plain"] = bench.run_child("plain", config_path, pattern, out)
        lines["plain"] = bench.read_lines(out)
    finally:
        os.environ.pop(bench.BEAM_ARGS_ENV, None)
        shutil.rmtree(work, ignore_errors=True)
    if not lines["plain"] or any(found != lines["plain"] for found in lines.values()):
        raise SystemExit(f"the jobs disagree on the events of {data}")
    for report in reports.values():
        report["events"] = len(lines["plain"])
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=30_000, help="Default: 30000.")
    parser.add_argument("--snapshots", type=int, default=3, help="S. Default: 3.")
    parser.add_argument(
        "--per_run", type=int, default=2, help="N, the --snapshots_per_run. Default: 2."
    )
    parser.add_argument("--segments", type=int, default=20, help="Default: 20.")
    args = parser.parse_args(argv)

    from tools.sample_data import write_snapshots

    root = tempfile.mkdtemp(prefix="bench-memory-")
    results = {}
    try:
        for snapshots in (args.snapshots, 3 * args.snapshots):
            data = os.path.join(root, f"s{snapshots}")
            print(f"generating {args.profiles} profiles x {snapshots} snapshots ...", flush=True)
            write_snapshots(data, args.profiles, snapshots, args.segments, "avro", 4)
            results[snapshots] = run_all(data, args.per_run)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    small, large = args.snapshots, 3 * args.snapshots
    print(
        f"{'job':<11} {'snapshots':>9} {'events':>9} {'time':>9} {'records/s':>10} {'peak RSS':>10}"
    )
    for snapshots in (small, large):
        records = results[snapshots]["plain"]["records"]
        for name, report in results[snapshots].items():
            print(
                f"{name:<11} {snapshots:>9} {report['events']:>9,} {report['wall_s']:>7.1f} s "
                f"{records / report['wall_s']:>10,.0f} {report['peak_rss_mb']:>7,.0f} MB"
            )
    for name in results[small]:
        growth = results[large][name]["peak_rss_mb"] / results[small][name]["peak_rss_mb"]
        ratio = results[large][name]["wall_s"] / results[large]["plain"]["wall_s"]
        print(
            f"{name:<11} peak RSS x{growth:.2f} from {small} to {large} snapshots; "
            f"time ratio to plain at {large} snapshots: {ratio:.2f}"
        )
    print(f"same events: yes (beam split: --snapshots_per_run {args.per_run})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
