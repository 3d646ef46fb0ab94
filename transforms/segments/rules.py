"""One step of the membership rules (docs/contract.md §4): records of one snapshot are
merged, compared with the state, and give at most one transition.

See :mod:`transforms.segments.memberships` for the vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from transforms.segments.state import (
    _STATUS_RANK,
    EXISTING,
    EXITED,
    REALIZED,
    RETENTION_MS,
    Memberships,
    ProfileState,
    Tally,
    Triggers,
)

# The statuses of a member (an "exited" entry is not one).
MEMBER_STATUSES = frozenset((REALIZED, EXISTING))

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
    # Not sorted here: the event's bytes (and its eventId) are encoded with sorted keys,
    # so nothing downstream depends on the order of the segments.
    return {
        "snapshot_ms": snapshot_ms,
        "segments": segments,
        "identities": identities,
        "attributes": attributes,
    }
