"""Benchmark: the columnar batch path against the row path, on the same data, one run.

Runs the job twice in child processes (``--batch_path rows`` then ``--batch_path
columnar``, or the order given) with ``--output_path``, times each from start to exit,
takes each child's peak RSS (``wait4``), and checks that the two event sets are
byte-identical (sha256 of the sorted lines). Prints records/s and the ratio.

    python bench/bench_columnar.py [--data DIR] [--profiles 100000] [--snapshots 3]
        [--segments 20] [--parts 4] [--input GLOB] [--baseline GLOB] [--beam_args FLAGS]
        [--paths rows,columnar]

Exits 1 when the event sets differ.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _digest(prefix: str) -> tuple[str, int]:
    lines: list[bytes] = []
    for path in sorted(glob.glob(prefix + "*")):
        with open(path, "rb") as handle:
            lines.extend(line for line in handle if line.strip())
    lines.sort()
    return hashlib.sha256(b"".join(lines)).hexdigest()[:16], len(lines)


def _run(args: list[str]) -> tuple[float, int, int]:
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code:
        print(stderr[-3000:], file=sys.stderr)
    return elapsed, usage.ru_maxrss // 1024, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="existing sample folder (default: generated)")
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--snapshots", type=int, default=3)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--baseline", help="--baseline glob for the job")
    parser.add_argument(
        "--input", default="snapshot=*/part-*.avro", help="--input glob, inside --data"
    )
    parser.add_argument("--beam_args", default="", help="extra job flags")
    parser.add_argument("--paths", default="rows,columnar")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-columnar-") as tmp:
        data = args.data
        if data is None:
            data = os.path.join(tmp, "data")
            subprocess.run(
                [sys.executable, "-m", "tools.sample_data", "--out", data,
                 "--profiles", str(args.profiles), "--snapshots", str(args.snapshots),
                 "--segments", str(args.segments), "--parts", str(args.parts)],
                cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
            )
        files = glob.glob(os.path.join(data, args.input))
        if args.baseline:
            files += glob.glob(args.baseline)
        import fastavro  # noqa: PLC0415

        records = 0
        for path in files:
            with open(path, "rb") as handle:
                records += sum(block.num_records for block in fastavro.block_reader(handle))
        results = {}
        for path in args.paths.split(","):
            out = os.path.join(tmp, path, "events")
            command = [
                sys.executable, "-m", "pipeline",
                "--config", os.path.join(data, "activation.json"),
                "--input", os.path.join(data, args.input),
                "--output_path", out,
                "--batch_path", path,
                *(["--baseline", args.baseline] if args.baseline else []),
                *shlex.split(args.beam_args),
            ]
            elapsed, rss_mb, code = _run(command)
            digest, events = _digest(out)
            results[path] = (elapsed, rss_mb, code, digest, events)
            print(
                f"{path:9s} {elapsed:6.1f} s  {records / elapsed:9,.0f} rec/s  "
                f"peak RSS {rss_mb:5d} MB  events {events} sha256 {digest}  exit {code}"
            )
    print(f"records {records:,} ({len(files)} files)")
    if "rows" in results and "columnar" in results:
        rows, columnar = results["rows"], results["columnar"]
        print(f"ratio columnar/rows time {columnar[0] / rows[0]:.2f} "
              f"(speed-up {rows[0] / columnar[0]:.1f}x); same events: {rows[3] == columnar[3]}")
        return 0 if rows[3] == columnar[3] and not rows[2] and not columnar[2] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
