"""``python -m pipeline replay``: the sink's dead letters sent again (docs/replay.md).

The integration tests run the job against kinesalite behind ``tools/fault_proxy.py`` on
the numbered data set of ``tools/stream_check.py`` (every event names its profile and
snapshot), with some shards' hash range throttled for good so that the events of some
profiles exhaust their retries and are dead-lettered; then they heal (or not) the proxy,
run the replay, and read every shard back like a consumer that drops repeats by
``eventId``.

To keep a throttled record's retries short, the sink's keyword defaults are lowered for
these tests (3 sends, backoffs of at most 50 ms, no adaptive slow-down); the job and the
replay build the sink through those defaults. The retry logic itself is the same.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
import random
import re
import subprocess
import sys

import pytest

from pipeline.main import main as job_main
from pipeline.replay_command import check_inputs, parse_args
from pipeline.replay_command import main as replay_main
from tests.support.dead_letter_schema import validate_dead_letters
from tools.kinesalite import read_all_records
from tools.stream_check import (
    check_numbered_stream,
    numbered_glob,
    numbered_pairs,
    partition_key,
    read_lines,
    write_numbered_snapshots,
)
from transforms.kinesis.dead_letter_files import (
    in_replay_order,
    is_dead_letter_file,
    parse_letter,
    scan_dead_letters,
    shown_reason,
)
from transforms.kinesis.dead_letter_files import read_lines as read_letter_lines
from transforms.kinesis.sink import WriteToKinesisStream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = 2**128 - 1
# The batch dead-letter files of a prefix (not a replay's PREFIX-replay-<time>-... files).
SHARDS = "-[0-9][0-9][0-9][0-9][0-9]-of-*.jsonl"
FAST_SINK = {
    "max_attempts": 3,
    "backoff_base_seconds": 0.01,
    "backoff_max_seconds": 0.05,
    "adaptive_rate_limit": False,
}


@pytest.fixture
def fast_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink gives a throttled record up after 3 quick sends (see the module doc)."""
    for name, value in FAST_SINK.items():
        monkeypatch.setitem(WriteToKinesisStream.__init__.__kwdefaults__, name, value)


def md5_int(key: str) -> int:
    return int.from_bytes(hashlib.md5(key.encode()).digest(), "big")


def keys_in(profiles: int, upper: int) -> set[str]:
    """Partition keys of the numbered profiles whose hash is at most ``upper``."""
    keys = {partition_key(i) for i in range(profiles)}
    return {k for k in keys if md5_int(k) <= upper}


def read_letters(prefix_glob: str) -> list[dict]:
    """Every dead letter of the files matching the glob, files by name, lines in order;
    each checked against schemas/dead_letter.schema.json (the job's and the replay's)."""
    letters = []
    for path in sorted(glob.glob(prefix_glob)):
        with open(path, "rb") as handle:
            letters.extend(validate_dead_letters(line for line in handle if line.strip()))
    return letters


def run_job(config: str, root, stream: str, endpoint: str, *extra: str) -> int:
    return job_main(
        [
            "--config",
            config,
            "--input",
            numbered_glob(str(root)),
            "--kinesis_stream",
            stream,
            "--kinesis_endpoint_url",
            endpoint,
            "--output_path",
            str(root / "out" / "events"),
            "--dead_letter_path",
            str(root / "out" / "dead"),
            *extra,
        ]
    )


def replay_args(dead: str, stream: str, endpoint: str, *extra: str) -> list[str]:
    return [
        "--dead_letter_path",
        dead,
        "--kinesis_stream",
        stream,
        "--kinesis_region",
        "us-east-1",
        "--kinesis_endpoint_url",
        endpoint,
        *extra,
    ]


def by_key(records: list[dict]) -> dict[str, list[bytes]]:
    """The data of each partition key, in stream (per-shard sequence) order."""
    out: dict[str, list[bytes]] = collections.defaultdict(list)
    for record in records:
        out[record["partition_key"]].append(record["data"])
    return out


def summary_value(stdout: str, label: str) -> int:
    """A figure of the replay summary (``  <label>  <value>``)."""
    found = re.findall(rf"^  {re.escape(label)} +(\d+)$", stdout, re.MULTILINE)
    assert len(found) == 1, (label, stdout)
    return int(found[0])


def letter_pairs(letters: list[dict]) -> collections.Counter:
    return collections.Counter((d["partition_key"], d["raw"].encode()) for d in letters)


def throttled_job(tmp_path, stream: str, proxy, profiles: int, snapshots: int, upper: int):
    """Runs the job with the hash range [0, upper] throttled for good; returns its letters."""
    config = write_numbered_snapshots(str(tmp_path), profiles, snapshots)
    proxy.throttle_shards([(0, upper)], requests=None)
    assert run_job(config, tmp_path, stream, proxy.endpoint_url) == 0
    letters = read_letters(str(tmp_path / "out" / "dead") + SHARDS)
    blocked = keys_in(profiles, upper)
    assert blocked, "the throttled range holds no profile: pick another range"
    # Each profile's first event exhausted its retries; its later ones are blocked
    # behind it (the sink never lets them overtake it).
    assert {d["reason"] for d in letters} == {"retries_exhausted", "blocked_by_earlier_failure"}
    assert {d["stage"] for d in letters} == {"kinesis_sink"}
    assert {d["partition_key"] for d in letters} == blocked
    assert len(letters) == len(blocked) * snapshots
    return letters, blocked


@pytest.mark.integration
def test_replay_after_healing_delivers_every_event_in_order_with_same_ids(
    tmp_path, kinesis_stream, fault_proxy, fast_sink, capsys
):
    client, stream = kinesis_stream
    profiles, snapshots = 200, 3
    letters, blocked = throttled_job(tmp_path, stream, fault_proxy, profiles, snapshots, TOP // 10)
    before = read_all_records(client, stream)
    assert not blocked & {r["partition_key"] for r in before}
    capsys.readouterr()

    fault_proxy.clear()
    sent_before = fault_proxy.snapshot().put_records_entries
    new = str(tmp_path / "replayed" / "dead")
    dead = str(tmp_path / "out" / "dead")
    code = replay_main(
        replay_args(dead, stream, fault_proxy.endpoint_url, "--new_dead_letter_path", new)
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert summary_value(out.out, "dead letters read") == len(letters), out.out
    assert summary_value(out.out, "records re-sent") == len(letters), out.out
    assert summary_value(out.out, "dead-lettered again") == 0, out.out
    # Only the letters were sent, each once (no throttling left, so no retry).
    assert fault_proxy.snapshot().put_records_entries - sent_before == len(letters)

    records = read_all_records(client, stream)
    report = check_numbered_stream(records, numbered_pairs(profiles, snapshots))
    # Every event of the run is there, in snapshot order per profile, one eventId each.
    assert report.problems() == {}
    assert report.distinct == profiles * snapshots
    # The very bytes of the event files: eventIds and everything else unchanged.
    assert sorted(report.events) == sorted(read_lines(str(tmp_path / "out" / "events")))
    # A blocked profile's events reached its shard in the order of its dead letters,
    # which is snapshot order (checked by the report above).
    streamed = by_key(records)
    for key in blocked:
        assert streamed[key] == [d["raw"].encode() for d in letters if d["partition_key"] == key]
    assert glob.glob(new + "*") == []


@pytest.mark.integration
def test_replay_still_failing_writes_what_was_not_delivered_to_a_new_prefix(
    tmp_path, kinesis_stream, fault_proxy, fast_sink, capsys
):
    client, stream = kinesis_stream
    profiles, snapshots = 200, 3
    letters, blocked = throttled_job(tmp_path, stream, fault_proxy, profiles, snapshots, TOP // 10)
    dead = str(tmp_path / "out" / "dead")
    capsys.readouterr()

    # Half healed: a narrower range still throttles.
    fault_proxy.clear()
    still_blocked = keys_in(profiles, TOP // 20)
    assert still_blocked and blocked - still_blocked, "ranges hold no profile: pick others"
    fault_proxy.throttle_shards([(0, TOP // 20)], requests=None)
    code = replay_main(replay_args(dead, stream, fault_proxy.endpoint_url))
    out = capsys.readouterr()
    assert code == 1
    [new_prefix_file, *_] = sorted(glob.glob(dead + "-replay-*.jsonl")) or [None]
    assert new_prefix_file is not None, os.listdir(tmp_path / "out")
    new_prefix = new_prefix_file.rsplit("-00000-of-", 1)[0]
    again = read_letters(new_prefix + SHARDS)
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {len(again)} of {len(letters)} records were dead-lettered again, in "
        f"{new_prefix}-*.jsonl"
    ], out.err
    assert "Traceback" not in out.err
    # The input letters are untouched.
    assert read_letters(dead + SHARDS) == letters

    # What was dead-lettered again is exactly what did not reach the stream.
    streamed = by_key(read_all_records(client, stream))
    delivered = {data for datas in streamed.values() for data in datas}
    not_delivered = [d for d in letters if d["raw"].encode() not in delivered]
    assert {d["partition_key"] for d in not_delivered} == still_blocked
    assert letter_pairs(again) == letter_pairs(not_delivered)
    assert {(d["stage"], d["reason"]) for d in again} <= {
        ("kinesis_sink", "retries_exhausted"),
        ("kinesis_sink", "blocked_by_earlier_failure"),
    }
    # ... in the same order per profile as the letters they came from.
    for key in still_blocked:
        assert [d["raw"] for d in again if d["partition_key"] == key] == [
            d["raw"] for d in letters if d["partition_key"] == key
        ]
    for key in blocked - still_blocked:
        assert streamed[key] == [d["raw"].encode() for d in letters if d["partition_key"] == key]

    # Healed: the new prefix is replayed in turn, and the stream is complete.
    fault_proxy.clear()
    assert replay_main(replay_args(new_prefix, stream, fault_proxy.endpoint_url)) == 0
    report = check_numbered_stream(
        read_all_records(client, stream), numbered_pairs(profiles, snapshots)
    )
    assert report.problems() == {}
    assert sorted(report.events) == sorted(read_lines(str(tmp_path / "out" / "events")))


@pytest.mark.integration
def test_input_dead_letters_are_refused_and_nothing_is_sent(
    tmp_path, kinesis_stream, fault_proxy, capsys
):
    client, stream = kinesis_stream
    profiles, snapshots = 50, 2
    config = write_numbered_snapshots(str(tmp_path), profiles, snapshots)
    # One damaged record that names its profile: an input dead letter (stage read).
    with open(
        tmp_path / "snapshot=2024-01-02" / "part-0000.jsonl", "a", encoding="utf-8"
    ) as handle:
        handle.write(
            '{"identityMap":{"ecid":[{"id":"9999999999","primary":true}]},'
            '"segmentMembership":{"ups":{"s1":{"status":"qualified"}}}}\n'
        )
    # Every event over a (too small) record limit: the sink dead-letters them all.
    code = run_job(
        config, tmp_path, stream, fault_proxy.endpoint_url, "--kinesis_max_record_bytes", "200"
    )
    assert code == 0, capsys.readouterr().err
    dead = str(tmp_path / "out" / "dead")
    letters = read_letters(dead + SHARDS)
    stages = collections.Counter(d["stage"] for d in letters)
    assert stages == {"kinesis_sink": profiles * snapshots, "read": 1}, stages
    assert fault_proxy.snapshot().put_records_requests == 0

    # Through the real command line: python -m pipeline replay.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "replay",
            *replay_args(dead, stream, fault_proxy.endpoint_url),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"1 of {len(letters)} dead letters are not from the Kinesis sink" in lines[0]
    assert 'read "invalid_record": 1' in lines[0]
    assert "re-run of the job" in lines[0] and "Nothing was sent" in lines[0]
    # No quoted input in the line (the reason's detail may hold personal data).
    assert "qualified" not in lines[0]
    assert fault_proxy.snapshot().put_records_requests == 0
    assert read_all_records(client, stream) == []
    assert glob.glob(dead + "-replay-*") == []

    # The documented way out: keep the sink's lines under a new prefix, replay those
    # with the stream's real record limit.
    sink_only = str(tmp_path / "sink-only" / "dead")
    os.makedirs(os.path.dirname(sink_only))
    with open(sink_only + "-00000-of-00001.jsonl", "w", encoding="utf-8") as handle:
        for letter in letters:
            if letter["stage"] == "kinesis_sink":
                handle.write(json.dumps(letter, ensure_ascii=False) + "\n")
    assert replay_main(replay_args(sink_only, stream, fault_proxy.endpoint_url)) == 0
    report = check_numbered_stream(
        read_all_records(client, stream), numbered_pairs(profiles, snapshots)
    )
    assert report.problems() == {}
    assert sorted(report.events) == sorted(read_lines(str(tmp_path / "out" / "events")))


# ---------------------------------------------------------------- without a stream


def write_letters(prefix: str, letters: list[dict], suffix: str = "-00000-of-00001.jsonl") -> str:
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    path = prefix + suffix
    with open(path, "w", encoding="utf-8") as handle:
        for letter in letters:
            handle.write(json.dumps(letter) + "\n")
    return path


def sink_letter(key: str, n: int) -> dict:
    return {
        "stage": "kinesis_sink",
        "reason": "retries_exhausted",
        "error": "x",
        "file": None,
        "raw": json.dumps({"eventId": f"{n:064x}"}),
        "partition_key": key,
    }


def test_usage_errors_are_one_line_and_send_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    dead = str(tmp_path / "dead")
    write_letters(dead, [sink_letter("k", 1)])
    base = replay_args(dead, "s", "http://127.0.0.1:9")
    cases = {
        "no files": (
            replay_args(str(tmp_path / "none"), "s", "http://127.0.0.1:9"),
            "no dead-letter files match",
        ),
        "same prefix": ([*base, "--new_dead_letter_path", dead], "must differ"),
        "existing new prefix": (
            [*base, "--new_dead_letter_path", str(tmp_path / "de")],
            "files exist there already",
        ),
        "job flag": ([*base, "--config", "c.json"], "--config does not apply to a replay"),
        "unknown flag": ([*base, "--no_such_flag"], "unknown flag --no_such_flag"),
        "bad value": ([*base, "--kinesis_max_record_bytes", "x"], "invalid int value"),
        "no stream": (["--dead_letter_path", dead], "--kinesis_stream is required"),
    }
    for name, (argv, message) in cases.items():
        assert replay_main(argv) == 2, name
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert message in lines[0], (name, lines[0])
    # A line that is not a dead letter: named by file and line, its content not shown.
    write_letters(str(tmp_path / "bad"), [sink_letter("k", 1)])
    with open(str(tmp_path / "bad") + "-00000-of-00001.jsonl", "a") as handle:
        handle.write("secret-looking text\n")
    assert replay_main(replay_args(str(tmp_path / "bad"), "s", "http://127.0.0.1:9")) == 2
    err = capsys.readouterr().err
    assert "line 2 is not JSON" in err and "secret" not in err.replace(str(tmp_path), "")


def test_dead_letter_file_names():
    prefix = "/data/out/dead"
    assert is_dead_letter_file(prefix, prefix + "-00000-of-00003.jsonl")
    assert is_dead_letter_file(prefix, prefix + "-run002-00001-of-00002.jsonl")
    assert is_dead_letter_file(prefix, prefix + "-20240131T060000123456Z-0123456789ab.jsonl")
    # A replay's own output is another prefix's, as are Beam's temporary files.
    assert not is_dead_letter_file(prefix, prefix + "-replay-20240131T060000Z-00000-of-00001.jsonl")
    assert not is_dead_letter_file(prefix, prefix + "-00000-of-00001.jsonl.tmp")
    assert not is_dead_letter_file(prefix, "/data/out/other-00000-of-00001.jsonl")


def test_replay_order_is_file_then_line_whatever_the_arrival_order():
    records = [(f, n, f"{f}:{n}".encode()) for f in range(3) for n in range(1, 6)]
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    assert shuffled != records
    assert [data for _, data in in_replay_order(("k", shuffled))] == [r[2] for r in records]


# Read letters as versions before reason codes wrote them: the message in reason, no error.
OLD_READ_LETTERS = [
    {
        "stage": "read",
        "reason": "segmentMembership.ups.s1: unknown status 'qualified'",
        "file": "/in/snapshot=2024-01-02/part-0.jsonl",
        "raw": '{"identityMap": {"email": [{"id": "a@b.c", "primary": true}]}}',
        "profile_state": "kept",
    },
    {
        "stage": "read",
        "reason": "line is not valid JSON: Expecting value at column 1",
        "file": "/in/snapshot=2024-01-02/part-0.jsonl",
        "raw": "{broken",
        "profile_state": "unknown",
        "snapshot_ms": 1704153600000,
    },
]


def test_dead_letter_files_of_earlier_versions_are_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    dead = str(tmp_path / "old" / "dead")
    # The sink's letters have kept their shape; the read letters had no error.
    path = write_letters(dead, [sink_letter("k", 1), *OLD_READ_LETTERS])
    letters = [parse_letter(line, path, n) for n, line in read_letter_lines(path)]
    validate_dead_letters(letters)
    assert letters[0] == sink_letter("k", 1)
    assert [(d["reason"], d["error"]) for d in letters[1:]] == [
        ("invalid_record", OLD_READ_LETTERS[0]["reason"]),
        ("invalid_json", OLD_READ_LETTERS[1]["reason"]),
    ]
    scan = scan_dead_letters([path], 1_048_576)
    assert scan.letters == 3
    assert scan.not_replayable == {("read", "invalid_record"): 1, ("read", "invalid_json"): 1}
    # Refused as before, counted by code, no input quoted.
    assert replay_main(replay_args(dead, "s", "http://127.0.0.1:9")) == 2
    err = capsys.readouterr().err
    assert 'read "invalid_record": 1' in err and 'read "invalid_json": 1' in err, err
    assert "qualified" not in err
    # An earlier version's sink letters alone pass every check before sending.
    sink_only = str(tmp_path / "sink-only" / "dead")
    write_letters(sink_only, [sink_letter("k", 1), sink_letter("k", 2)])
    settings, _ = parse_args(replay_args(sink_only, "s", "http://127.0.0.1:9"))
    assert check_inputs(settings).letters == 2


def test_shown_reason_keeps_no_quoted_input():
    assert shown_reason({"reason": 'line is not valid JSON: {"email": "a@b"'}) == (
        "line is not valid JSON"
    )
    assert shown_reason({"reason": "late_snapshot"}) == "late_snapshot"
    assert len(shown_reason({"reason": "x" * 500})) == 60
