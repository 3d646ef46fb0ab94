"""ComputeBatchTransitions on the DirectRunner (FnApiRunner): rules and guard."""

from __future__ import annotations

import logging
import random

import apache_beam as beam
import pytest
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.runners import OfflineDirectRunner
from transforms.config import parse_config
from transforms.segments.codecs import (
    ShuffleCodec,
    decode_record,
    decode_state,
    encode_record,
    encode_state,
    presence_of,
)
from transforms.segments.guard import check_mass_exit
from transforms.segments.state import (
    ProfileState,
)
from transforms.segments.transitions import ComputeBatchTransitions, MassExitError

DAY = 86_400_000
T1, T2, T3, T4 = (1706659200000 + i * DAY for i in range(4))  # 2024-01-31 .. 2024-02-03
CONFIG = parse_config({"segments": [{"id": "a"}, {"id": "b"}, {"id": "x", "namespace": "ext"}]})
IDS = {"email": ["p@example.com"]}


def rec(snapshot_ms, segments=None, **flags):
    return {
        "snapshot_ms": snapshot_ms,
        "baseline": flags.get("baseline", False),
        "deleted": flags.get("deleted", False),
        "segments": segments or {},
        "identities": flags.get("identities", IDS),
        "attributes": flags.get("attributes", {}),
        "file": flags.get("file", f"snapshot={snapshot_ms}/part-0.json"),
    }


def ev(snapshot_ms, segments, identities=IDS, attributes=None):
    return {
        "snapshot_ms": snapshot_ms,
        "segments": segments,
        "identities": identities,
        "attributes": attributes or {},
    }


def run_batch(records, config=CONFIG, allow_mass_exit=False, expected=None, dead=()):
    """Runs the transform; asserts transitions (non-empty) and dead letters; returns metrics."""
    assert expected, "a test must expect some transitions"
    pipeline = test_pipeline.TestPipeline(runner=OfflineDirectRunner())
    result = (
        pipeline
        | beam.Create(records, reshuffle=False)
        | ComputeBatchTransitions(config, allow_mass_exit=allow_mass_exit)
    )
    assert_that(result.transitions, equal_to(expected), label="transitions")
    assert_that(result.dead_letters, equal_to(list(dead)), label="dead letters")
    run = pipeline.run()
    run.wait_until_finish()
    counters = run.metrics().query(MetricsFilter().with_namespace("segment_events"))["counters"]
    return {c.key.metric.name: c.committed for c in counters}


# The timeline of the docstring, plus a second profile, a duplicate and a tombstone.
TIMELINE = [
    ("p1", rec(T1, {"ups": {"a": ["realized", 100]}})),
    ("p1", rec(T2, {"ups": {"a": ["existing", 100]}})),
    # p1 absent from T3
    ("p1", rec(T4, {"ups": {"a": ["realized", None]}})),
    ("p2", rec(T1, {"ups": {"b": ["existing", None]}, "ext": {"x": ["realized", 5]}})),
    ("p2", rec(T2, {"ups": {"b": ["exited", 200]}, "ext": {"x": ["realized", 5]}})),
    # duplicate of p2 in T2 (another file): union, latest entry wins
    ("p2", rec(T2, {"ups": {"a": ["realized", 300]}}, file="snapshot=T2/part-1.json")),
    ("p2", rec(T3, {}, deleted=True, identities={})),
    ("p2", rec(T4, {"ups": {"b": ["realized", 400]}})),
]
TIMELINE_EVENTS = [
    ("p1", ev(T1, {"ups": {"a": ["realized", 100]}})),
    ("p1", ev(T3, {"ups": {"a": ["exited", T3]}})),
    ("p1", ev(T4, {"ups": {"a": ["realized", T4]}})),
    ("p2", ev(T1, {"ext": {"x": ["realized", 5]}, "ups": {"b": ["realized", T1]}})),
    ("p2", ev(T2, {"ups": {"a": ["realized", 300], "b": ["exited", 200]}})),
    ("p2", ev(T3, {"ext": {"x": ["exited", T3]}, "ups": {"a": ["exited", T3]}})),
    ("p2", ev(T4, {"ups": {"b": ["realized", 400]}})),
]


def test_batch_rules_in_any_input_order():
    records = TIMELINE[:]
    random.Random(5).shuffle(records)
    counters = run_batch(records, expected=TIMELINE_EVENTS)
    assert counters["duplicate_records_merged"] == 1
    assert counters["profiles_absent_exits"] == 1
    assert counters["profiles_deleted"] == 1
    # Entries and exits are counted where events are formatted, once.
    assert "transition_events" not in counters and "transitions_entered" not in counters


def test_rereading_snapshots_emits_nothing_new():
    # every file read twice: the same events, the copies counted as merged duplicates
    counters = run_batch(TIMELINE + TIMELINE, expected=TIMELINE_EVENTS)
    assert counters["duplicate_records_merged"] == len(TIMELINE) + 1


def test_baseline_seeds_state_and_emits_nothing():
    records = [
        ("p1", rec(T1, {"ups": {"a": ["realized", 1], "b": ["realized", 2]}}, baseline=True)),
        ("p2", rec(T1, {"ups": {"a": ["realized", 1]}}, baseline=True)),
        ("p1", rec(T2, {"ups": {"a": ["existing", 1]}})),
        # p2 absent from the input: exits; p3 is new: entries
        ("p3", rec(T2, {"ups": {"b": ["realized", 3]}})),
    ]
    run_batch(
        records,
        expected=[
            ("p1", ev(T2, {"ups": {"b": ["exited", T2]}})),
            ("p2", ev(T2, {"ups": {"a": ["exited", T2]}})),
            ("p3", ev(T2, {"ups": {"b": ["realized", 3]}})),
        ],
    )


def test_attribute_trigger_in_pipeline():
    config = parse_config(
        {"segments": [{"id": "a"}], "attributes": ["tier"], "triggers": {"attributes": True}}
    )
    records = [
        ("p1", rec(T1, {"ups": {"a": ["realized", 1]}}, attributes={"tier": "gold"})),
        ("p1", rec(T2, {"ups": {"a": ["realized", 1]}}, attributes={"tier": "silver"})),
        ("p1", rec(T3, {"ups": {"a": ["realized", 1]}}, attributes={"tier": "silver"})),
    ]
    run_batch(
        records,
        config,
        expected=[
            ("p1", ev(T1, {"ups": {"a": ["realized", 1]}}, attributes={"tier": "gold"})),
            ("p1", ev(T2, {"ups": {"a": ["existing", 1]}}, attributes={"tier": "silver"})),
        ],
    )


# ------------------------------------------------------------------ mass-exit guard


def truncated_run(tracked=150, kept=40):
    """``tracked`` profiles at T1, only ``kept`` of them at T2 (plus a tombstone)."""
    records = [(f"p{i}", rec(T1, {"ups": {"a": ["realized", 1]}})) for i in range(tracked)]
    records += [(f"p{i}", rec(T2, {"ups": {"a": ["realized", 1]}})) for i in range(kept)]
    records.append((f"p{kept}", rec(T2, deleted=True)))  # explicit: not counted as absent
    return records


class _AppendToFile(beam.DoFn):
    """Stands where a sink would be: appends each element it receives to a file.

    A file, not a list: the DoFn is pickled, so a list captured in a closure would stay
    empty whatever reached the step.
    """

    def __init__(self, path: str) -> None:
        self._path = path

    def process(self, element):
        with open(self._path, "a", encoding="utf-8") as out:
            out.write(repr(element) + "\n")


def _delivered(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


@pytest.mark.parametrize("allow", [False, True])
def test_mass_exit_fails_the_run_and_sends_nothing(tmp_path, allow):
    delivered = tmp_path / "delivered.txt"
    pipeline = test_pipeline.TestPipeline(runner=OfflineDirectRunner())
    result = (
        pipeline
        | beam.Create(truncated_run())
        | ComputeBatchTransitions(CONFIG, allow_mass_exit=allow)
    )
    _ = result.transitions | beam.ParDo(_AppendToFile(str(delivered)))
    if allow:
        # The control: the same step does receive the transitions when the guard lets
        # them through (150 entries; 109 exits by absence and 1 by tombstone).
        pipeline.run().wait_until_finish()
        assert len(_delivered(delivered)) == 150 + 109 + 1
        return
    with pytest.raises(MassExitError) as failure:
        pipeline.run().wait_until_finish()
    message = str(failure.value)
    assert "2024-02-01T00:00:00Z" in message
    assert "109 of the 150" in message and "0.727" in message
    assert "--allow_mass_exit" in message
    assert "\n" not in message
    assert _delivered(delivered) == []


def test_allow_mass_exit_overrides(caplog):
    expected = [(f"p{i}", ev(T1, {"ups": {"a": ["realized", 1]}})) for i in range(150)]
    expected += [(f"p{i}", ev(T2, {"ups": {"a": ["exited", T2]}})) for i in range(40, 150)]
    with caplog.at_level(logging.WARNING, logger="transforms.segments.transitions"):
        counters = run_batch(truncated_run(), allow_mass_exit=True, expected=expected)
    assert counters["profiles_absent_exits"] == 109
    assert any("mass exit allowed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("counts", "fails"),
    [
        ({T2: [99, 99]}, False),  # below 100 tracked profiles: ignored
        ({T2: [100, 50]}, False),  # exactly the fraction: allowed
        ({T2: [100, 51]}, True),
        ({T2: [1000, 10], T3: [1000, 600]}, True),
        ({}, False),
    ],
)
def test_check_mass_exit(counts, fails):
    if fails:
        with pytest.raises(MassExitError, match="max_exit_fraction 0.5"):
            check_mass_exit(counts, 0.5)
        assert check_mass_exit(counts, 0.5, allow_mass_exit=True)
    else:
        assert check_mass_exit(counts, 0.5)


def test_state_encoding_round_trips():
    state = ProfileState(
        T2,
        False,
        {"ups": {"a": ["realized", 1], "b": ["exited", T1]}},
        {"email": ["x"]},
        {"tier": "gold", "n": 1.5},
        ["0123456789abcdef"],
    )
    data = encode_state(state)
    assert isinstance(data, bytes)
    assert decode_state(data) == state


@pytest.mark.parametrize(
    "record",
    [
        rec(T1, {"ups": {"a": ["realized", 1]}}),
        rec(T2, deleted=True, baseline=True, identities={}),
        rec(T3, {"ext": {"x": ["exited", None]}}, attributes={"a.b": [1, {"c": None}], "d": 1.5}),
    ],
)
def test_record_encoding_round_trips(record):
    data = encode_record(record)
    assert isinstance(data, bytes)
    assert decode_record(data) == record
    # Smaller than the same dict in the runner's default encoding (no field names).
    assert len(data) < len(FastPrimitivesCoder().encode(record))


_SHUFFLE_RECORDS = [
    rec(T1, {"ups": {"a": ["realized", 1], "b": ["existing", None]}, "ext": {"x": ["exited", 5]}}),
    rec(T2, deleted=True, baseline=True, identities={}),
    {**rec(T3, attributes={"a.b": [1, {"c": None}], "d": 1.5}), "keep": True},
    # A segment outside the table and a file outside the list are kept by name.
    rec(T4, {"other": {"z": ["realized", 2]}}, file="elsewhere/part-9.json"),
]


@pytest.mark.parametrize("record", _SHUFFLE_RECORDS)
def test_shuffle_values_round_trip(record):
    files = [f"snapshot={t}/part-0.json" for t in (T1, T2, T3, T4)]
    codec = ShuffleCodec(CONFIG, files)
    data = codec.encode(record)
    assert codec.decode(data) == (None, record)
    assert presence_of(data) == (record["snapshot_ms"], record["deleted"])
    # Mapped segments and listed files travel as small ints, not names.
    assert b"part-0" not in data or record["file"] not in files
    if "a" in record["segments"].get("ups", {}):
        assert len(data) < len(encode_record(record)) - len("snapshot=0/part-0.json")


def test_a_config_mapping_every_segment_still_round_trips():
    codec = ShuffleCodec(parse_config({"segments": "*"}))
    record = _SHUFFLE_RECORDS[0]
    assert codec.decode(codec.encode(record)) == (None, record)
