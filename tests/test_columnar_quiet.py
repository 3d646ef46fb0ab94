"""Quiet profiles (transforms/columnar/quiet_profiles.py) against the replay core itself.

Whatever ``quiet_rows`` calls quiet must be a history that ``replay_batch`` (the only
definition of a transition) replays without a transition and without moving a counter;
and the predicate must say quiet for the plain case it exists for.
"""

from __future__ import annotations

import copy

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from transforms.columnar.quiet_profiles import quiet_rows
from transforms.segments.memberships import replay_batch
from transforms.segments.state import Tally, Triggers

DAY = 86_400_000

entries = st.lists(
    st.tuples(
        st.sampled_from(["s1", "s2", "s3"]),
        st.sampled_from(["realized", "existing", "exited"]),
        st.one_of(st.none(), st.integers(0, 10).map(lambda d: d * DAY)),
    ),
    max_size=3,
)


def _record(raw_entries, identity, attribute, deleted):
    segments: dict = {}
    for seg_id, status, qualified in raw_entries:
        segments.setdefault("ups", {})[seg_id] = [status, qualified]
    return {
        "segments": segments,
        "identities": {"email": [identity]},
        "attributes": {"person.name.firstName": attribute} if attribute else {},
        "deleted": deleted,
    }


records = st.builds(
    _record, entries, st.sampled_from(["a", "b"]), st.sampled_from([None, "x"]), st.booleans()
)


@st.composite
def histories(draw):
    run = sorted(draw(st.sets(st.integers(1, 8).map(lambda d: d * DAY), min_size=1, max_size=5)))
    baselines = {t: draw(st.booleans()) for t in run}
    if draw(st.booleans()):
        # Shaped like a quiet profile (the rest of the draw may still break it).
        present = run[draw(st.integers(0, len(run) - 1)) :]
        baselines[present[0]] = True
    else:
        present = sorted(draw(st.lists(st.sampled_from(run), min_size=1, max_size=6)))
    base = draw(records)
    rows = []
    for t in present:
        # Mostly the same record (steady), sometimes another one.
        body = copy.deepcopy(base) if draw(st.integers(0, 3)) else draw(records)
        rows.append(
            dict(body, snapshot_ms=t, baseline=draw(st.booleans()) and baselines[t], file="f")
        )
    return run, baselines, rows


def _body(record):
    return {k: record[k] for k in ("segments", "identities", "attributes", "deleted")}


def _quiet(run, baselines, rows):
    n = len(rows)
    new_profile = np.zeros(n, dtype=bool)
    new_profile[0] = True
    steady = np.array([i > 0 and _body(rows[i]) == _body(rows[i - 1]) for i in range(n)])
    return quiet_rows(
        new_profile,
        np.array([r["snapshot_ms"] for r in rows], dtype=np.int64),
        np.array([r["baseline"] for r in rows]),
        np.ones(n, dtype=bool),
        steady,
        np.array([r["deleted"] for r in rows]),
        run,
        baselines,
    )


@settings(max_examples=400, deadline=None)
@given(histories(), st.sampled_from([(True, False, False), (True, True, True)]))
def test_a_quiet_profile_replays_to_nothing(history, trigger_flags):
    run, baselines, rows = history
    quiet = _quiet(run, baselines, rows)
    assert quiet.all() or not quiet.any()  # one profile: all its rows or none
    event("quiet" if quiet.all() else "not quiet")
    if not quiet.all():
        return
    tally = Tally()
    triggers = Triggers(*trigger_flags)
    replay = replay_batch(copy.deepcopy(rows), run, triggers, tally, baselines)
    assert replay.transitions == []
    assert {k: v for k, v in tally.counters.items() if v} == {}


def test_seeded_by_a_baseline_and_unchanged_is_quiet():
    record = _record([("s1", "realized", DAY)], "a", "x", False)
    run = [DAY, 2 * DAY, 3 * DAY]
    baselines = {DAY: True, 2 * DAY: False, 3 * DAY: False}
    rows = [dict(copy.deepcopy(record), snapshot_ms=t, baseline=t == DAY, file="f") for t in run]
    assert _quiet(run, baselines, rows).all()
    # Each condition broken once: no longer quiet.
    first_sight = [dict(r, baseline=False) for r in rows]
    assert not _quiet(run, {t: False for t in run}, first_sight).any()  # entries emitted
    assert not _quiet(run, baselines, rows[:2]).any()  # absent from the last snapshot
    assert not _quiet(run, baselines, [rows[0], rows[2]]).any()  # a gap
    changed = copy.deepcopy(rows)
    changed[2]["segments"]["ups"]["s1"][0] = "exited"
    assert not _quiet(run, baselines, changed).any()
    twice = rows + [dict(rows[2])]
    assert not _quiet(run, baselines, sorted(twice, key=lambda r: r["snapshot_ms"])).any()


def test_rows_of_several_profiles():
    n = 5
    new_profile = np.array([True, False, True, False, False])
    quiet = quiet_rows(
        new_profile,
        np.array([1, 2, 1, 2, 2], dtype=np.int64),
        np.array([True, False, False, False, False]),
        np.ones(n, dtype=bool),
        np.array([False, True, False, True, True]),
        np.zeros(n, dtype=bool),
        [1, 2],
        {1: False, 2: False},
    )
    # The first profile starts on a baseline row; the second is first seen at 1 (not
    # a baseline) and has two rows in snapshot 2.
    assert quiet.tolist() == [True, True, False, False, False]
