"""Benchmark: what progress lines and ``--report`` cost, against the same run without.

Generates (or reuses, ``--data``) sample snapshots and runs the job's command line in
child processes, alternating the variants so that machine noise spreads over all of
them:

* ``plain``: ``--output_path`` only (the baseline of the ratios);
* ``progress``: plus ``--progress_interval 10`` (every counter on the hot path counts);
* ``report``: plus ``--report`` (the report's facts summed in the pipeline).

It prints, per variant, the median wall and CPU time over ``--repeats`` runs and the
ratios to ``plain`` measured in the same run, and fails if the events differ.

    python bench/bench_progress.py [--profiles 30000] [--snapshots 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(args: list[str]) -> tuple[float, float]:
    """Runs ``python -m pipeline ARGS``; returns (wall s, CPU s of the child)."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    stderr = child.stderr.read().decode()
    child.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the job failed:\n{stderr[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def digest(prefix: str) -> str:
    lines = []
    for path in sorted(glob.glob(prefix + "*.jsonl")):
        with open(path, "rb") as handle:
            lines.extend(handle.read().splitlines())
    return hashlib.sha256(b"\n".join(sorted(lines))).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=30_000)
    parser.add_argument("--snapshots", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", help="Data folder, kept (generated if it has none).")
    args = parser.parse_args(argv)

    from tools.sample_data import write_snapshots

    data = args.data or tempfile.mkdtemp(prefix="bench-progress-")
    if not os.path.exists(os.path.join(data, "activation.json")):
        print(f"generating {args.profiles} profiles x {args.snapshots} snapshots under {data}")
        write_snapshots(data, args.profiles, args.snapshots, 20, "avro", 4)
    work = tempfile.mkdtemp(prefix="bench-progress-out-")
    base = [
        "--config",
        os.path.join(data, "activation.json"),
        "--input",
        os.path.join(data, "snapshot=*", "part-*.avro"),
        "--overwrite",
    ]
    variants = {
        "plain": [],
        "progress": ["--progress_interval", "10"],
        "report": ["--report", os.path.join(work, "report")],
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    digests = {}
    for repeat in range(args.repeats):
        for name, extra in variants.items():
            out = os.path.join(work, name, "events")
            times[name].append(run([*base, "--output_path", out, *extra]))
            digests[name] = digest(out)
            wall, cpu = times[name][-1]
            print(f"run {repeat + 1} {name:9s} wall {wall:6.1f} s  cpu {cpu:6.1f} s", flush=True)
    if len(set(digests.values())) != 1:
        raise SystemExit(f"the variants wrote different events: {digests}")
    plain_wall = statistics.median(w for w, _ in times["plain"])
    plain_cpu = statistics.median(c for _, c in times["plain"])
    print(f"\n{args.profiles} profiles x {args.snapshots} snapshots, median of {args.repeats}")
    print(f"{'variant':10s} {'wall s':>8s} {'cpu s':>8s} {'wall ratio':>11s} {'cpu ratio':>10s}")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(
            f"{name:10s} {wall:8.1f} {cpu:8.1f} {wall / plain_wall:11.3f} {cpu / plain_cpu:10.3f}"
        )
    print(f"events identical across variants: sha256 {digests['plain'][:16]}…")
    return 0


if __name__ == "__main__":
    sys.exit(main())
