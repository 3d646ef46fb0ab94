"""Benchmark: scale-out on real engines against the local runner, on the same data.

Generates (or reuses, ``--data``) 100k profiles x 3 daily snapshots (Avro, as
``bench_transitions.py``), starts a standalone Flink cluster (1 JobManager, 2
TaskManagers of 2 slots, a Python worker pool, a job server: ``tools/flink``) and runs
the job with ``--output_path``, each run in a child process, on:

* ``direct``: the DirectRunner in-process (the baseline of the ratios);
* ``direct x2``: ``--direct_num_workers=2 --direct_running_mode=multi_processing``;
* ``flink p1`` and ``flink p2``: the cluster at parallelism 1 and 2.

It prints wall time, events/s and each run's time ratio to ``direct`` measured in the
same run, and fails if any run's events differ from the baseline's.

    python bench/bench_engines.py [--profiles 100000] [--snapshots 3] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_transitions as bench  # noqa: E402

from tools.flink.services import start_cluster  # noqa: E402

DIRECT_X2 = "--direct_num_workers=2 --direct_running_mode=multi_processing"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--snapshots", type=int, default=3)
    parser.add_argument("--data", help="Data folder, kept (generated if it has none).")
    args = parser.parse_args(argv)

    from tools.sample_data import write_snapshots

    data = args.data or tempfile.mkdtemp(prefix="bench-engines-")
    config_path = os.path.join(data, "activation.json")
    if not os.path.exists(config_path):
        print(
            f"generating {args.profiles} profiles x {args.snapshots} snapshots under {data}",
            flush=True,
        )
        write_snapshots(data, args.profiles, args.snapshots, 20, "avro", 4)
    pattern = os.path.join(data, "snapshot=*", "part-*.avro")
    work = Path(tempfile.mkdtemp(prefix="bench-engines-out-"))
    cluster = start_cluster(work / "flink")
    runs = {
        "direct": "",
        "direct x2": DIRECT_X2,
        "flink p1": " ".join(cluster.pipeline_args(parallelism=1)),
        "flink p2": " ".join(cluster.pipeline_args(parallelism=2)),
    }
    reports, lines = {}, {}
    keep = False
    try:
        for name, flags in runs.items():
            os.environ[bench.BEAM_ARGS_ENV] = flags
            out = work / name.replace(" ", "_") / "events"
            print(f"running {name} ...", flush=True)
            try:
                reports[name] = bench.run_child("beam", config_path, pattern, str(out))
            except SystemExit:
                print(cluster.logs(), file=sys.stderr)
                print(f"logs kept under {work / 'flink'}", file=sys.stderr)
                keep = True
                raise
            lines[name] = bench.read_lines(f"{out}*")
    finally:
        cluster.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        if not args.data:
            shutil.rmtree(data, ignore_errors=True)
    baseline = lines["direct"]
    events = len(baseline)
    print(f"input: {data}; events: {events:,}")
    print(f"{'run':<10} {'wall':>9} {'events/s':>10} {'ratio to direct':>16} {'same events':>12}")
    for name, report in reports.items():
        print(
            f"{name:<10} {report['wall_s']:>7.1f} s {events / report['wall_s']:>10,.0f} "
            f"{report['wall_s'] / reports['direct']['wall_s']:>16.2f} "
            f"{'yes' if lines[name] == baseline else 'NO':>12}"
        )
    return 0 if events and all(found == baseline for found in lines.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
