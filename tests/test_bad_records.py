"""A bad record is never an absence: a profile whose record is damaged keeps its state.

Found by a new user: one damaged line (valid JSON, bad status) in today's snapshot sent
an "exited" for a member, and the run exited 0. A record that names its profile (its
key resolves) but fails validation now proves that the profile is in the snapshot: it
keeps its previous state there, nothing is sent for it, and the record goes to the dead
letter with ``"profile_state": "kept"``.
"""

from __future__ import annotations

import json

import pytest

from pipeline.main import main
from tests.support.dead_letter_schema import validate_dead_letters
from tools.stream_check import read_lines
from transforms.segments.memberships import (
    replay_batch,
    replay_stream,
)
from transforms.segments.state import (
    ProfileState,
    Triggers,
)
from transforms.snapshots.profiles import keep_record

S1 = "seg-1"
DAY = 86_400_000
D1, D2, D3 = 1704067200000, 1704067200000 + DAY, 1704067200000 + 2 * DAY
DAYS = ("2024-01-01", "2024-01-02", "2024-01-03")


def profile(name, segments, **extra):
    record = {
        "identityMap": {"email": [{"id": f"{name}@x.com", "primary": True}]},
        "segmentMembership": {"ups": segments},
    }
    record.update(extra)
    return record


MEMBER = {S1: {"status": "realized", "lastQualificationTime": "2023-12-31T00:00:00Z"}}
BAD = {
    "status": profile("a", {S1: {"status": "qualified"}}),
    "timestamp": profile("a", {S1: {"status": "realized", "lastQualificationTime": "soon"}}),
    "identity": {
        "identityMap": {"email": [{"id": "a@x.com", "primary": True}], "ecid": [{"id": 7}]},
        "segmentMembership": {"ups": MEMBER},
    },
    "tombstone flag": profile("a", MEMBER, _deleted="yes"),
}


def write(folder, day, lines):
    path = folder / f"snapshot={day}" / "part-0.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(line + "\n" for line in lines))


def run_with_day_two(tmp_path, line_of_a, *extra):
    """Runs a, b members on days 1 and 3; on day 2 b again and ``line_of_a`` for a."""
    member_a, member_b = json.dumps(profile("a", MEMBER)), json.dumps(profile("b", MEMBER))
    write(tmp_path / "in", DAYS[0], [member_a, member_b])
    write(tmp_path / "in", DAYS[1], [line_of_a, member_b])
    write(tmp_path / "in", DAYS[2], [member_a, member_b])
    config = tmp_path / "activation.json"
    config.write_text(json.dumps({"segments": [{"id": S1}], "profile_key": "primary"}))
    return main(
        [
            "--config",
            str(config),
            "--input",
            str(tmp_path / "in" / "*" / "*.jsonl"),
            "--output_path",
            str(tmp_path / "out" / "events"),
            *extra,
        ]
    )


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_damaged_record_of_a_known_profile_sends_no_transition(tmp_path, kind):
    code = run_with_day_two(
        tmp_path, json.dumps(BAD[kind]), "--dead_letter_path", str(tmp_path / "out" / "dead")
    )

    assert code == 0
    events = [json.loads(line) for line in read_lines(str(tmp_path / "out" / "events"))]
    statuses = sorted(
        entry["status"] for e in events for entry in e["segmentMembership"]["ups"].values()
    )
    # Only the two entries of the first snapshot: no exit of a on day 2, and so no
    # second "realized" on day 3.
    assert statuses == ["realized", "realized"]
    dead = validate_dead_letters(read_lines(str(tmp_path / "out" / "dead")))
    assert [(d["profile_state"], d["reason"]) for d in dead] == [("kept", "invalid_record")]
    assert json.loads(dead[0]["raw"]) == BAD[kind]


TRIGGERS = Triggers(segments=True, attributes=False, identities=False)
A_RECORD = {
    "snapshot_ms": D1,
    "baseline": False,
    "deleted": False,
    "segments": {"ups": {S1: ["realized", D1]}},
    "identities": {"email": ["a@x.com"]},
    "attributes": {},
    "file": "f",
}


def test_batch_replay_keeps_the_state_through_a_kept_snapshot():
    records = [A_RECORD, keep_record(D2, "f"), {**A_RECORD, "snapshot_ms": D3}]
    replay = replay_batch(records, [D1, D2, D3], TRIGGERS)
    assert [t["snapshot_ms"] for t in replay.transitions] == [D1]
    assert replay.state.live and replay.state.snapshot_ms == D3


def test_a_kept_duplicate_wins_over_a_good_one_of_the_same_snapshot():
    records = [A_RECORD, keep_record(D2, "f"), {**A_RECORD, "snapshot_ms": D2, "segments": {}}]
    replay = replay_batch(records, [D1, D2], TRIGGERS)
    assert [t["snapshot_ms"] for t in replay.transitions] == [D1]


def test_streaming_replay_keeps_the_state_and_restarts_the_ttl():
    state = ProfileState(D1, False, {"ups": {S1: ["realized", D1]}}, {"email": ["a"]}, {})
    ttl = int(1.5 * DAY)
    replay = replay_stream(state, [keep_record(D2, "f")], D2 + 1, TRIGGERS, ttl)
    assert replay.transitions == [] and replay.ttl_exits == []
    assert replay.state.snapshot_ms == D2 and replay.state.memberships == state.memberships
    # Without the kept record the TTL (D1 + 1.5 days) would run out before D3.
    later = replay_stream(replay.state, [], D3 + 1, TRIGGERS, ttl)
    assert later.ttl_exits == []
    unseen = replay_stream(state, [], D3 + 1, TRIGGERS, ttl)
    assert len(unseen.ttl_exits) == 1


def test_a_withheld_absence_is_confirmed_by_the_next_complete_snapshot():
    from transforms.segments.state import (
        ANY_SNAPSHOT,
    )

    gone = replay_batch([A_RECORD], [D1, D2, D3], TRIGGERS, incomplete={D2})
    assert [(t["snapshot_ms"], t["segments"]["ups"][S1][0]) for t in gone.transitions] == [
        (D1, "realized"),
        (D3, "exited"),
    ]
    back = replay_batch(
        [A_RECORD, {**A_RECORD, "snapshot_ms": D3}], [D1, D2, D3], TRIGGERS, incomplete={D2}
    )
    assert [t["snapshot_ms"] for t in back.transitions] == [D1]
    unknown = replay_batch([A_RECORD], [D1, D2, D3], TRIGGERS, incomplete={ANY_SNAPSHOT})
    assert [t["snapshot_ms"] for t in unknown.transitions] == [D1]


def run_with_broken_line(tmp_path, *extra):
    return run_with_day_two(tmp_path, '{"identityMap": {"email": [{"id": "a@x', *extra)


def test_an_unreadable_line_fails_the_run_before_anything_is_sent(tmp_path, capsys):
    assert run_with_broken_line(tmp_path) == 1
    err = capsys.readouterr().err
    assert "1 input record(s) could not be read" in err and "2024-01-02" in err
    assert read_lines(str(tmp_path / "out" / "events")) == []


def test_allowed_unreadable_lines_withhold_the_disappearance_exits(tmp_path, capsys):
    assert run_with_broken_line(tmp_path, "--max_bad_records", "1") == 0
    events = [json.loads(line) for line in read_lines(str(tmp_path / "out" / "events"))]
    # a's line of day 2 is broken: a does not exit there, so it does not re-enter on day 3.
    assert sorted(
        entry["status"] for e in events for entry in e["segmentMembership"]["ups"].values()
    ) == ["realized", "realized"]
    assert "disappearance exits withheld (incomplete snapshot)" in capsys.readouterr().out
