"""Benchmark: the size of a streaming job's Flink checkpoint per live profile.

Starts a standalone Flink cluster (``tools/flink``), runs the job in streaming mode with
checkpoints every 10 s on a landing folder, lands one numbered snapshot of N profiles
(``tools.stream_check``: one mapped membership, one mapped attribute), waits until its
N events are written (``--output_path``), then until a checkpoint completes after
that, and prints the checkpoint's size, bytes per live profile, and the same for a
first checkpoint taken before any snapshot landed (the baseline of the ratio: the
job's fixed state).

    python bench/bench_checkpoint.py [--profiles 100000]
"""

from __future__ import annotations

import argparse
import glob
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.main import main as job_main  # noqa: E402
from tools.flink.services import (  # noqa: E402
    cancel_job,
    latest_checkpoint,
    running_job,
    start_cluster,
)
from tools.stream_check import snapshot_day, write_numbered_snapshots  # noqa: E402


def _lines(prefix: str) -> int:
    total = 0
    for path in glob.glob(prefix + "*"):
        with open(path, "rb") as handle:
            total += sum(1 for _ in handle)
    return total


def _checkpoint_after(rest: int, job_id: str, after_id: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        checkpoint = latest_checkpoint(rest, job_id)
        if checkpoint and checkpoint["id"] > after_id:
            return checkpoint
        if time.monotonic() > deadline:
            raise SystemExit(f"no checkpoint after #{after_id} in {timeout:.0f}s")
        time.sleep(0.5)  # poll interval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    services = start_cluster(work / "flink")
    try:
        staging, landing = work / "staging", work / "landing"
        config = write_numbered_snapshots(str(staging), args.profiles, 1, parts=4)
        landing.mkdir()
        argv_job = [
            "--config", config, "--input", str(landing / "*" / "*.jsonl"),
            "--output_path", str(work / "out" / "events"), "--streaming",
            "--watch_interval", "1", "--checkpointing_interval", "10000",
            "--state_backend", "filesystem",
            "--state_backend_storage_path", (work / "checkpoints").as_uri(),
            *services.pipeline_args(parallelism=2),
        ]  # fmt: skip
        job = threading.Thread(target=job_main, args=(argv_job,), daemon=True)
        job.start()
        rest = services.rest_port
        job_id = running_job(rest, timeout=120)
        empty = _checkpoint_after(rest, job_id, -1, 120)
        name = f"snapshot={snapshot_day(0)}"
        shutil.move(str(staging / name), str(landing / name))
        (landing / name / "_SUCCESS").write_text("")
        started = time.monotonic()
        while _lines(str(work / "out" / "events")) < args.profiles:
            if time.monotonic() - started > 1800:
                raise SystemExit("the snapshot's events were not all written in 30 min")
            time.sleep(1)  # poll interval
        seconds = time.monotonic() - started
        full = _checkpoint_after(rest, job_id, latest_checkpoint(rest, job_id)["id"], 120)
        cancel_job(rest, job_id)
        job.join(60)
    finally:
        services.stop()
        shutil.rmtree(work, ignore_errors=True)
    per_profile = (full["state_size"] - empty["state_size"]) / args.profiles
    print(f"profiles                     {args.profiles}")
    print(f"snapshot through the job     {seconds:.1f} s")
    print(f"checkpoint before (fixed)    {empty['state_size']:,} bytes")
    print(f"checkpoint with the profiles {full['state_size']:,} bytes")
    print(f"per live profile             {per_profile:.0f} bytes")
    print(f"ratio full / fixed           {full['state_size'] / empty['state_size']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
