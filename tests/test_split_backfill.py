"""Split backfills (``--snapshots_per_run``): the same events as one run, run by run.

The reference is the job itself run once over all the snapshots (its rules are tested
on their own elsewhere); what these tests prove is that splitting changes nothing a
consumer sees, and what happens when a later run fails.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile

import pytest

from pipeline.main import main
from tests.support.event_schema import validate_event
from tools.kinesalite import read_all_records
from tools.sample_data import write_snapshots
from tools.stream_check import read_lines


@pytest.fixture(scope="module")
def backfill(tmp_path_factory):
    """Six daily snapshots (JSON Lines, with churn, absences, tombstones, duplicates) and
    the events of one unsplit run over them."""
    root = tmp_path_factory.mktemp("backfill")
    write_snapshots(str(root / "data"), profiles=300, snapshots=6, segments=8, fmt="jsonl")
    config = str(root / "data" / "activation.json")
    # Attribute and identity triggers on, so that carried attributes and identities matter.
    with open(config, encoding="utf-8") as handle:
        activation = json.load(handle)
    activation["triggers"] = {"segments": True, "attributes": True, "identities": True}
    with open(config, "w", encoding="utf-8") as handle:
        json.dump(activation, handle)
    inputs = str(root / "data" / "snapshot=*" / "*.jsonl")
    whole = str(root / "whole" / "events")
    assert main(["--config", config, "--input", inputs, "--output_path", whole]) == 0
    events = sorted(read_lines(whole))
    assert len(events) > 600
    return config, inputs, events, root


@pytest.mark.parametrize("per_run", [1, 2, 4])
def test_split_runs_give_exactly_the_events_of_one_run(backfill, tmp_path, per_run, capsys):
    config, inputs, expected, _ = backfill
    out = tmp_path / "events"
    code = main(
        [
            "--config",
            config,
            "--input",
            inputs,
            "--output_path",
            str(out),
            "--snapshots_per_run",
            str(per_run),
        ]
    )
    assert code == 0, capsys.readouterr().err
    runs = -(-6 // per_run)
    names = sorted(os.path.basename(p) for p in glob.glob(str(out) + "*"))
    assert names == [f"events-run{n:03d}-00000-of-00001.jsonl" for n in range(1, runs + 1)]
    assert sorted(read_lines(str(out))) == expected
    assert "events" in capsys.readouterr().out


def test_baseline_counts_as_a_snapshot_of_the_first_run(backfill, tmp_path):
    config, _, _, root = backfill
    days = sorted(glob.glob(str(root / "data" / "snapshot=*")))
    baseline = os.path.join(days[0], "*.jsonl")
    inputs = [arg for day in days[1:] for arg in ("--input", os.path.join(day, "*.jsonl"))]
    whole, split = tmp_path / "whole" / "events", tmp_path / "split" / "events"
    common = ["--config", config, "--baseline", baseline, *inputs]
    assert main([*common, "--output_path", str(whole)]) == 0
    assert main([*common, "--output_path", str(split), "--snapshots_per_run", "2"]) == 0
    expected = sorted(read_lines(str(whole)))
    assert expected
    assert sorted(read_lines(str(split))) == expected


@pytest.mark.integration
def test_split_backfill_into_kinesis_sends_run_after_run(backfill, kinesis_stream, tmp_path):
    config, inputs, expected, _ = backfill
    client, stream = kinesis_stream
    out = tmp_path / "events"
    code = main(
        [
            "--config",
            config,
            "--input",
            inputs,
            "--kinesis_stream",
            stream,
            "--kinesis_endpoint_url",
            client.meta.endpoint_url,
            "--output_path",
            str(out),
            "--snapshots_per_run",
            "2",
        ]
    )
    assert code == 0
    records = read_all_records(client, stream)
    assert sorted(r["data"] for r in records) == expected
    # Which run sent an event, from that run's event file.
    run_of = {}
    for number in (1, 2, 3):
        for line in read_lines(f"{out}-run{number:03d}"):
            run_of[json.loads(line)["eventId"]] = number
    runs_by_key: dict[str, list[int]] = {}
    for record in sorted(records, key=lambda r: int(r["sequence_number"])):
        event = validate_event(record["data"])
        runs_by_key.setdefault(record["partition_key"], []).append(run_of[event["eventId"]])
    assert len(runs_by_key) > 100
    assert any(len(set(runs)) == 3 for runs in runs_by_key.values())
    # A profile's events of a later run come after those of earlier runs on its shard.
    for runs in runs_by_key.values():
        assert runs == sorted(runs)


def _guard_inputs(root) -> str:
    # Day 3 keeps 40 of the 150 profiles of days 1 and 2: a mass exit in the second run.
    for day, count in (("2024-01-01", 150), ("2024-01-02", 150), ("2024-01-03", 40)):
        folder = root / f"snapshot={day}"
        folder.mkdir(parents=True)
        with open(folder / "part-0.jsonl", "w", encoding="utf-8") as handle:
            for i in range(count):
                record = {
                    "identityMap": {"email": [{"id": f"p{i}@x.com", "primary": True}]},
                    "segmentMembership": {"ups": {"s1": {"status": "realized"}}},
                }
                handle.write(json.dumps(record) + "\n")
    config = root / "activation.json"
    config.write_text(json.dumps({"segments": [{"id": "s1"}]}))
    return str(config)


def test_mass_exit_in_a_later_run_stops_there_and_says_what_was_sent(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    config = _guard_inputs(tmp_path / "in")
    out = tmp_path / "out" / "events"
    code = main(
        [
            "--config",
            config,
            "--input",
            str(tmp_path / "in" / "snapshot=*" / "*.jsonl"),
            "--output_path",
            str(out),
            "--snapshots_per_run",
            "2",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("  the full traceback is in ")
    assert err[-2].startswith(
        "error: the pipeline failed: backfill run 2 of 2 (snapshots 2024-01-03T00:00:00Z to "
        "2024-01-03T00:00:00Z) failed (run 1 was completed and sent): mass exit guard: "
        "snapshot 2024-01-03T00:00:00Z is missing 110 of the 150 profiles"
    ), err
    # Run 1 sent its 150 entries; run 2 sent nothing; the carried states are gone.
    assert len(read_lines(str(out) + "-run001")) == 150
    assert not glob.glob(str(out) + "-run002*")
    # Only the failure report is left in the temp folder (no carried states).
    assert [n.startswith("segment-events-failure-") for n in os.listdir(tmp_path / "tmp")] == [True]


def test_carried_states_are_removed_after_a_run(backfill, tmp_path, monkeypatch):
    config, inputs, _, _ = backfill
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    args = ["--config", config, "--input", inputs, "--output_path", str(tmp_path / "o")]
    assert main([*args, "--snapshots_per_run", "3"]) == 0
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--snapshots_per_run", "0"], "--snapshots_per_run must be at least 1"),
        (["--snapshots_per_run", "2", "--streaming"], "only applies to batch runs"),
        (
            ["--snapshots_per_run", "2", "--snapshot_time_field", "t"],
            "cannot be used with --snapshot_time_field",
        ),
    ],
)
def test_invalid_split_flags_are_usage_errors(backfill, extra, message, capsys):
    config, inputs, _, _ = backfill
    code = main(["--config", config, "--input", inputs, "--output_path", "/nonexistent/o", *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
