"""Resharding during an aggregated write: what a KCL 2.x consumer reads back.

Starts kinesalite with a 2-shard stream and the fault proxy in front of it, writes
numbered snapshots (every event names its profile and snapshot), and runs the job
in-process with ``--kinesis_aggregate`` and a rate cap, so the write lasts long enough
for three reshards at known PutRecords requests: shard 0 is split, then shard 1, then
shard 1's halves are merged back. Every shard is read back, parents first, and
deaggregated by the real KCL's ``AggregatorUtil`` (tools/kcl/).

    python bench/bench_resharding.py [--profiles 30000] [--snapshots 3] [--rate 1500]

Prints events expected, read by KCL, lost, repeated, out of order, and re-sent by the
sink. To measure another version of the sink, copy this file and tools/ into its
checkout and run it there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.main import main as run_job  # noqa: E402
from tools.fault_proxy import FaultProxy  # noqa: E402
from tools.kinesalite import create_stream, local_client, start_kinesalite  # noqa: E402
from tools.reshard import kcl_records, merge, split  # noqa: E402
from tools.stream_check import (  # noqa: E402
    check_numbered_stream,
    numbered_glob,
    numbered_pairs,
    write_numbered_snapshots,
)

STREAM = "resharding"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=30_000)
    parser.add_argument("--snapshots", type=int, default=3)
    parser.add_argument("--rate", type=int, default=1500, help="records/s cap of the sink")
    parser.add_argument(
        "--at", default="20,60,100", help="PutRecords requests before which to reshard"
    )
    args = parser.parse_args()
    at = [int(n) for n in args.at.split(",")]
    os.environ.update(AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local")
    with tempfile.TemporaryDirectory(prefix="bench-reshard-") as tmp, start_kinesalite() as server:
        client = local_client(server.endpoint_url)
        create_stream(client, STREAM, shards=2)
        config = write_numbered_snapshots(tmp, profiles=args.profiles, snapshots=args.snapshots)
        done: list[str] = []
        with FaultProxy(server.endpoint_url) as proxy:
            proxy.before_put_records(at[0], lambda: split(client, STREAM, 0, done))
            proxy.before_put_records(at[1], lambda: split(client, STREAM, 2, done))
            proxy.before_put_records(at[2], lambda: merge(client, STREAM, 2, done))
            out = io.StringIO()
            started = time.monotonic()
            with contextlib.redirect_stdout(out):
                code = run_job(
                    [
                        "--config", config,
                        "--input", numbered_glob(tmp),
                        "--kinesis_stream", STREAM,
                        "--kinesis_region", "us-east-1",
                        "--kinesis_endpoint_url", proxy.endpoint_url,
                        "--kinesis_aggregate",
                        "--kinesis_max_records_per_second", str(args.rate),
                        "--dead_letter_path", os.path.join(tmp, "dead"),
                    ]
                )
            elapsed = time.monotonic() - started
            requests = proxy.snapshot().put_records_requests
        report = check_numbered_stream(
            kcl_records(client, STREAM), numbered_pairs(args.profiles, args.snapshots)
        )
    resent = next(
        (line.split()[-1] for line in out.getvalue().splitlines() if "re-sent after" in line), "0"
    )
    expected = args.profiles * args.snapshots
    print(f"job exit code          {code} ({elapsed:.0f} s, {requests} PutRecords requests)")
    print(f"reshards done          {', '.join(done) or 'none'}")
    print(f"events expected        {expected}")
    print(f"read by KCL (distinct) {report.distinct}")
    print(f"lost                   {report.missing}")
    print(f"repeated               {report.repeats}")
    print(f"profiles out of order  {report.out_of_order}")
    print(f"re-sent by the sink    {resent}")
    return 0 if code == 0 and not report.problems() and len(done) == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
