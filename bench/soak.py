"""Soak: the whole job, >= 500k events, into a local Kinesis through a faulty proxy.

Starts kinesalite and a fault-injecting proxy (``tools/fault_proxy.py``) in front of it,
writes numbered snapshots (``tools/stream_check.py``: every event says which profile and
snapshot it belongs to), runs ``python -m pipeline`` as a subprocess against the proxy
while 20% of the PutRecords entries are throttled, and every ``--fault-every`` requests
one request gets a 500, a connection reset before forwarding, or a reset after forwarding
(written, answer lost: a duplicate). It samples the job's RSS, then reads every shard
back and checks: every event present (or dead-lettered with its error), per-profile
order, duplicates only as repeats of the same eventId.

    python bench/soak.py [--profiles 100000] [--snapshots 5] [--shards 4] [--json FILE]

Prints the figures; exits 0 when nothing was lost, misordered or altered, 1 otherwise.

The job runs on the default local runner (one worker). Beam 2.77's FnApiRunner in
``--direct_running_mode=multi_threading`` lost GroupByKey values of this job in tests
(false exits), so the soak does not use it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.fault_proxy import FaultProxy  # noqa: E402
from tools.kinesalite import (  # noqa: E402
    create_stream,
    local_client,
    read_all_records,
    start_kinesalite,
)
from tools.stream_check import (  # noqa: E402
    check_numbered_stream,
    numbered_glob,
    numbered_pairs,
    write_numbered_snapshots,
)

STREAM = "soak"
REGION = "us-east-1"
THROTTLE = "ProvisionedThroughputExceededException"


def _rss_kib(pid: int) -> int | None:
    """The resident set size of a process in KiB (Linux), or None once it exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class _FaultSchedule(threading.Thread):
    """Arms one whole-request fault every ``every`` PutRecords requests, in rotation.

    Polls the proxy's request counter (no timing assumptions): a 500, a reset before
    forwarding, a reset after forwarding.
    """

    def __init__(self, proxy: FaultProxy, every: int) -> None:
        super().__init__(daemon=True)
        self._proxy = proxy
        self._every = every
        self._halt = threading.Event()
        self.armed = 0

    def run(self) -> None:
        next_at = self._every
        faults = (
            lambda: self._proxy.http_error(500, 1),
            lambda: self._proxy.reset(1),
            lambda: self._proxy.reset(1, after_forward=True),
        )
        while not self._halt.wait(0.05):
            if self._proxy.snapshot().put_records_requests >= next_at:
                faults[self.armed % len(faults)]()
                self.armed += 1
                next_at += self._every

    def stop(self) -> None:
        self._halt.set()
        self.join()


class _RssSampler(threading.Thread):
    """Samples a process's RSS and the proxy's entry count every ``interval`` seconds."""

    def __init__(self, pid: int, proxy: FaultProxy, interval: float) -> None:
        super().__init__(daemon=True)
        self._pid = pid
        self._proxy = proxy
        self._interval = interval
        self._halt = threading.Event()
        self.samples: list[tuple[float, int, int]] = []  # (seconds, RSS KiB, entries)

    def run(self) -> None:
        start = time.monotonic()
        while not self._halt.wait(self._interval):
            rss = _rss_kib(self._pid)
            if rss is None:
                return
            entries = self._proxy.snapshot().put_records_entries
            self.samples.append((time.monotonic() - start, rss, entries))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _summary_counters(stdout: str) -> dict[str, int]:
    """The ``Run summary`` lines of the job's output, label -> value."""
    counters = {}
    for line in stdout.splitlines():
        match = re.match(r"^\s{2}(\S.*?)\s{2,}(\d+)$", line)
        if match:
            counters[match.group(1)] = int(match.group(2))
    return counters


def _dead_letters(prefix: str) -> list[dict[str, Any]]:
    letters = []
    for path in sorted(Path(prefix).parent.glob(Path(prefix).name + "*.jsonl")):
        with open(path, encoding="utf-8") as handle:
            letters.extend(json.loads(line) for line in handle if line.strip())
    return letters


def soak(
    profiles: int,
    snapshots: int,
    shards: int,
    throttle_every: int,
    fault_every: int,
    workdir: str,
    sample_seconds: float,
) -> dict[str, Any]:
    """Runs the soak; returns its figures (``ok`` says whether every check passed)."""
    figures: dict[str, Any] = {"profiles": profiles, "snapshots": snapshots, "shards": shards}
    started = time.monotonic()
    config = write_numbered_snapshots(os.path.join(workdir, "in"), profiles, snapshots, parts=4)
    figures["generate_seconds"] = round(time.monotonic() - started, 1)
    expected = numbered_pairs(profiles, snapshots)
    figures["events_expected"] = len(expected)
    with start_kinesalite() as server, FaultProxy(server.endpoint_url) as proxy:
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID="soak-key",
            AWS_SECRET_ACCESS_KEY="soak-secret",
            AWS_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
        )
        os.environ.update(AWS_ACCESS_KEY_ID="soak-key", AWS_SECRET_ACCESS_KEY="soak-secret")
        client = local_client(server.endpoint_url)
        create_stream(client, STREAM, shards=shards)
        proxy.fail_entries(THROTTLE, every=throttle_every, requests=None)
        schedule = _FaultSchedule(proxy, fault_every)
        schedule.start()
        dead_prefix = os.path.join(workdir, "out", "dead")
        command = [
            sys.executable,
            "-m",
            "pipeline",
            "--config",
            config,
            "--input",
            numbered_glob(os.path.join(workdir, "in")),
            "--kinesis_stream",
            STREAM,
            "--kinesis_endpoint_url",
            proxy.endpoint_url,
            "--dead_letter_path",
            dead_prefix,
        ]
        run_started = time.monotonic()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
            sampler = _RssSampler(job.pid, proxy, sample_seconds)
            sampler.start()
            code = job.wait()
            sampler.stop()
            schedule.stop()
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        figures["job_seconds"] = round(time.monotonic() - run_started, 1)
        figures["exit_code"] = code
        if code != 0:
            figures["stderr_tail"] = stderr.strip().splitlines()[-5:]
        stats = proxy.snapshot()
        read_started = time.monotonic()
        records = read_all_records(client, STREAM)
        figures["read_back_seconds"] = round(time.monotonic() - read_started, 1)
    counters = _summary_counters(stdout)
    report = check_numbered_stream(records, None)
    letters = _dead_letters(dead_prefix)
    dead_pairs = set()
    for letter in letters:
        event = json.loads(letter["raw"])
        dead_pairs.add((int(event["identityMap"]["ecid"][0]["id"]), event["stats"]["snapshot"]))
    delivered = {
        (int(json.loads(e)["identityMap"]["ecid"][0]["id"]), json.loads(e)["stats"]["snapshot"])
        for e in report.events
    }
    times = stats.request_times
    send_seconds = (times[-1] - times[0]) if len(times) > 1 else 0.0
    figures.update(
        events_delivered=report.distinct,
        stream_records=report.records,
        duplicates=report.repeats,
        dead_lettered=len(letters),
        lost=len(expected - delivered - dead_pairs),
        unexpected=len((delivered | dead_pairs) - expected),
        problems=report.problems(),
        send_seconds=round(send_seconds, 1),
        records_per_second=round(report.distinct / send_seconds) if send_seconds else None,
        put_records_requests=stats.put_records_requests,
        entries_sent=stats.put_records_entries,
        entries_per_delivered_event=round(stats.put_records_entries / max(1, report.distinct), 3),
        retries=counters.get("retries"),
        throttled_records=counters.get("throttled records"),
        injected=dict(stats.injected),
        rss_mib_samples=[
            (round(t), round(rss / 1024), entries)
            for t, rss, entries in sampler.samples[:: max(1, len(sampler.samples) // 40)]
        ],
    )
    rss_all = [rss for _, rss, _ in sampler.samples]
    # The sending phase: from the first PutRecords entry seen to the end of the job.
    sending = [rss for _, rss, entries in sampler.samples if entries > 0]
    figures["peak_rss_mib"] = round(max(rss_all) / 1024) if rss_all else None
    if sending:
        figures["rss_mib_at_first_send"] = round(sending[0] / 1024)
        figures["peak_rss_mib_while_sending"] = round(max(sending) / 1024)
        # Flat: what the sending phase adds, after the first quarter of it, is small.
        quarter = sending[len(sending) // 4 :]
        figures["rss_growth_mib_last_3_quarters"] = round((max(quarter) - quarter[0]) / 1024)
    figures["ok"] = (
        code == 0
        and figures["lost"] == 0
        and figures["unexpected"] == 0
        and not figures["problems"]
        and all(letter.get("reason") == "retries_exhausted" for letter in letters)
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    """Command line of the soak."""
    parser = argparse.ArgumentParser(prog="python bench/soak.py", description=__doc__)
    parser.add_argument("--profiles", type=int, default=100_000, help="Default: 100000.")
    parser.add_argument("--snapshots", type=int, default=5, help="Default: 5.")
    parser.add_argument("--shards", type=int, default=4, help="Default: 4.")
    parser.add_argument(
        "--throttle-every", type=int, default=5, help="Throttle every Nth entry. Default: 5."
    )
    parser.add_argument(
        "--fault-every",
        type=int,
        default=50,
        help="A 500 or reset every N PutRecords requests. Default: 50.",
    )
    parser.add_argument("--sample-seconds", type=float, default=2.0, help="Default: 2.")
    parser.add_argument("--workdir", help="Default: a temporary folder, removed afterwards.")
    parser.add_argument("--json", help="Also write the figures as JSON to this file.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        figures = soak(
            args.profiles,
            args.snapshots,
            args.shards,
            args.throttle_every,
            args.fault_every,
            args.workdir or tmp,
            args.sample_seconds,
        )
    for name, value in figures.items():
        print(f"{name:32} {value}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
