"""The pure transition core (docs/contract.md §4): table tests and properties against a small model."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.config import parse_config
from transforms.segments.memberships import (
    carried_state,
    mass_exit_counts,
    next_deadline,
    replay_batch,
    replay_stream,
)
from transforms.segments.rules import (
    apply_absence,
    apply_record,
    diff_memberships,
    merge_records,
    prune_exited,
    record_digest,
)
from transforms.segments.state import (
    RETENTION_MS,
    ProfileState,
    Tally,
    Triggers,
)

DAY = 86_400_000
T1, T2, T3, T4 = DAY, 2 * DAY, 3 * DAY, 4 * DAY
SEGMENTS_ONLY = Triggers()


def rec(snapshot_ms, segments=None, identities=None, attributes=None, **flags):
    """A record in the internal form of transforms.snapshots.profiles (``ups`` segments)."""
    return {
        "snapshot_ms": snapshot_ms,
        "baseline": flags.get("baseline", False),
        "deleted": flags.get("deleted", False),
        "segments": {"ups": segments} if segments else {},
        "identities": {"email": ["a@example.com"]} if identities is None else identities,
        "attributes": attributes or {},
        "file": flags.get("file", "part-0.json"),
    }


def state_with(memberships, snapshot_ms=T1, **kwargs):
    return ProfileState(snapshot_ms, memberships={"ups": memberships}, **kwargs)


# ------------------------------------------------------------- the table of docs/contract.md §4


@pytest.mark.parametrize(
    ("before", "after", "change", "kept"),
    [
        # not member (no state) -> member: realized, the entry's time
        (None, ["realized", 111], ["realized", 111], ["realized", 111]),
        # ... else the snapshot time
        (None, ["existing", None], ["realized", T2], ["existing", T2]),
        # not member (exited) -> member
        (["exited", 50], ["existing", 222], ["realized", 222], ["existing", 222]),
        # member -> exited entry: the exited entry's time
        (["realized", 100], ["exited", 333], ["exited", 333], ["exited", 333]),
        # ... else the snapshot time
        (["existing", 100], ["exited", None], ["exited", T2], ["exited", T2]),
        # member -> absent from the snapshot: the snapshot time
        (["realized", 100], None, ["exited", T2], ["exited", T2]),
        # member -> member ("existing" counts as member): nothing, newest time kept
        (["realized", 100], ["existing", 150], None, ["existing", 150]),
        (["existing", 100], ["realized", None], None, ["realized", 100]),
        # not member -> not member: nothing; an exited entry stays for retention
        (["exited", T1], ["exited", None], None, ["exited", T1]),
        (None, ["exited", T1 + 5], None, ["exited", T1 + 5]),
        (["exited", T1], None, None, ["exited", T1]),
    ],
)
def test_diff_memberships_table(before, after, change, kept):
    previous = {"ups": {"s": before}} if before else {}
    current = {"ups": {"s": after}} if after else {}
    changes, memberships = diff_memberships(previous, current, T2)
    assert changes == ({"ups": {"s": change}} if change else {})
    assert memberships == {"ups": {"s": kept}}


def test_diff_keeps_namespaces_and_segments_apart():
    previous = {"ups": {"a": ["realized", 1]}, "ext": {"a": ["realized", 2]}}
    current = {"ups": {"a": ["existing", None]}, "ext": {"b": ["realized", 3]}}
    changes, _ = diff_memberships(previous, current, T2)
    assert changes == {"ext": {"a": ["exited", T2], "b": ["realized", 3]}}


def test_exited_entries_are_dropped_after_retention():
    memberships = {"ups": {"old": ["exited", T1], "new": ["exited", T3], "m": ["realized", 0]}}
    assert prune_exited(memberships, T1 + RETENTION_MS) == {
        "ups": {"new": ["exited", T3], "m": ["realized", 0]}
    }
    assert prune_exited(memberships, T1 + RETENTION_MS - 1) == memberships
    # diff prunes too; an exit older than the retention is still emitted
    changes, kept = diff_memberships(
        {"ups": {"m": ["realized", 0]}}, {"ups": {"m": ["exited", 5]}}, T4 + RETENTION_MS
    )
    assert changes == {"ups": {"m": ["exited", 5]}}
    assert kept == {}


# ----------------------------------------------------------------- apply_record


def test_first_sight_exports_current_memberships():
    record = rec(T1, {"a": ["realized", 7], "b": ["existing", None], "c": ["exited", 3]})
    state, transition = apply_record(None, record, SEGMENTS_ONLY)
    assert transition == {
        "snapshot_ms": T1,
        "segments": {"ups": {"a": ["realized", 7], "b": ["realized", T1]}},
        "identities": {"email": ["a@example.com"]},
        "attributes": {},
    }
    assert state.snapshot_ms == T1 and state.live


def test_unchanged_profile_emits_nothing():
    state, _ = apply_record(None, rec(T1, {"a": ["realized", 7]}), SEGMENTS_ONLY)
    state, transition = apply_record(state, rec(T2, {"a": ["existing", 7]}), SEGMENTS_ONLY)
    assert transition is None
    assert state.snapshot_ms == T2


def test_baseline_seeds_state_and_emits_nothing():
    state, transition = apply_record(
        None, rec(T1, {"a": ["realized", 7]}), SEGMENTS_ONLY, emit=False
    )
    assert transition is None
    state, transition = apply_record(
        state, rec(T2, {"a": ["existing", 7], "b": ["realized", 9]}), SEGMENTS_ONLY
    )
    assert transition["segments"] == {"ups": {"b": ["realized", 9]}}


def test_tombstone_exits_everything_with_last_known_identities():
    tally = Tally()
    state, _ = apply_record(
        None,
        rec(T1, {"a": ["realized", 7], "b": ["realized", 8]}, attributes={"p": 1}),
        SEGMENTS_ONLY,
    )
    tombstone = rec(T2, {"b": ["exited", 99], "a": ["realized", 5]}, identities={}, deleted=True)
    state, transition = apply_record(state, tombstone, SEGMENTS_ONLY, tally)
    assert transition == {
        "snapshot_ms": T2,
        "segments": {"ups": {"a": ["exited", T2], "b": ["exited", 99]}},
        "identities": {"email": ["a@example.com"]},
        "attributes": {"p": 1},
    }
    assert state.gone and state.identities == {} and state.attributes == {}
    assert tally.counters["profiles_deleted"] == 1
    # it comes back: a re-entry like a first sight
    state, transition = apply_record(state, rec(T3, {"a": ["existing", 5]}), SEGMENTS_ONLY)
    assert transition["segments"] == {"ups": {"a": ["realized", 5]}}


def test_tombstone_of_unknown_profile_emits_nothing_but_remembers_time():
    state, transition = apply_record(None, rec(T2, deleted=True), SEGMENTS_ONLY)
    assert transition is None
    assert state.gone and state.snapshot_ms == T2
    assert next_deadline(state, None) == T2 + RETENTION_MS


def test_absence_exits_all_at_snapshot_time():
    state, _ = apply_record(None, rec(T1, {"a": ["realized", 7]}), SEGMENTS_ONLY)
    state, transition = apply_absence(state, T2, SEGMENTS_ONLY)
    assert transition["segments"] == {"ups": {"a": ["exited", T2]}}
    assert transition["identities"] == {"email": ["a@example.com"]}
    assert apply_absence(state, T3, SEGMENTS_ONLY) == (state, None)


def test_attribute_trigger_carries_all_current_memberships():
    triggers = Triggers(attributes=True)
    first = rec(T1, {"a": ["realized", 7], "b": ["realized", 8]}, attributes={"name": "Jo"})
    state, transition = apply_record(None, first, triggers)
    assert transition["segments"] == {"ups": {"a": ["realized", 7], "b": ["realized", 8]}}
    # attribute changed, b exited, c entered: unchanged a is "existing"
    second = rec(T2, {"a": ["existing", 7], "c": ["realized", 9]}, attributes={"name": "Joe"})
    state, transition = apply_record(state, second, triggers)
    assert transition["segments"] == {
        "ups": {"a": ["existing", 7], "b": ["exited", T2], "c": ["realized", 9]}
    }
    assert transition["attributes"] == {"name": "Joe"}
    # nothing changed at all: nothing
    third = rec(T3, {"a": ["existing", 7], "c": ["realized", 9]}, attributes={"name": "Joe"})
    assert apply_record(state, third, triggers)[1] is None


def test_attribute_trigger_off_ignores_attribute_changes():
    state, _ = apply_record(
        None, rec(T1, {"a": ["realized", 7]}, attributes={"n": 1}), SEGMENTS_ONLY
    )
    assert (
        apply_record(state, rec(T2, {"a": ["realized", 7]}, attributes={"n": 2}), SEGMENTS_ONLY)[1]
        is None
    )


def test_identity_trigger_only_for_visible_namespaces_and_not_for_order():
    config = parse_config(
        {
            "segments": "*",
            "identities": {"include": ["email_lc_sha256"], "hash": {"email": "email_lc_sha256"}},
            "triggers": {"identities": True},
        }
    )
    triggers = Triggers.from_config(config)
    ids = {"email": ["a", "b"], "crm": ["1"]}
    state, _ = apply_record(None, rec(T1, {"s": ["realized", 1]}, identities=ids), triggers)
    # only the excluded namespace, the order and the case of the e-mails changed: no event
    moved = {"email": ["B ", "a"], "crm": ["2"]}
    state, transition = apply_record(
        state, rec(T2, {"s": ["realized", 1]}, identities=moved), triggers
    )
    assert transition is None
    # a new e-mail: an event with the unchanged membership as existing
    grown = {"email": ["B ", "a", "c"], "crm": ["2"]}
    state, transition = apply_record(
        state, rec(T3, {"s": ["realized", 1]}, identities=grown), triggers
    )
    assert transition["segments"] == {"ups": {"s": ["existing", 1]}}
    assert transition["identities"] == grown


def test_segment_trigger_off_updates_state_silently():
    triggers = Triggers(segments=False, attributes=True)
    state, transition = apply_record(None, rec(T1, {"a": ["realized", 7]}), triggers)
    assert transition is None  # no attributes, no segment events
    state, transition = apply_record(state, rec(T2, {"b": ["realized", 8]}), triggers)
    assert transition is None
    assert state.memberships == {"ups": {"a": ["exited", T2], "b": ["realized", 8]}}
    # an attribute change carries the changed segments with their transition status
    state, transition = apply_record(
        state, rec(T3, {"c": ["realized", 9]}, attributes={"x": 1}), triggers
    )
    assert transition["segments"] == {"ups": {"b": ["exited", T3], "c": ["realized", 9]}}
    # deletion is a segment change only: nothing with segments off
    assert apply_record(state, rec(T4, deleted=True), triggers)[1] is None


# ---------------------------------------------------------------- merge_records


def test_merge_unites_identities_and_keeps_latest_entry():
    one = rec(
        T1, {"a": ["realized", 5], "b": ["exited", 9]}, identities={"email": ["x"], "ecid": ["1"]}
    )
    two = rec(
        T1,
        {"a": ["exited", 6], "b": ["realized", None], "c": ["existing", 1]},
        identities={"email": ["y", "x"]},
    )
    merged = merge_records([one, two])
    assert merged["segments"] == {
        "ups": {"a": ["exited", 6], "b": ["exited", 9], "c": ["existing", 1]}
    }
    assert {ns: sorted(ids) for ns, ids in merged["identities"].items()} == {
        "email": ["x", "y"],
        "ecid": ["1"],
    }
    assert merge_records([two, one]) == merged


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        (["realized", 5], ["exited", 5], ["exited", 5]),
        (["existing", 5], ["realized", 5], ["realized", 5]),
        (["exited", None], ["existing", None], ["exited", None]),
        (["realized", None], ["existing", 0], ["existing", 0]),
    ],
)
def test_merge_tie_break_is_order_independent(first, second, winner):
    for order in ([first, second], [second, first]):
        merged = merge_records([rec(T1, {"s": order[0]}), rec(T1, {"s": order[1]})])
        assert merged["segments"] == {"ups": {"s": winner}}


def test_merge_flags_and_attributes():
    one = rec(T1, attributes={"p": "b", "q": 1}, file="b.json")
    two = rec(T1, attributes={"p": "a"}, deleted=True, baseline=True, file="a.json")
    merged = merge_records([one, two])
    assert merged["deleted"] and merged["baseline"]
    assert merged["attributes"] == {"p": "b", "q": 1}
    assert merged["file"] == "a.json"
    assert merge_records([two, one]) == merged


def test_record_digest_ignores_file_only():
    assert record_digest(rec(T1, {"a": ["realized", 1]}, file="x")) == record_digest(
        rec(T1, {"a": ["realized", 1]}, file="y")
    )
    assert record_digest(rec(T1, {"a": ["realized", 1]})) != record_digest(
        rec(T1, {"a": ["realized", 2]})
    )


# --------------------------------------------------------------------- replays


def test_batch_disappearance_and_return():
    records = [rec(T3, {"a": ["realized", 7]}), rec(T1, {"a": ["realized", 7]})]
    replay = replay_batch(records, [T1, T2, T3], SEGMENTS_ONLY)
    assert [(t["snapshot_ms"], t["segments"]) for t in replay.transitions] == [
        (T1, {"ups": {"a": ["realized", 7]}}),
        (T2, {"ups": {"a": ["exited", T2]}}),
        (T3, {"ups": {"a": ["realized", 7]}}),
    ]


def test_batch_absence_at_baseline_snapshot_is_silent():
    records = [rec(T1, {"a": ["realized", 7]}), rec(T3, {"a": ["realized", 7]})]
    replay = replay_batch(records, [T1, T2, T3], SEGMENTS_ONLY, baseline_times={T1, T2})
    assert [(t["snapshot_ms"], t["segments"]) for t in replay.transitions] == [
        (T3, {"ups": {"a": ["realized", 7]}})
    ]


def test_batch_reread_snapshot_emits_nothing_new():
    record = rec(T1, {"a": ["realized", 7]})
    tally = Tally()
    once = replay_batch([record], [T1], SEGMENTS_ONLY)
    twice = replay_batch([record, dict(record, file="again.json")], [T1], SEGMENTS_ONLY, tally)
    assert once.transitions == twice.transitions
    assert tally.counters["duplicate_records_merged"] == 1


def test_stream_ttl_exit_and_deadline():
    ttl = 2 * DAY
    state, _ = apply_record(None, rec(T1, {"a": ["realized", 7]}), SEGMENTS_ONLY)
    # a record exactly at the deadline keeps the profile alive
    replay = replay_stream(state, [rec(T3, {"a": ["realized", 7]})], T3 + 1, SEGMENTS_ONLY, ttl)
    assert replay.transitions == [] and replay.ttl_exits == []
    # unseen past the deadline: exit at last seen + TTL, before the next record
    replay = replay_stream(state, [rec(T4, {"a": ["realized", 7]})], T4 + 1, SEGMENTS_ONLY, ttl)
    assert [(last, t["snapshot_ms"], t["segments"]) for last, t in replay.ttl_exits] == [
        (T1, T3, {"ups": {"a": ["exited", T3]}})
    ]
    assert [t["segments"] for t in replay.transitions] == [{"ups": {"a": ["realized", 7]}}]
    # no record: the timer time decides
    assert replay_stream(state, [], T3, SEGMENTS_ONLY, ttl).ttl_exits == []
    assert len(replay_stream(state, [], T3 + 1, SEGMENTS_ONLY, ttl).ttl_exits) == 1
    assert next_deadline(state, ttl) == T3 and next_deadline(state, None) is None


def test_stream_late_records_are_not_applied():
    state, _ = apply_record(None, rec(T2, {"a": ["realized", 7]}), SEGMENTS_ONLY)
    late = rec(T1, {"b": ["realized", 1]})
    replay = replay_stream(state, [late, rec(T3, {"a": ["realized", 7]})], T3 + 1, SEGMENTS_ONLY)
    assert replay.late == [late]
    assert replay.transitions == []
    assert replay.state.snapshot_ms == T3
    assert replay.state.digests == [record_digest(rec(T3, {"a": ["realized", 7]}))]


def test_stream_identical_redelivery_is_ignored():
    record = rec(T2, {"a": ["realized", 7]})
    first = replay_stream(None, [record], T2 + 1, SEGMENTS_ONLY)
    tally = Tally()
    changed = rec(T2, {"a": ["realized", 8]})
    again = replay_stream(
        first.state, [dict(record, file="again.json"), changed], T3, SEGMENTS_ONLY, tally=tally
    )
    assert again.transitions == []
    assert again.late == [changed]
    assert tally.counters["reread_records_ignored"] == 1


# ------------------------------------------------------- properties against a model

RANK = {"existing": 0, "realized": 1, "exited": 2}
MEMBER = {"realized", "existing"}


def model_profile(records, times, baseline_times, ttl=None, until=None, attributes=False):
    """An independent, deliberately naive replay of one profile: a list of events.

    Batch (``ttl`` None and ``until`` None): disappearance at the next snapshot.
    Streaming (``until`` given): no disappearance; TTL exits at last seen + ttl.
    """
    members: dict = {}  # (ns, seg) -> time
    live = False
    last = None
    attrs = None
    out = []
    streaming = until is not None
    steps = sorted({r["snapshot_ms"] for r in records}) if streaming else list(times)
    if streaming:
        steps = steps + [None]

    def expire(now):
        nonlocal members, live
        if ttl is not None and live and last + ttl < now:
            exits = {k: ("exited", last + ttl) for k in members}
            if exits:
                out.append((last + ttl, exits))
            members, live = {}, False

    for t in steps:
        if streaming:
            expire(until if t is None else t)
            if t is None:
                break
        at = [r for r in records if r["snapshot_ms"] == t]
        if last is None and not at:
            continue  # before the profile's first record
        quiet = t in baseline_times or any(r["baseline"] for r in at)
        if not at:
            if live:
                exits = {k: ("exited", t) for k in members}
                if exits and not quiet:
                    out.append((t, exits))
                members, live, attrs = {}, False, None
            last = t
            continue
        best: dict = {}
        for r in at:
            for ns, segs in r["segments"].items():
                for seg, (status, when) in segs.items():
                    score = (when if when is not None else -1, RANK[status])
                    if (ns, seg) not in best or score > best[(ns, seg)][0]:
                        best[(ns, seg)] = (score, status, when)
        changes = {}
        fired = False
        if any(r["deleted"] for r in at):
            for k in members:
                _, status, when = best.get(k, (None, None, None))
                changes[k] = ("exited", when if status == "exited" and when is not None else t)
            members, live, attrs_now = {}, False, None
        else:
            now = {}
            for k, (_, status, when) in best.items():
                if status in MEMBER:
                    if k in members:
                        now[k] = when if when is not None else members[k]
                    else:
                        now[k] = when if when is not None else t
                        changes[k] = ("realized", now[k])
                elif k in members:
                    changes[k] = ("exited", when if when is not None else t)
            for k in members:
                if k not in best:
                    changes[k] = ("exited", t)
            attrs_now = {}
            for r in at:
                for path, value in r["attributes"].items():
                    if path not in attrs_now or json.dumps(value) > json.dumps(attrs_now[path]):
                        attrs_now[path] = value
            fired = attributes and attrs_now != (attrs or {})
            if fired:
                changes = {**{k: ("existing", v) for k, v in now.items()}, **changes}
            members, live = now, True
        if (changes or fired) and not quiet:
            out.append((t, changes))
        attrs = attrs_now
        last = t
    return out


def as_model_events(transitions):
    events = []
    for t in transitions:
        flat = {
            (ns, seg): tuple(entry)
            for ns, segs in t["segments"].items()
            for seg, entry in segs.items()
        }
        events.append((t["snapshot_ms"], flat))
    return events


entries = st.tuples(
    st.sampled_from(["realized", "existing", "exited"]), st.one_of(st.none(), st.integers(0, 4))
)
segment_maps = st.dictionaries(
    st.sampled_from([("ups", "a"), ("ups", "b"), ("ups", "c"), ("ext", "a")]), entries, max_size=4
)


@st.composite
def runs(draw):
    """Random multi-profile runs: (records, snapshot times, baseline times)."""
    times = sorted(draw(st.sets(st.integers(1, 6), min_size=1, max_size=5)))
    times = [t * DAY for t in times]
    baseline = set(times[:1]) if draw(st.booleans()) else set()
    records = []
    for key in range(draw(st.integers(1, 3))):
        for t in times:
            if not draw(st.integers(0, 4)):
                continue  # absent from this snapshot
            deleted = draw(st.integers(0, 9)) == 0
            for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
                segments: dict = {}
                for (ns, seg), (status, when) in draw(segment_maps).items():
                    segments.setdefault(ns, {})[seg] = [status, None if when is None else t - when]
                records.append(
                    (
                        f"k{key}",
                        {
                            "snapshot_ms": t,
                            "baseline": t in baseline,
                            "deleted": deleted,
                            "segments": segments,
                            "identities": {"email": [f"k{key}"]},
                            "attributes": {"p": draw(st.sampled_from(["x", "y"]))},
                            "file": f"f{draw(st.integers(0, 2))}",
                        },
                    )
                )
    times_of_run = sorted({r["snapshot_ms"] for _, r in records})
    return records, times_of_run, {t for t in baseline if t in times_of_run}


def by_key(records):
    grouped: dict = {}
    for key, record in records:
        grouped.setdefault(key, []).append(record)
    return grouped


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(), st.randoms(use_true_random=False), st.booleans())
def test_batch_replay_matches_model_in_any_order(run, rnd, attributes):
    records, times, baseline = run
    triggers = Triggers(attributes=attributes)
    for key, recs in by_key(records).items():
        shuffled = recs[:]
        rnd.shuffle(shuffled)
        replay = replay_batch(shuffled, times, triggers, Tally(), baseline)
        assert as_model_events(replay.transitions) == model_profile(
            recs, times, baseline, attributes=attributes
        ), key


@settings(max_examples=200, deadline=None)
@given(runs())
def test_mass_exit_counts_match_model(run):
    records, times, baseline = run
    counts: dict = {}
    expected: dict = {}
    for recs in by_key(records).values():
        mass_exit_counts([(r["snapshot_ms"], r["deleted"]) for r in recs], times, baseline, counts)
        live_after = {t for t in times if any(r["snapshot_ms"] == t for r in recs)}
        live_after -= {
            t for t in live_after if any(r["snapshot_ms"] == t and r["deleted"] for r in recs)
        }
        for before, t in zip(times, times[1:], strict=False):
            if before in live_after and t not in baseline:
                entry = expected.setdefault(t, [0, 0])
                entry[0] += 1
                entry[1] += not any(r["snapshot_ms"] == t for r in recs)
    assert counts == expected


@settings(max_examples=200, deadline=None)
@given(runs(), st.sampled_from([None, DAY, 2 * DAY]), st.randoms(use_true_random=False))
def test_stream_replay_in_chunks_matches_model(run, ttl, rnd):
    """Records arriving in any order and applied in time-ordered batches (as timers do)."""
    records, times, _ = run
    if not records:
        return
    until = times[-1] + 10 * DAY
    for key, recs in by_key(records).items():
        # timer firings at random points; each applies what is complete by then
        cuts = sorted(rnd.sample(times, rnd.randint(0, len(times))))
        state, events, last_cut = None, [], None
        for cut in cuts + [until]:
            ready = [
                r
                for r in recs
                if (last_cut is None or r["snapshot_ms"] >= last_cut) and r["snapshot_ms"] < cut
            ]
            rnd.shuffle(ready)
            replay = replay_stream(state, ready, cut, SEGMENTS_ONLY, ttl)
            assert replay.late == []
            state = replay.state
            merged = sorted(
                replay.transitions + [t for _, t in replay.ttl_exits],
                key=lambda t: t["snapshot_ms"],
            )
            events.extend(merged)
            last_cut = cut
        expected = model_profile(recs, times, set(), ttl=ttl, until=until)
        assert as_model_events(events) == expected, key


def without_exited(state):
    members = {
        (ns, seg): entry
        for ns, by_id in state.memberships.items()
        for seg, entry in by_id.items()
        if entry[0] != "exited"
    }
    return (state.snapshot_ms, state.gone, state.identities, state.attributes, members)


def split_runs(times, rnd):
    """Random consecutive runs of a split backfill (--snapshots_per_run)."""
    cuts = sorted(rnd.sample(range(1, len(times)), rnd.randint(0, max(len(times) - 1, 0))))
    return [times[a:b] for a, b in zip([0, *cuts], [*cuts, len(times)], strict=True)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(), st.randoms(use_true_random=False), st.booleans(), st.booleans())
def test_split_backfill_with_carried_state_equals_one_replay(run, rnd, attributes, long_gaps):
    """Runs of consecutive snapshots, each seeded with the previous run's final states."""
    records, times, baseline = run
    if long_gaps:
        # Snapshots months apart, so that gone states pass their retention between runs.
        scale = {t: t * 20 for t in times}
        records = [(k, dict(r, snapshot_ms=scale[r["snapshot_ms"]])) for k, r in records]
        times = [scale[t] for t in times]
        baseline = {scale[t] for t in baseline}
    triggers = Triggers(attributes=attributes, identities=True)
    chunks = split_runs(times, rnd)
    full_counts: dict = {}
    split_counts: dict = {}
    for recs in by_key(records).values():
        full = replay_batch(recs, times, triggers, Tally(), baseline)
        mass_exit_counts(
            [(r["snapshot_ms"], r["deleted"]) for r in recs], times, baseline, full_counts
        )
        state, events = None, []
        for chunk in chunks:
            seed = carried_state(state)
            in_chunk = [r for r in recs if r["snapshot_ms"] in chunk]
            rnd.shuffle(in_chunk)
            mass_exit_counts(
                [(r["snapshot_ms"], r["deleted"]) for r in in_chunk],
                chunk,
                baseline,
                split_counts,
                live_before=seed is not None and seed.live,
            )
            replay = replay_batch(in_chunk, chunk, triggers, Tally(), baseline, initial=seed)
            events.extend(replay.transitions)
            state = replay.state
        assert events == full.transitions
        if full.state is not None and full.state.live:
            # The same state, but for exited entries kept from before a gone phase,
            # which never change an event.
            assert without_exited(state) == without_exited(full.state)
    assert split_counts == full_counts


def test_carried_state_keeps_live_profiles_only():
    gone = ProfileState(T2, True, {"ups": {"a": ["exited", T2]}})
    assert carried_state(gone) is None
    live = ProfileState(T2, False, {"ups": {"a": ["realized", T1]}})
    assert carried_state(live) is live
    assert carried_state(None) is None


def test_replay_with_live_initial_state_exits_at_first_snapshot_when_absent():
    live = ProfileState(T1, False, {"ups": {"a": ["realized", T1]}}, {"email": ["x"]})
    replay = replay_batch([], [T2, T3], SEGMENTS_ONLY, Tally(), initial=live)
    assert [t["snapshot_ms"] for t in replay.transitions] == [T2]
    assert replay.transitions[0]["segments"] == {"ups": {"a": ["exited", T2]}}
    assert replay.state.gone


def test_model_is_not_trivially_empty():
    """Guards the properties above: the generator does produce events and absences."""
    rnd = random.Random(3)
    found_exit = False
    for _ in range(50):
        records = [rec(t, {"a": ["realized", 1]}) for t in (T1, T2, T3) if rnd.random() < 0.6]
        if records:
            events = model_profile(records, [T1, T2, T3], set())
            found_exit |= any(status == "exited" for _, ch in events for status, _ in ch.values())
    assert found_exit
