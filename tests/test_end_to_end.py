"""The whole job, as a user runs it: `python -m pipeline` into a real local Kinesis.

The expected events of the hand-written snapshots below are derived by hand from the
table of docs/contract.md §4, not from the implementation.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os

import pytest

from pipeline.main import main
from tests.support.event_schema import validate_event
from tools.kinesalite import create_stream, local_client, read_all_records
from tools.sample_data import write_snapshots
from tools.stream_check import read_lines

pytestmark = pytest.mark.integration

S1, S2, S3 = "seg-one", "seg-two", "seg-unmapped"
D1, D2, D3 = "2024-01-01", "2024-01-02", "2024-01-03"
CONFIG = {
    "segments": [{"id": S1, "name": "One"}, {"id": S2, "name": "Two"}],
    "profile_key": "primary",
    "identities": {"include": ["email_lc_sha256", "ecid"], "hash": {"email": "email_lc_sha256"}},
    "attributes": ["person.name.firstName"],
    "include_segment_names": True,
}


def person(email, ecid, segments=None, **extra):
    record = {
        "identityMap": {"email": [{"id": email, "primary": True}], "ecid": [{"id": ecid}]},
        "segmentMembership": {"ups": segments or {}},
        "person": {"name": {"firstName": email.split("@")[0].strip().title()}},
    }
    record.update(extra)
    return record


def member(status, when=None):
    entry = {"status": status}
    if when is not None:
        entry["lastQualificationTime"] = when
    return entry


SNAPSHOTS = {
    D1: [
        person(
            " Ann@Example.com",
            "e-a",
            {S1: member("realized", "2023-12-31T10:00:00Z"), S3: member("realized")},
        ),
        person("bob@example.com", "e-b", {S2: member("existing")}),
        person("cy@example.com", "e-c"),
    ],
    D2: [
        person(
            " Ann@Example.com",
            "e-a",
            {
                S1: member("realized", "2023-12-31T10:00:00Z"),
                S2: member("realized", "2024-01-01T22:30:00+01:00"),
            },
        ),
        person("bob@example.com", "e-b", {S2: member("exited", 1704150000000)}),
        person("cy@example.com", "e-c", {S1: member("realized", "2024-01-01T12:00:00.250Z")}),
    ],
    D3: [
        person("bob@example.com", "e-b", {S2: member("realized", "2024-01-02T20:00:00+0000")}),
        person("cy@example.com", "e-c", _deleted=True),
        person("dee@example.com", "e-d", {S1: member("existing", "2024-01-02T08:00:00Z")}),
    ],
}
# (profile key, snapshot day) -> {segment: (status, lastQualificationTime)}
EXPECTED = {
    ("email: Ann@Example.com", D1): {S1: ("realized", "2023-12-31T10:00:00Z")},
    ("email:bob@example.com", D1): {S2: ("realized", "2024-01-01T00:00:00Z")},
    ("email: Ann@Example.com", D2): {S2: ("realized", "2024-01-01T21:30:00Z")},
    ("email:bob@example.com", D2): {S2: ("exited", "2024-01-01T23:00:00Z")},
    ("email:cy@example.com", D2): {S1: ("realized", "2024-01-01T12:00:00Z")},
    ("email: Ann@Example.com", D3): {
        S1: ("exited", "2024-01-03T00:00:00Z"),
        S2: ("exited", "2024-01-03T00:00:00Z"),
    },
    ("email:bob@example.com", D3): {S2: ("realized", "2024-01-02T20:00:00Z")},
    ("email:cy@example.com", D3): {S1: ("exited", "2024-01-03T00:00:00Z")},
    ("email:dee@example.com", D3): {S1: ("realized", "2024-01-02T08:00:00Z")},
}


@pytest.fixture
def aws_env(monkeypatch):
    # Dummy credentials for the local server, through boto3's default chain.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local-test-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def write_inputs(root):
    # Written newest first, and each snapshot split over two files, so that file order
    # cannot stand in for time order.
    for day in sorted(SNAPSHOTS, reverse=True):
        folder = root / f"snapshot={day}"
        folder.mkdir(parents=True)
        for part in range(2):
            with open(folder / f"part-{part}.jsonl", "w", encoding="utf-8") as handle:
                for record in SNAPSHOTS[day][part::2]:
                    handle.write(json.dumps(record) + "\n")


def sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_events_reach_kinesis_exactly_as_specified(tmp_path, kinesalite, aws_env, capsys):
    write_inputs(tmp_path / "in")
    config = tmp_path / "activation.json"
    config.write_text(json.dumps(CONFIG))
    client = local_client(kinesalite.endpoint_url)
    create_stream(client, "e2e", shards=3)

    code = main(
        [
            "--config",
            str(config),
            "--input",
            str(tmp_path / "in" / "*" / "*.jsonl"),
            "--kinesis_stream",
            "e2e",
            "--kinesis_region",
            "us-east-1",
            "--kinesis_endpoint_url",
            kinesalite.endpoint_url,
            "--output_path",
            str(tmp_path / "out" / "events"),
            "--dead_letter_path",
            str(tmp_path / "out" / "dead"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Run summary:" in out

    stream = read_all_records(client, "e2e")
    files = read_lines(str(tmp_path / "out" / "events"))
    # The files hold exactly the bytes that went to the stream.
    assert sorted(r["data"] for r in stream) == sorted(files)
    assert len(stream) == len(EXPECTED)

    keys_by_hash = {sha256(key): key for key, _ in EXPECTED}
    seen = {}
    shard_of_key = {}
    for record in stream:
        event = validate_event(record["data"])
        key = keys_by_hash[record["partition_key"]]
        assert shard_of_key.setdefault(key, record["shard_id"]) == record["shard_id"]
        segments = event["segmentMembership"]["ups"]
        assert all(seg[0] != S3 for seg in segments.items())
        days = {entry["lastQualificationTime"][:10] for entry in segments.values()}
        statuses = {s: (v["status"], v["lastQualificationTime"]) for s, v in segments.items()}
        # Which snapshot an event belongs to is read off the expectation it matches.
        matches = [d for (k, d), exp in EXPECTED.items() if k == key and exp == statuses]
        assert len(matches) == 1, (key, statuses, days)
        seen[(key, matches[0])] = event
        assert {v["name"] for v in segments.values()} <= {"One", "Two"}
        email = key.split(":", 1)[1]
        assert event["identityMap"]["email_lc_sha256"] == [{"id": sha256(email.strip().lower())}]
        assert "email" not in event["identityMap"]
        assert event["person"] == {"name": {"firstName": email.split("@")[0].strip().title()}}
    assert set(seen) == set(EXPECTED)
    # A profile's events are in snapshot order on its shard.
    for key in {k for k, _ in EXPECTED}:
        order = [
            json.loads(r["data"])["eventId"]
            for r in sorted(stream, key=lambda r: int(r["sequence_number"]))
            if r["partition_key"] == sha256(key)
        ]
        expected_order = [seen[(key, d)]["eventId"] for d in (D1, D2, D3) if (key, d) in seen]
        assert order == expected_order
    assert not glob.glob(str(tmp_path / "out" / "dead*"))


def test_sample_data_run_matches_files_and_stream(tmp_path, kinesalite, aws_env, capsys):
    write_snapshots(str(tmp_path / "snap"), profiles=150, snapshots=3, fmt="avro")
    client = local_client(kinesalite.endpoint_url)
    create_stream(client, "e2e-sample", shards=2)
    dead = tmp_path / "out" / "dead"
    code = main(
        [
            "--config",
            str(tmp_path / "snap" / "activation.json"),
            "--input",
            str(tmp_path / "snap" / "snapshot=*" / "part-*.avro"),
            "--kinesis_stream",
            "e2e-sample",
            "--kinesis_endpoint_url",
            kinesalite.endpoint_url,
            "--output_path",
            str(tmp_path / "out" / "events"),
            "--dead_letter_path",
            str(dead),
        ]
    )
    assert code == 0, capsys.readouterr().err
    stream = read_all_records(client, "e2e-sample")
    files = read_lines(str(tmp_path / "out" / "events"))
    assert len(stream) > 150
    assert sorted(r["data"] for r in stream) == sorted(files)
    ids = [json.loads(r["data"])["eventId"] for r in stream]
    assert len(set(ids)) == len(ids)
    for path in glob.glob(str(tmp_path / "out" / "*")):
        assert os.stat(path).st_mode & 0o077 == 0, path
