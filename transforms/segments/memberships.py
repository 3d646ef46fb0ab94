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

import hashlib
import json
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from transforms.config import ActivationConfig
from transforms.events.identities import output_identities
from transforms.snapshots.profiles import MEMBER_STATUSES

REALIZED = "realized"
EXISTING = "existing"
EXITED = "exited"
# Exited memberships (and the whole state of a gone profile) are kept this long after
# their time (docs/contract.md §4), so that a late duplicate cannot resurrect them.
RETENTION_MS = 30 * 86_400_000
# Duplicate records of one snapshot: at an equal lastQualificationTime the higher rank
# wins. An exit is the most recent kind of change, and "realized" is more specific than
# "existing"; any fixed order would do, what matters is that it does not depend on the
# order in which the duplicates arrive.
_STATUS_RANK = {EXISTING: 0, REALIZED: 1, EXITED: 2}

Memberships = dict[str, dict[str, list]]
# In the set of incomplete snapshots: a record whose snapshot is unknown was lost.
ANY_SNAPSHOT = -(2**62)


@dataclass(frozen=True)
class Triggers:
    """What makes a profile emit an event (config ``triggers``, docs/contract.md §3/§4).

    Attributes:
        segments: A membership change emits an event.
        attributes: A change of a mapped attribute value emits an event.
        identities: A change of the identity map, as the event shows it, emits an event.
        config: The activation config whose include and hash rules decide what the event
            shows (``None``: every namespace, raw).
    """

    segments: bool = True
    attributes: bool = False
    identities: bool = False
    config: ActivationConfig | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, config: ActivationConfig) -> Triggers:
        """The triggers of an activation config."""
        return cls(
            segments=config.trigger_segments,
            attributes=config.trigger_attributes,
            identities=config.trigger_identities,
            config=config,
        )

    def visible_identities(self, identities: Mapping[str, Sequence[str]]) -> dict:
        """The identities as the event will show them, as comparable sets.

        A change that the include and hash rules hide from the event (a namespace left
        out, an e-mail that differs only in case or spaces) is not a change a consumer
        could see, so it must not emit an event; nor is the order of ids.
        """
        if self.config is None:
            return {namespace: frozenset(ids) for namespace, ids in identities.items()}
        return {
            namespace: frozenset(entry["id"] for entry in entries)
            for namespace, entries in output_identities(identities, self.config).items()
        }


@dataclass
class ProfileState:
    """What the job remembers about one profile between snapshots.

    Attributes:
        snapshot_ms: The latest snapshot time applied to this profile (a record, an
            absence, a tombstone or a TTL expiry). Anything older is late.
        gone: The profile was deleted or disappeared: it has no memberships any more
            and a record re-enters it like a first sight.
        memberships: Member entries and exited entries kept for :data:`RETENTION_MS`.
        identities: Last known identities (empty once gone).
        attributes: Last known mapped attributes (empty once gone).
        digests: Streaming only: digests of the records applied at ``snapshot_ms``, so
            that a re-delivered identical record is recognised and ignored.
    """

    snapshot_ms: int
    gone: bool = False
    memberships: Memberships = field(default_factory=dict)
    identities: dict = field(default_factory=dict)
    attributes: dict = field(default_factory=dict)
    digests: list = field(default_factory=list)

    @property
    def live(self) -> bool:
        """The profile is tracked (seen and neither deleted nor disappeared)."""
        return not self.gone

    def gc_time(self) -> int:
        """When a gone profile's state may be dropped entirely."""
        latest = self.snapshot_ms
        for segments in self.memberships.values():
            for entry in segments.values():
                if entry[1] > latest:
                    latest = entry[1]
        return latest + RETENTION_MS


class Tally:
    """Per-bundle accumulators that the DoFns turn into metrics and hold counts.

    Attributes:
        counters: Metric name -> count (namespace ``segment_events``).
        present: Streaming: snapshot ms -> profiles applied at it and still live.
    """

    __slots__ = ("counters", "present")

    def __init__(self) -> None:
        self.counters: dict[str, int] = defaultdict(int)
        self.present: dict[int, int] = defaultdict(int)


class Replay(NamedTuple):
    """The outcome of replaying one profile.

    Attributes:
        state: The state after the replay (``None``: never seen).
        transitions: Transitions to emit, in snapshot order.
        ttl_exits: Streaming: ``(last seen snapshot ms, transition)`` of exits by
            ``absent_profile_ttl``; these go through the mass-exit hold.
        late: Streaming: records not applied because the state had already passed their
            snapshot.
    """

    state: ProfileState | None
    transitions: list[dict]
    ttl_exits: list[tuple[int, dict]]
    late: list[dict]


# --------------------------------------------------------------------------- records


def merge_records(records: Sequence[dict]) -> dict:
    """Merges the records of one profile key in one snapshot (docs/contract.md §2.4).

    Identities are united; per segment the entry with the latest
    ``lastQualificationTime`` wins (a missing time is the oldest; at equal times the
    status rank exited > realized > existing decides); per attribute path the value
    with the greatest canonical JSON wins; a tombstone or a baseline flag on any
    duplicate applies to the merge. The result does not depend on the order of
    ``records``.

    Args:
        records: One or more records with the same ``snapshot_ms``.

    Returns:
        The merged record (the record itself when there is only one).
    """
    if len(records) == 1:
        return records[0]
    if any(r.get("keep") for r in records):
        # One of the duplicates was bad: what the profile is at this snapshot is not
        # known, so it keeps its previous state (and stays present).
        keep = min((r for r in records if r.get("keep")), key=lambda r: r.get("file", ""))
        return {**keep, "baseline": any(r.get("baseline", False) for r in records)}
    # A canonical order makes the merged identity lists independent of input order.
    ordered = sorted(records, key=_canonical)
    segments: dict[str, dict[str, list]] = {}
    identities: dict[str, list[str]] = {}
    attributes: dict[str, Any] = {}
    attribute_keys: dict[str, str] = {}
    for record in ordered:
        for namespace, by_id in record["segments"].items():
            merged = segments.setdefault(namespace, {})
            for seg_id, entry in by_id.items():
                current = merged.get(seg_id)
                if current is None or _entry_rank(entry) > _entry_rank(current):
                    merged[seg_id] = [entry[0], entry[1]]
        for namespace, ids in record["identities"].items():
            known = identities.setdefault(namespace, [])
            for ident in ids:
                if ident not in known:
                    known.append(ident)
        for path, value in record["attributes"].items():
            canonical = _canonical(value)
            if path not in attribute_keys or canonical > attribute_keys[path]:
                attribute_keys[path] = canonical
                attributes[path] = value
    return {
        "snapshot_ms": ordered[0]["snapshot_ms"],
        "baseline": any(r.get("baseline", False) for r in ordered),
        "deleted": any(r.get("deleted", False) for r in ordered),
        "segments": segments,
        "identities": identities,
        "attributes": dict(sorted(attributes.items())),
        "file": min(r.get("file", "") for r in ordered),
    }


def group_by_snapshot(records: Iterable[dict], tally: Tally | None = None) -> dict[int, dict]:
    """Groups a profile's records by snapshot time and merges duplicates.

    Args:
        records: Records of one profile key, in any order.
        tally: Counts ``duplicate_records_merged`` (records merged into another).

    Returns:
        Snapshot ms -> merged record.
    """
    by_time: dict[int, list[dict]] = {}
    for record in records:
        by_time.setdefault(record["snapshot_ms"], []).append(record)
    merged = {}
    for snapshot_ms, group in by_time.items():
        if len(group) > 1 and tally is not None:
            tally.counters["duplicate_records_merged"] += len(group) - 1
        merged[snapshot_ms] = merge_records(group)
    return merged


def record_digest(record: dict) -> str:
    """A short digest of a record's content (not its file), to recognise re-deliveries."""
    content = [
        record["segments"],
        record["identities"],
        record["attributes"],
        bool(record.get("deleted")),
        bool(record.get("baseline")),
        bool(record.get("keep")),
    ]
    return hashlib.blake2b(_canonical(content).encode("utf-8"), digest_size=8).hexdigest()


def _canonical(value: Any) -> str:
    # default=repr: attribute values from Avro/Parquet may be dates, bytes or decimals;
    # the canonical form only has to be deterministic, not reversible.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def _entry_rank(entry: Sequence) -> tuple[int, int]:
    time = entry[1] if entry[1] is not None else -1
    return time, _STATUS_RANK.get(entry[0], -1)


# ----------------------------------------------------------------------- memberships


def diff_memberships(
    previous: Memberships, current: Memberships, snapshot_ms: int
) -> tuple[Memberships, Memberships]:
    """Compares memberships before and at a snapshot (the table of docs/contract.md §4).

    ============  ==========  ========  =============================================
    before        after       emitted   lastQualificationTime
    ============  ==========  ========  =============================================
    not member    member      realized  the snapshot entry's, else the snapshot time
    member        not member  exited    the exited entry's if present, else snapshot
    member        member      --        (state keeps the entry's time, else the old)
    not member    not member  --        (an exited entry is kept for retention)
    ============  ==========  ========  =============================================

    ``existing`` and ``realized`` both mean member; a segment missing from ``current``
    is not a member.

    Args:
        previous: State memberships (member and retained exited entries).
        current: The snapshot's mapped segments ``{ns: {seg: [status, lqt or None]}}``.
        snapshot_ms: The snapshot time.

    Returns:
        ``(changes, memberships)``: the transitions ``{ns: {seg: [status, lqt]}}`` and
        the new state memberships, already pruned of exited entries older than
        :data:`RETENTION_MS`.
    """
    changes: Memberships = {}
    result: Memberships = {}
    horizon = snapshot_ms - RETENTION_MS
    for namespace, by_id in current.items():
        before_ns = previous.get(namespace, {})
        for seg_id, entry in by_id.items():
            status, qualified = entry[0], entry[1]
            before = before_ns.get(seg_id)
            was_member = before is not None and before[0] in MEMBER_STATUSES
            if status in MEMBER_STATUSES:
                if was_member:
                    time = qualified if qualified is not None else before[1]
                else:
                    time = qualified if qualified is not None else snapshot_ms
                    changes.setdefault(namespace, {})[seg_id] = [REALIZED, time]
                result.setdefault(namespace, {})[seg_id] = [status, time]
                continue
            if was_member:
                time = qualified if qualified is not None else snapshot_ms
                changes.setdefault(namespace, {})[seg_id] = [EXITED, time]
            elif qualified is not None:
                time = qualified
            else:
                time = before[1] if before is not None else snapshot_ms
            if time > horizon:
                result.setdefault(namespace, {})[seg_id] = [EXITED, time]
    for namespace, by_id in previous.items():
        current_ns = current.get(namespace, {})
        for seg_id, before in by_id.items():
            if seg_id in current_ns:
                continue
            if before[0] in MEMBER_STATUSES:
                changes.setdefault(namespace, {})[seg_id] = [EXITED, snapshot_ms]
                result.setdefault(namespace, {})[seg_id] = [EXITED, snapshot_ms]
            elif before[1] > horizon:
                result.setdefault(namespace, {})[seg_id] = before
    return changes, result


def prune_exited(memberships: Memberships, now_ms: int) -> Memberships:
    """Drops exited entries whose time is :data:`RETENTION_MS` or more before ``now_ms``."""
    horizon = now_ms - RETENTION_MS
    pruned: Memberships = {}
    for namespace, by_id in memberships.items():
        kept = {
            seg_id: entry
            for seg_id, entry in by_id.items()
            if entry[0] in MEMBER_STATUSES or entry[1] > horizon
        }
        if kept:
            pruned[namespace] = kept
    return pruned


# ------------------------------------------------------------------------ one step


def apply_record(
    state: ProfileState | None,
    record: dict,
    triggers: Triggers,
    tally: Tally | None = None,
    emit: bool = True,
) -> tuple[ProfileState, dict | None]:
    """Applies one (merged) record of a profile to its state.

    Args:
        state: The state before the record's snapshot (``None``: first sight).
        record: The merged record of the snapshot.
        triggers: What emits events.
        tally: Counters to update.
        emit: ``False`` for a baseline: the state is updated, nothing is emitted.

    Returns:
        The new state and the transition to emit, if any.
    """
    snapshot_ms = record["snapshot_ms"]
    live = state is not None and not state.gone
    previous = state.memberships if state is not None else {}
    counters = tally.counters if tally is not None else defaultdict(int)
    if record.get("deleted"):
        if not live:
            # Nothing to exit; the tombstone time still guards against late records.
            memberships = prune_exited(previous, snapshot_ms)
            return ProfileState(snapshot_ms, True, memberships), None
        exited_only = {
            namespace: {s: e for s, e in by_id.items() if e[0] not in MEMBER_STATUSES}
            for namespace, by_id in record["segments"].items()
        }
        changes, memberships = diff_memberships(previous, exited_only, snapshot_ms)
        counters["profiles_deleted"] += 1
        transition = None
        if emit and triggers.segments and changes:
            transition = _transition(snapshot_ms, changes, state.identities, state.attributes)
        return ProfileState(snapshot_ms, True, memberships), transition
    changes, memberships = diff_memberships(previous, record["segments"], snapshot_ms)
    identities = record["identities"]
    attributes = record["attributes"]
    fired = False
    if triggers.attributes:
        before = state.attributes if live else {}
        fired = attributes != before
    if not fired and triggers.identities:
        before_ids = state.identities if live else {}
        fired = identities != before_ids and (
            triggers.visible_identities(identities) != triggers.visible_identities(before_ids)
        )
    transition = None
    if emit and (fired or (triggers.segments and changes)):
        if fired:
            # An attribute/identity event carries every current membership: unchanged
            # members as "existing", changed ones with their transition status.
            segments: Memberships = {}
            for namespace, by_id in memberships.items():
                for seg_id, entry in by_id.items():
                    if entry[0] in MEMBER_STATUSES:
                        segments.setdefault(namespace, {})[seg_id] = [EXISTING, entry[1]]
            for namespace, by_id in changes.items():
                segments.setdefault(namespace, {}).update(by_id)
            counters["trigger_events"] += 1
        else:
            segments = changes
        transition = _transition(snapshot_ms, segments, identities, attributes)
    return ProfileState(snapshot_ms, False, memberships, identities, attributes), transition


def apply_keep(
    state: ProfileState | None, snapshot_ms: int, tally: Tally | None = None
) -> ProfileState | None:
    """A profile present at ``snapshot_ms`` with a bad record: it keeps its state.

    Its memberships, identities and attributes stay as they were and nothing is emitted;
    a live profile is seen at ``snapshot_ms`` (its TTL restarts there). A profile never
    seen or gone stays so.
    """
    if tally is not None:
        tally.counters["profiles_kept_on_bad_record"] += 1
    if state is None or state.gone:
        return state
    return ProfileState(snapshot_ms, False, state.memberships, state.identities, state.attributes)


def apply_absence(
    state: ProfileState | None,
    snapshot_ms: int,
    triggers: Triggers,
    tally: Tally | None = None,
    emit: bool = True,
) -> tuple[ProfileState | None, dict | None]:
    """Exits a live profile that is absent at ``snapshot_ms`` (disappearance or TTL).

    Every membership exits with ``snapshot_ms`` as its time; the transition carries the
    last known identities and attributes. A profile that is not live is unchanged.

    Returns:
        The new state and the transition to emit, if any.
    """
    if state is None or state.gone:
        return state, None
    changes, memberships = diff_memberships(state.memberships, {}, snapshot_ms)
    if tally is not None:
        tally.counters["profiles_absent_exits"] += 1
    transition = None
    if emit and triggers.segments and changes:
        transition = _transition(snapshot_ms, changes, state.identities, state.attributes)
    return ProfileState(snapshot_ms, True, memberships), transition


def _transition(snapshot_ms: int, segments: Memberships, identities: dict, attributes: dict):
    # Sorted so that the event (and its eventId) never depends on dict insertion order.
    return {
        "snapshot_ms": snapshot_ms,
        "segments": {ns: dict(sorted(segments[ns].items())) for ns in sorted(segments)},
        "identities": identities,
        "attributes": attributes,
    }


# -------------------------------------------------------------------------- replays


def replay_batch(
    records: Iterable[dict],
    snapshot_times: Sequence[int],
    triggers: Triggers,
    tally: Tally | None = None,
    baseline_times: frozenset[int] | set[int] | Mapping[int, bool] = frozenset(),
    initial: ProfileState | None = None,
    incomplete: Container[int] | None = None,
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
