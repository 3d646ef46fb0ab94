"""Benchmark: the whole job on the DirectRunner vs plain single-process Python.

Both read the same Avro snapshots (``tools.sample_data``: daily snapshots with
churn, absences, tombstones and duplicate records), apply the same transition rules
and write the same JSON Lines events; the run fails if the two event sets differ.

* Beam: ``python -m pipeline --config ... --input ... --output_path ...`` on the
  default local runner (the FnApiRunner), in a child process.
* Plain: one loop over the snapshots in time order with a dict of profile states
  (:mod:`transforms.segments.memberships`) and the project's event formatter, in another child
  process. It reads one snapshot at a time, so its memory follows the number of
  profiles, not the number of snapshots; it freezes the GC's view of its long-lived
  state after each snapshot (a one-line tuning any plain script can have).

Each child is timed from its start to its exit (``end to end``); ``startup`` is the
part spent importing before any work (the plain child imports Beam too, because the
event formatter module does). Peak RSS is the child's own maximum resident set, as
reported by ``wait4``.

    python bench/bench_transitions.py [--profiles 100000] [--snapshots 3] [--segments 20]
                                      [--data DIR] [--parts 4] [--beam_args FLAGS]

Goal: time ratio (Beam / plain) <= 1.0, and Beam's peak RSS not growing with
``--snapshots``.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402 - the clock above starts before any import
import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_RESULT_PREFIX = "BENCH_RESULT "
# Extra flags for the Beam child (e.g. the scale-out options), passed through the env.
BEAM_ARGS_ENV = "BENCH_BEAM_ARGS"


# ----------------------------------------------------------------------- children


def plain_job(config_path: str, pattern: str, out_path: str) -> dict:
    """The job as a plain loop: snapshots in time order, one dict of states.

    Returns:
        ``{"records": ..., "events": ..., "startup_s": ...}``.
    """
    import gc

    import fastavro

    from transforms.config import load_config
    from transforms.events.format import EventFormatter
    from transforms.segments.rules import (
        apply_absence,
        apply_record,
        merge_records,
    )
    from transforms.segments.state import (
        Tally,
        Triggers,
    )
    from transforms.snapshots.profiles import RecordError, to_profile_record
    from transforms.snapshots.snapshot_time import snapshot_time_from_path

    startup = time.perf_counter() - _STARTED
    config = load_config(config_path)
    triggers = Triggers.from_config(config)
    formatter = EventFormatter(config)
    tally = Tally()
    files_by_time: dict[int, list[str]] = {}
    for path in sorted(glob.glob(pattern)):
        if not os.path.basename(path).startswith(("_", ".")):
            files_by_time.setdefault(snapshot_time_from_path(path), []).append(path)
    states: dict = {}
    records = events = 0
    with open(out_path, "wb") as out:
        for snapshot_ms in sorted(files_by_time):
            snapshot: dict[str, list[dict]] = {}
            for path in files_by_time[snapshot_ms]:
                with open(path, "rb") as handle:
                    for raw in fastavro.reader(handle):
                        records += 1
                        try:
                            key, record = to_profile_record(raw, config, snapshot_ms, path)
                        except RecordError:
                            continue
                        snapshot.setdefault(key, []).append(record)
            tracked = [key for key, state in states.items() if state.live]
            absent = [key for key in tracked if key not in snapshot]
            if len(tracked) >= 100 and len(absent) / len(tracked) > config.max_exit_fraction:
                raise SystemExit(f"mass exit at {snapshot_ms}: {len(absent)} of {len(tracked)}")
            lines = []
            for key, group in snapshot.items():
                state, transition = apply_record(states.get(key), merge_records(group), triggers)
                states[key] = state
                if transition is not None:
                    lines.append(formatter.format(key, transition))
            for key in absent:
                states[key], transition = apply_absence(states[key], snapshot_ms, triggers, tally)
                if transition is not None:
                    lines.append(formatter.format(key, transition))
            # A gone profile re-enters like a first sight: its state can go.
            for key in [key for key, state in states.items() if state.gone]:
                del states[key]
            for line in lines:
                out.write(line + b"\n")
            events += len(lines)
            del snapshot, lines
            # The states are long-lived: keep the cyclic GC from rescanning them on every
            # collection (without this the loop spends ~30% of its time in the GC).
            gc.freeze()
    return {"records": records, "events": events, "startup_s": startup}


def beam_job(config_path: str, pattern: str, out_prefix: str) -> dict:
    """The job through its command line, in this process."""
    import logging

    from pipeline.main import main

    startup = time.perf_counter() - _STARTED
    logging.getLogger().setLevel(logging.ERROR)
    extra = shlex.split(os.environ.get(BEAM_ARGS_ENV, ""))
    code = main(["--config", config_path, "--input", pattern, "--output_path", out_prefix, *extra])
    if code != 0:
        raise SystemExit(f"the Beam job failed with exit code {code}")
    return {"startup_s": startup}


# ---------------------------------------------------------------------- the bench


def run_child(kind: str, config_path: str, pattern: str, out: str) -> dict:
    """Runs one job in a child process; returns its report, wall time and peak RSS."""
    command = [sys.executable, __file__, "--child", kind, config_path, pattern, out]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    # wait4 gives this child's own resource usage (ru_maxrss in KiB on Linux).
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    stdout, stderr = child.stdout.read().decode(), child.stderr.read().decode()
    child.stdout.close()
    child.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{kind} job failed:\n{stderr[-3000:]}")
    report = {}
    for line in stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            report = json.loads(line[len(_RESULT_PREFIX) :])
    report.update(wall_s=wall, peak_rss_mb=usage.ru_maxrss / 1024, cpu_s=usage.ru_utime)
    return report


def read_lines(pattern: str) -> list[bytes]:
    lines = []
    for path in sorted(glob.glob(pattern)):
        with open(path, "rb") as handle:
            lines.extend(line.rstrip(b"\n") for line in handle)
    return sorted(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--snapshots", type=int, default=3)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--parts", type=int, default=4, help="Files per snapshot.")
    parser.add_argument(
        "--data", help="Data folder, kept (generated if it has no activation.json)."
    )
    parser.add_argument(
        "--beam_args",
        default="",
        help="Extra flags of the Beam job, e.g. "
        "'--direct_num_workers=2 --direct_running_mode=multi_processing'. Default: none.",
    )
    parser.add_argument("--child", nargs=4, metavar=("KIND", "CONFIG", "INPUT", "OUT"))
    args = parser.parse_args(argv)
    if args.child:
        kind, config_path, pattern, out = args.child
        report = (plain_job if kind == "plain" else beam_job)(config_path, pattern, out)
        print(_RESULT_PREFIX + json.dumps(report), flush=True)
        return 0

    from tools.sample_data import write_snapshots

    data = args.data or tempfile.mkdtemp(prefix="bench-transitions-")
    config_path = os.path.join(data, "activation.json")
    if not os.path.exists(config_path):
        print(
            f"generating {args.profiles} profiles x {args.snapshots} snapshots, "
            f"{args.segments} segments, under {data} ...",
            flush=True,
        )
        write_snapshots(data, args.profiles, args.snapshots, args.segments, "avro", args.parts)
    pattern = os.path.join(data, "snapshot=*", "part-*.avro")
    work = tempfile.mkdtemp(prefix="bench-transitions-out-")
    os.environ[BEAM_ARGS_ENV] = args.beam_args
    if args.beam_args:
        print(f"beam job flags: {args.beam_args}", flush=True)
    try:
        beam = run_child("beam", config_path, pattern, os.path.join(work, "beam", "events"))
        plain = run_child("plain", config_path, pattern, os.path.join(work, "plain.jsonl"))
        beam_lines = read_lines(os.path.join(work, "beam", "events*"))
        plain_lines = read_lines(os.path.join(work, "plain.jsonl"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.data:
            shutil.rmtree(data, ignore_errors=True)
    same = beam_lines == plain_lines
    records = plain["records"]

    def row(name: str, report: dict) -> str:
        work_s = report["wall_s"] - report["startup_s"]
        return (
            f"{name:<6} {report['wall_s']:>8.2f} s {report['startup_s']:>8.2f} s "
            f"{work_s:>8.2f} s {report['cpu_s']:>8.2f} s {records / report['wall_s']:>10,.0f} "
            f"{report['peak_rss_mb']:>9,.0f} MB"
        )

    print(f"input: {records:,} records in {data}; events: {len(plain_lines):,}")
    print(
        f"{'':<6} {'end to end':>10} {'startup':>10} {'work':>10} {'user cpu':>10} "
        f"{'records/s':>10} {'peak RSS':>12}"
    )
    print(row("beam", beam))
    print(row("plain", plain))
    ratio = beam["wall_s"] / plain["wall_s"]
    work_ratio = (beam["wall_s"] - beam["startup_s"]) / (plain["wall_s"] - plain["startup_s"])
    print(f"time ratio beam/plain: {ratio:.2f} end to end, {work_ratio:.2f} without startup")
    print(f"same events: {'yes' if same else 'NO'} ({len(beam_lines):,} vs {len(plain_lines):,})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
