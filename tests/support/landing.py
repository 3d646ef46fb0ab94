"""A streaming scenario: snapshots land in a watched folder while the job runs.

Shared by the DirectRunner test and the engine tests (Flink, Prism), which run the same
scenario with their runner flags and compare its events with the DirectRunner's.

Snapshot folders land in a watched folder one after the other: the test writes the next
snapshot (data files first, then its ``_SUCCESS`` marker, as an export job does) only
after the previous snapshot's events are in the (local) Kinesis stream. The expected
events are derived by hand from docs/contract.md §4 (streaming: TTL exits, baseline seeding).

Timeline (``absent_profile_ttl`` = 36 h; a, b, c are profiles, s1, s2 mapped segments)::

    baseline 03-01   a: s1                  seeds the state, emits nothing
    03-02            a: s1  b: s2  c: s1     -> b +s2, c +s1
    03-03            a: s1  b: s2 exited     -> b -s2          (c unseen: not yet 36 h)
    03-04            a: s1 s2   b: (none)    -> a +s2; c -s1 at 03-03T12:00 (03-02 + 36 h)
    watch stops      (drain: the watermark goes to the end of time)
                                             -> nothing: a's TTL would run out at
                                                03-05T12:00, but no snapshot at or after
                                                it landed; a stop is not an absence
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import subprocess
import sys
import threading
import time

from pipeline.main import main
from tests.support.event_schema import validate_event
from tools.kinesalite import read_all_records

S1, S2 = "seg-1", "seg-2"
CONFIG = {
    "segments": [{"id": S1}, {"id": S2}],
    "profile_key": "primary",
    "absent_profile_ttl": "36h",
}
KEYS = {name: f"email:{name}@example.com" for name in "abc"}
# Generous: the run ends on its own once the watch stopped; the test normally writes
# its last snapshot within a few seconds.
MAX_WATCH_SECONDS = 40
WAIT_SECONDS = 60


def profile(name, **segments):
    return {
        "identityMap": {"email": [{"id": f"{name}@example.com", "primary": True}]},
        "segmentMembership": {"ups": segments},
    }


def member(status, when=None):
    return {"status": status, **({"lastQualificationTime": when} if when else {})}


SNAPSHOTS = {
    "2024-03-02": [
        profile("a", **{S1: member("existing")}),
        profile("b", **{S2: member("existing")}),
        profile("c", **{S1: member("realized", "2024-03-01T18:00:00Z")}),
    ],
    "2024-03-03": [
        profile("a", **{S1: member("existing")}),
        profile("b", **{S2: member("exited", "2024-03-02T20:00:00Z")}),
    ],
    "2024-03-04": [
        profile("a", **{S1: member("existing"), S2: member("realized")}),
        profile("b"),
    ],
}
BASELINE = [profile("a", **{S1: member("realized", "2024-02-20T00:00:00Z")})]
# profile -> its events in stream order: {segment: (status, lastQualificationTime)}
EXPECTED_AFTER = {
    "2024-03-02": {
        "b": [{S2: ("realized", "2024-03-02T00:00:00Z")}],
        "c": [{S1: ("realized", "2024-03-01T18:00:00Z")}],
    },
    "2024-03-03": {"b": [{S2: ("exited", "2024-03-02T20:00:00Z")}]},
    "2024-03-04": {
        "a": [{S2: ("realized", "2024-03-04T00:00:00Z")}],
        "c": [{S1: ("exited", "2024-03-03T12:00:00Z")}],
    },
    # The watch stops: a's TTL deadline (03-04 + 36 h) is passed by the watermark, not
    # proven by a snapshot, so no exit is sent.
    "end": {},
}


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def land_snapshot(root, day):
    folder = root / f"snapshot={day}"
    records = SNAPSHOTS[day]
    write_jsonl(folder / "part-0.jsonl", records[0::2])
    write_jsonl(folder / "part-1.jsonl", records[1::2])
    (folder / "_SUCCESS").write_text("")


def sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def events_by_profile(records):
    """Stream records -> {profile: [segments]} in stream (sequence) order per profile."""
    names = {sha256(key): name for name, key in KEYS.items()}
    found = {}
    for record in sorted(records, key=lambda r: (r["shard_id"], int(r["sequence_number"]))):
        event = validate_event(record["data"])
        segments = {
            seg: (entry["status"], entry["lastQualificationTime"])
            for seg, entry in event["segmentMembership"]["ups"].items()
        }
        found.setdefault(names[record["partition_key"]], []).append(segments)
    return found


def merge(*stages):
    merged = {}
    for stage in stages:
        for name, events in EXPECTED_AFTER[stage].items():
            merged.setdefault(name, []).extend(events)
    return merged


class Job(threading.Thread):
    """``main(argv)`` in a thread; ``code`` is its exit code once it ended."""

    def __init__(self, argv):
        super().__init__(daemon=True)
        self.argv = argv
        self.code = None

    def run(self):
        self.code = main(self.argv)


class ProcessJob:
    """``python -m pipeline argv`` as a process, with the interface of :class:`Job`.

    For runners that must run in a main thread (Prism's launcher installs signal
    handlers). Its output goes to ``log_path``, shown by :meth:`output`.
    """

    def __init__(self, argv, log_path):
        self.argv = argv
        self.log_path = log_path
        self.process = None

    def start(self):
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def is_alive(self):
        return self.process.poll() is None

    def join(self, timeout):
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    @property
    def code(self):
        return self.process.poll()

    def output(self):
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self):
        if self.is_alive():
            self.process.kill()
            self.process.wait()


def wait_for_events(client, stream, job, expected):
    """Polls the stream until it holds as many events as ``expected``; returns them."""
    want = sum(len(events) for events in expected.values())
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        records = read_all_records(client, stream)
        if len(records) >= want:
            return events_by_profile(records)
        assert job.is_alive(), f"the job ended (code {job.code}) with {len(records)}/{want} events"
        assert time.monotonic() < deadline, f"only {len(records)}/{want} events after the wait"
        time.sleep(0.1)  # poll interval, not synchronisation


def run_landing_scenario(
    tmp_path, client, stream, engine_args=(), max_watch_seconds=None, in_process=True
):
    """Runs the job with ``--streaming`` while the snapshots land one by one.

    After each landing, waits until exactly that stage's expected events are in the
    stream (asserting them), then waits for the job to stop after
    ``--max_watch_seconds``.

    Returns:
        ``(records, lines, code)``: the stream's records, the ``--output_path`` lines and
        the job's exit code.
    """
    max_watch = max_watch_seconds or MAX_WATCH_SECONDS
    make_job = Job if in_process else functools.partial(ProcessJob, log_path=tmp_path / "job.log")
    landing = tmp_path / "landing"
    landing.mkdir()
    write_jsonl(tmp_path / "baseline" / "snapshot=2024-03-01" / "part-0.jsonl", BASELINE)
    config = tmp_path / "activation.json"
    config.write_text(json.dumps(CONFIG))
    job = make_job(
        [
            "--config",
            str(config),
            "--input",
            str(landing / "*" / "*.jsonl"),
            "--baseline",
            str(tmp_path / "baseline" / "*" / "*.jsonl"),
            "--kinesis_stream",
            stream,
            "--kinesis_region",
            "us-east-1",
            "--kinesis_endpoint_url",
            client.meta.endpoint_url,
            "--output_path",
            str(tmp_path / "out" / "events"),
            "--dead_letter_path",
            str(tmp_path / "out" / "dead"),
            "--streaming",
            "--watch_interval",
            "0.2",
            "--max_watch_seconds",
            str(max_watch),
            *engine_args,
        ]
    )
    job.start()
    try:
        landed = []
        for day in SNAPSHOTS:
            # The scenario needs the watch running when a snapshot lands (it stops after
            # --max_watch_seconds); said here rather than as missing events later.
            assert job.is_alive(), f"the job ended (code {job.code}) before {day} landed"
            land_snapshot(landing, day)
            landed.append(day)
            # Every event so far, and only those: each snapshot's events are sent as it
            # lands, so the watch saw every snapshot before it stopped.
            assert wait_for_events(client, stream, job, merge(*landed)) == merge(*landed), day
        job.join(max_watch + WAIT_SECONDS)
    finally:
        if isinstance(job, ProcessJob):
            print(job.output())
            job.kill()
    assert not job.is_alive(), "the streaming job did not stop after --max_watch_seconds"
    records = read_all_records(client, stream)
    lines = []
    for path in glob.glob(str(tmp_path / "out" / "events-*.jsonl")):
        with open(path, "rb") as handle:
            lines.extend(handle.read().splitlines())
    assert not glob.glob(str(tmp_path / "out" / "dead*"))
    return records, lines, job.code
