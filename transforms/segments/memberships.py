"""The pure core of segment transitions (docs/contract.md §4): no Beam, only plain data and functions.

Everything that decides *whether* and *what* a profile emits lives here, so that the
batch and the streaming DoFns of :mod:`transforms.segments.transitions` share one semantics and
the rules can be tested without a pipeline.

Vocabulary:

* A *record* is one profile in one snapshot, in the internal form of
  :mod:`transforms.snapshots.profiles` (``snapshot_ms``, ``baseline``, ``deleted``, ``segments``,
  ``identities``, ``attributes``, ``file``).
* *Memberships* map ``namespace -> segment id -> [status, time ms]``. In a
  :class:`ProfileState` a member entry keeps the qualification time that was (or would
  have been) emitted for it, an ``exited`` entry the time of its exit; exited entries are
  kept for :data:`RETENTION_MS` and then dropped.
* A *transition* is what one profile emits for one snapshot (at most one)::

      {"snapshot_ms": int,
       "segments": {ns: {seg_id: [status, lqt_ms]}},   # changed (and, for an attribute
                                                       # or identity event, all current)
       "identities": {ns: [ids]},                      # current, or last known on exit
       "attributes": {path: value}}

Time ordering is the caller's business for single steps (:func:`apply_record`,
:func:`apply_absence`); the replay functions sort by snapshot time themselves, so their
result does not depend on the order of the records they are given.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Container, Iterable, Mapping, Sequence

from transforms.segments.rules import (
    apply_absence,
    apply_keep,
    apply_record,
    group_by_snapshot,
    merge_records,
    record_digest,
)
from transforms.segments.state import (
    ANY_SNAPSHOT,
    ProfileState,
    Replay,
    Tally,
    Triggers,
)

# -------------------------------------------------------------------------- replays


def replay_batch(
    records: Iterable[dict],
    snapshot_times: Sequence[int],
    triggers: Triggers,
    tally: Tally | None = None,
    baseline_times: frozenset[int] | set[int] | Mapping[int, bool] = frozenset(),
    initial: ProfileState | None = None,
    incomplete: Container[int] | None = None,
    on_step: Callable[[int, ProfileState | None], None] | None = None,
) -> Replay:
    """Replays one profile over every snapshot of a batch run, in time order.

    A profile live after snapshot k and without a record in snapshot k+1 exits all its
    memberships at T(k+1) (disappearance); a later record re-enters it. Snapshots in
    ``baseline_times`` (and baseline records) update the state but emit nothing.

    A backfill split into runs (``--snapshots_per_run``) passes each profile's final
    state of the previous run as ``initial``: replaying the runs one after the other
    gives exactly the transitions of one replay over all their snapshots.

    Args:
        records: All records of the profile in the run, in any order, duplicates allowed.
        snapshot_times: Every snapshot time of the run (incl. baselines), ascending.
        triggers: What emits events.
        tally: Counters to update.
        baseline_times: Snapshot times that are baselines (a set, or a mapping to bool).
        initial: The state before the run's first snapshot (``None``: never seen).
        incomplete: Snapshot times that lost records whose profile is unknown (or
            :data:`ANY_SNAPSHOT` when such a record's snapshot is unknown too): an
            absence from one of them is no proof, so no disappearance exit happens
            there; the next complete snapshot without the profile confirms it.
        on_step: Called with each snapshot time and the state after it, for every
            snapshot at which the profile is tracked (``--report`` counts members).

    Returns:
        The final state and the transitions in snapshot order.
    """
    incomplete = incomplete or ()
    withhold_all = ANY_SNAPSHOT in incomplete
    by_time = group_by_snapshot(records, tally)
    state = initial
    transitions: list[dict] = []
    live_at_start = initial is not None and not initial.gone
    if not by_time and not live_at_start:
        return Replay(state, transitions, [], [])
    record_times = sorted(by_time)
    times = snapshot_times
    if any(not _contains(times, t) for t in record_times):
        # Defensive: a record's snapshot always belongs to the run's snapshots.
        times = sorted(set(times).union(record_times))
    # A profile live before the run is absent from its first snapshot unless it has a
    # record there: the replay starts at the run's first snapshot.
    index = 0 if live_at_start else bisect_left(times, record_times[0])
    applied = 0  # records applied so far (record_times[applied] is the next one)
    while index < len(times):
        snapshot_ms = times[index]
        is_baseline = _lookup(baseline_times, snapshot_ms)
        record = by_time.get(snapshot_ms)
        if record is not None and record.get("keep"):
            applied += 1
            state, transition = apply_keep(state, snapshot_ms, tally), None
        elif record is not None:
            applied += 1
            emit = not (is_baseline or record.get("baseline"))
            state, transition = apply_record(state, record, triggers, tally, emit)
        elif state is not None and not state.gone:
            if withhold_all or snapshot_ms in incomplete:
                transition = None
                if tally is not None:
                    tally.counters["absence_exits_withheld"] += 1
            else:
                state, transition = apply_absence(
                    state, snapshot_ms, triggers, tally, not is_baseline
                )
        elif applied < len(record_times):
            # Not tracked and no record here: jump to the next record.
            index = bisect_left(times, record_times[applied], index + 1)
            continue
        else:
            break
        if transition is not None:
            transitions.append(transition)
        if on_step is not None:
            on_step(snapshot_ms, state)
        index += 1
    return Replay(state, transitions, [], [])


def carried_state(state: ProfileState | None) -> ProfileState | None:
    """The part of a final state that the next run of a split backfill needs.

    A live profile's state goes on whole. A gone (deleted or disappeared) profile's
    state is not carried: it only keeps retained exited entries, and an exited entry
    never changes what is emitted (a record after it is an entry either way), so the next
    run treats the profile's return as a first sight with the same events. Batch runs
    have no late data for the retention to guard against.

    Args:
        state: A profile's state after a run.

    Returns:
        The state to seed the next run with, or ``None``.
    """
    if state is None or state.gone:
        return None
    return state


def mass_exit_counts(
    presence: Iterable[tuple[int, bool]],
    snapshot_times: Sequence[int],
    baseline_times: frozenset[int] | set[int] | Mapping[int, bool],
    counts: dict[int, list[int]],
    live_before: bool = False,
) -> None:
    """Adds one profile's share to the batch mass-exit guard counts (docs/contract.md §7).

    With the disappearance rule, a profile is live after snapshot T exactly when it has
    a record at T that is not a tombstone. So it is *tracked before* the next snapshot
    of the run, and *absent* from it if it has no record there (a tombstone is a record:
    explicit deletions do not count). Baseline snapshots emit nothing and are not
    guarded. This needs only the snapshot times of the profile's records, so the guard
    can run (and fail) before any transition is computed.

    Args:
        presence: ``(snapshot ms, deleted)`` of each of the profile's records.
        snapshot_times: Every snapshot time of the run, ascending.
        baseline_times: Baseline snapshot times (a set, or a mapping to bool).
        counts: Snapshot ms -> ``[tracked before, absent]``, updated in place.
        live_before: The profile was live before the run's first snapshot (its state
            carried over from the previous run of a split backfill).
    """
    deleted_at: dict[int, bool] = {}
    for snapshot_ms, deleted in presence:
        deleted_at[snapshot_ms] = deleted_at.get(snapshot_ms, False) or bool(deleted)
    if live_before and snapshot_times and not _lookup(baseline_times, snapshot_times[0]):
        _count_tracked(counts, snapshot_times[0], snapshot_times[0] not in deleted_at)
    for snapshot_ms, deleted in deleted_at.items():
        if deleted:
            continue
        index = bisect_right(snapshot_times, snapshot_ms)
        if index >= len(snapshot_times):
            continue
        following = snapshot_times[index]
        if _lookup(baseline_times, following):
            continue
        _count_tracked(counts, following, following not in deleted_at)


def _count_tracked(counts: dict[int, list[int]], snapshot_ms: int, absent: bool) -> None:
    entry = counts.get(snapshot_ms)
    if entry is None:
        entry = counts[snapshot_ms] = [0, 0]
    entry[0] += 1
    if absent:
        entry[1] += 1


def replay_stream(
    state: ProfileState | None,
    records: Iterable[dict],
    until_ms: int,
    triggers: Triggers,
    ttl_ms: int | None = None,
    tally: Tally | None = None,
) -> Replay:
    """Advances one profile in streaming mode up to (excluding) ``until_ms``.

    Records are applied in snapshot order; there is no disappearance by snapshot, but a
    live profile unseen for ``ttl_ms`` exits at (last seen + ``ttl_ms``): before a later
    record, or at the end when that time is before ``until_ms``. A record exactly at the
    deadline keeps the profile alive. Records not newer than ``state`` are late, except
    an identical re-delivery of a record applied at ``state``'s snapshot, which is
    ignored (counted as ``reread_records_ignored``).

    Args:
        state: The stored state (``None``: never seen).
        records: The buffered records whose snapshots are complete (``< until_ms``).
        until_ms: The event time reached (the timer's firing time).
        triggers: What emits events.
        ttl_ms: ``absent_profile_ttl`` in ms, or ``None``.
        tally: Counters and ``present`` counts (profiles live after each snapshot).

    Returns:
        The new state, the transitions, the TTL exits (with their last seen snapshot)
        and the late records.
    """
    late: list[dict] = []
    fresh: list[dict] = []
    for record in records:
        if state is None or record["snapshot_ms"] > state.snapshot_ms:
            fresh.append(record)
        elif record["snapshot_ms"] == state.snapshot_ms and record_digest(record) in state.digests:
            # A re-delivery of a record already applied (a file read again): not news.
            if tally is not None:
                tally.counters["reread_records_ignored"] += 1
        else:
            late.append(record)
    by_time: dict[int, list[dict]] = {}
    for record in fresh:
        by_time.setdefault(record["snapshot_ms"], []).append(record)
    transitions: list[dict] = []
    ttl_exits: list[tuple[int, dict]] = []
    for snapshot_ms in sorted(by_time):
        group = by_time[snapshot_ms]
        state = _expire(state, snapshot_ms, ttl_ms, triggers, tally, ttl_exits)
        if len(group) > 1 and tally is not None:
            tally.counters["duplicate_records_merged"] += len(group) - 1
        record = merge_records(group)
        if record.get("keep"):
            kept = apply_keep(state, snapshot_ms, tally)
            state, transition = kept, None
            if state is None:
                continue  # never seen: nothing to keep, nothing to remember
        else:
            state, transition = apply_record(
                state, record, triggers, tally, emit=not record.get("baseline")
            )
        state.digests = sorted({record_digest(r) for r in group})
        if transition is not None:
            transitions.append(transition)
        if tally is not None and not state.gone:
            tally.present[snapshot_ms] += 1
    state = _expire(state, until_ms, ttl_ms, triggers, tally, ttl_exits)
    return Replay(state, transitions, ttl_exits, late)


def _expire(state, now_ms, ttl_ms, triggers, tally, ttl_exits):
    """Exits a live profile whose TTL deadline lies strictly before ``now_ms``."""
    if ttl_ms is None or state is None or state.gone:
        return state
    deadline = state.snapshot_ms + ttl_ms
    if deadline < now_ms:
        last_seen = state.snapshot_ms
        state, transition = apply_absence(state, deadline, triggers, tally)
        if transition is not None:
            ttl_exits.append((last_seen, transition))
    return state


def next_deadline(state: ProfileState | None, ttl_ms: int | None) -> int | None:
    """When a stored state next needs attention without any new record.

    Returns:
        The TTL deadline of a live profile (``None`` without a TTL), the time a gone
        profile's state may be dropped, or ``None`` without state.
    """
    if state is None:
        return None
    if state.gone:
        return state.gc_time()
    if ttl_ms is None:
        return None
    return state.snapshot_ms + ttl_ms


def _contains(sorted_times: Sequence[int], value: int) -> bool:
    index = bisect_left(sorted_times, value)
    return index < len(sorted_times) and sorted_times[index] == value


def _lookup(baseline_times, snapshot_ms: int) -> bool:
    if isinstance(baseline_times, Mapping):
        return bool(baseline_times.get(snapshot_ms, False))
    return snapshot_ms in baseline_times
