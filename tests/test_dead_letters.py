"""The one dead-letter shape (transforms/dead_letters.py), its JSON Schema and its docs.

The letters each stage really produces are checked against the schema where they are
produced: tests/test_read.py, test_bad_records.py and test_reliability_input.py (read),
test_transitions_streaming.py (transitions: late_snapshot, mass_exit_held,
incomplete_snapshot), test_kinesis_writer.py and test_kinesis_sink.py (the sink),
test_replay.py (the job's files, a replay's new letters, and letters of earlier versions).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from tests.support.dead_letter_schema import load_schema, schema_errors, validate_dead_letter
from transforms import dead_letters
from transforms.dead_letters import (
    KINESIS_SINK,
    READ,
    REASONS,
    TRANSITIONS,
    DeadLetter,
    read_dead_letter,
    sink_dead_letter,
    transitions_dead_letter,
    upgrade,
)
from transforms.snapshots.profiles import RecordError

ROOT = Path(__file__).resolve().parents[1]


def test_every_builder_gives_a_letter_of_the_schema():
    letters = [
        read_dead_letter("invalid_record", "x: bad", file="f", raw={"a": 1}, kept=True),
        read_dead_letter("invalid_json", "bad", file="f", raw=b"{\xff", kept=False),
        read_dead_letter(
            "no_profile_key", "no key", file="f", raw=b"{}", kept=False, snapshot_ms=1
        ),
        transitions_dead_letter("late_snapshot", "late", file="f", raw="{}"),
        sink_dead_letter("retries_exhausted", "Code: m", partition_key="k", data=b"\xff"),
        sink_dead_letter("invalid_partition_key", "too long", partition_key="", data=b"{}"),
    ]
    for letter in letters:
        validate_dead_letter(letter)
    # The stage's own fields, exactly where docs/dead-letters.md says.
    assert letters[0] == {
        "stage": "read",
        "reason": "invalid_record",
        "error": "x: bad",
        "file": "f",
        "raw": '{"a": 1}',
        "profile_state": "kept",
    }
    assert letters[1]["raw"] == "{\ufffd" and letters[1]["snapshot_ms"] is None
    assert letters[2]["snapshot_ms"] == 1
    assert set(letters[3]) == {"stage", "reason", "error", "file", "raw"}
    assert letters[4]["file"] is None and letters[4]["partition_key"] == "k"


@pytest.mark.parametrize(
    "fields",
    [
        {"stage": "parse", "reason": "invalid_json"},
        {"stage": READ, "reason": "late_snapshot", "profile_state": "kept"},
        {"stage": READ, "reason": "unknown status 'x'", "profile_state": "kept"},
        {"stage": READ, "reason": "invalid_json"},
        {"stage": READ, "reason": "invalid_json", "profile_state": "kept", "snapshot_ms": 1},
        {"stage": TRANSITIONS, "reason": "late_snapshot", "profile_state": "kept"},
        {"stage": KINESIS_SINK, "reason": "retries_exhausted"},
        {"stage": TRANSITIONS, "reason": "late_snapshot", "error": ""},
    ],
)
def test_a_letter_that_does_not_fit_its_stage_is_refused(fields):
    with pytest.raises(ValueError):
        DeadLetter(**{"error": "detail", "raw": "", "file": None, **fields})


def test_the_schema_lists_the_reasons_of_each_stage():
    schema = load_schema()
    assert set(schema["properties"]["stage"]["enum"]) == set(REASONS)
    for rule in schema["allOf"]:
        stage = rule["if"]["properties"]["stage"]["const"]
        assert set(rule["then"]["properties"]["reason"]["enum"]) == REASONS[stage], stage
    pattern = re.compile(schema["properties"]["reason"]["pattern"])
    assert all(pattern.fullmatch(code) for codes in REASONS.values() for code in codes)


def test_the_schema_refuses_what_the_builder_refuses():
    good = transitions_dead_letter("mass_exit_held", "held", file="", raw="{}")
    assert schema_errors(good) == []
    assert schema_errors({**good, "reason": "retries_exhausted"})
    assert schema_errors({**good, "profile_state": "kept"})
    assert schema_errors({**good, "extra": 1})
    assert schema_errors({k: v for k, v in good.items() if k != "error"})
    read = read_dead_letter("invalid_json", "bad", file="f", raw=b"x", kept=False)
    assert schema_errors({k: v for k, v in read.items() if k != "snapshot_ms"})
    kept = read_dead_letter("invalid_record", "bad", file="f", raw=b"x", kept=True)
    assert schema_errors({**kept, "snapshot_ms": 1})
    sink = sink_dead_letter("record_too_large", "big", partition_key="k", data=b"x")
    assert schema_errors({**sink, "file": "f"})
    assert schema_errors({k: v for k, v in sink.items() if k != "partition_key"})


def test_every_reason_code_is_documented():
    page = (ROOT / "docs" / "dead-letters.md").read_text(encoding="utf-8")
    for stage, codes in REASONS.items():
        for code in codes:
            assert f"| `{stage}` | `{code}` |" in page, (stage, code)


def test_a_record_error_keeps_its_code_across_pickling():
    err = pickle.loads(pickle.dumps(RecordError("no profile key: x", "no_profile_key")))
    assert (str(err), err.code) == ("no profile key: x", "no_profile_key")
    assert RecordError("bad").code == "invalid_record"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("line is not valid UTF-8: invalid start byte at byte 3", "invalid_utf8"),
        ("line is not valid JSON: Expecting value at column 1", "invalid_json"),
        ("no profile key: no identity is flagged primary", "no_profile_key"),
        (
            "no snapshot time: the record has no 'at' field and the file path carries no date",
            "no_snapshot_time",
        ),
        ("snapshot time field 'at': not a timestamp: 'soon'", "no_snapshot_time"),
        ("record is not an object but list", "invalid_record"),
        ("segmentMembership.ups.s1: unknown status 'qualified'", "invalid_record"),
        ("_deleted is not a boolean", "invalid_record"),
    ],
)
def test_read_letters_of_earlier_versions_are_upgraded(message, code):
    old = {"stage": "read", "reason": message, "file": "f", "raw": "x", "profile_state": "kept"}
    new = upgrade(old)
    assert (new["reason"], new["error"]) == (code, message)
    validate_dead_letter(new)


def test_letters_of_this_version_are_not_upgraded():
    for letter in (
        read_dead_letter(
            "invalid_json", "line is not valid JSON: x", file="f", raw=b"x", kept=False
        ),
        transitions_dead_letter("late_snapshot", "late", file="f", raw="{}"),
        sink_dead_letter("retries_exhausted", "Code: m", partition_key="k", data=b"x"),
    ):
        assert upgrade(letter) is letter
    # A sink letter without an error (never written by the job) is left to the reader.
    assert upgrade({"stage": "kinesis_sink", "reason": "x"}) == {
        "stage": "kinesis_sink",
        "reason": "x",
    }
    assert dead_letters.legacy_read_reason("anything else") == "invalid_record"
