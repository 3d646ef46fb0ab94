"""``python -m tools.flink fetch | start | stop | args``: a local Flink from a shell.

* ``fetch``: the job server's jars into ``.cache/flink/lib`` (once).
* ``start --mode embedded|cluster --state-dir D``: starts the services, records their
  PIDs and ports in ``D/services.json``; logs go to ``D/*.log``.
* ``args --state-dir D [--parallelism N]``: prints the Beam flags that submit to it.
* ``stop --state-dir D``: stops every recorded process by its PID.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.flink.services import (
    FlinkServices,
    FlinkToolsError,
    fetch_classpath,
    start_cluster,
    start_embedded,
)
from tools.procs import ProcessError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.flink")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch")
    start = sub.add_parser("start")
    start.add_argument("--mode", choices=("embedded", "cluster"), required=True)
    start.add_argument("--state-dir", type=Path, required=True)
    start.add_argument("--taskmanagers", type=int, default=2)
    args_cmd = sub.add_parser("args")
    args_cmd.add_argument("--state-dir", type=Path, required=True)
    args_cmd.add_argument("--parallelism", type=int, default=2)
    stop = sub.add_parser("stop")
    stop.add_argument("--state-dir", type=Path, required=True)
    logs = sub.add_parser("logs")
    logs.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch_classpath())
        elif args.command == "start":
            if args.mode == "embedded":
                services = start_embedded(args.state_dir)
            else:
                services = start_cluster(args.state_dir, taskmanagers=args.taskmanagers)
            print(
                f"flink ({services.mode}) ready: job server {services.job_endpoint}",
                file=sys.stderr,
            )
        elif args.command == "args":
            print(" ".join(FlinkServices.load(args.state_dir).pipeline_args(args.parallelism)))
        elif args.command == "logs":
            print(FlinkServices.load(args.state_dir).logs())
        elif args.command == "stop":
            if (args.state_dir / "services.json").exists():
                FlinkServices.load(args.state_dir).stop()
    except (FlinkToolsError, ProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
