"""The batch guards: too many unreadable records, and too many exits at once.

Both are computed from light passes over the records and read by the replay as side
inputs, so no transition exists (and nothing downstream starts) before they passed
(docs/contract.md §7).
"""

from __future__ import annotations

import logging
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms import progress
from transforms.dead_letters import UNKNOWN
from transforms.errors import SegmentEventsError
from transforms.events.timestamps import format_timestamp
from transforms.segments.carried_state import is_carried_state
from transforms.segments.codecs import presence_of
from transforms.segments.memberships import (
    mass_exit_counts,
)
from transforms.segments.state import (
    ANY_SNAPSHOT,
)

_LOGGER = logging.getLogger(__name__)

# The mass-exit guard ignores snapshots with fewer tracked profiles (docs/contract.md §7).
MIN_TRACKED_PROFILES = 100


class MassExitError(SegmentEventsError, ValueError):
    """A batch run would exit too many profiles at once (docs/contract.md §7); nothing was sent."""


# ------------------------------------------------------------------ bad-records guard


class BadRecordsError(SegmentEventsError, ValueError):
    """More input records than ``--max_bad_records`` could not be tied to a profile."""


class CountUnreadableFn(beam.CombineFn):
    """Read dead letters of unknown profiles -> count per snapshot (ANY_SNAPSHOT: none)."""

    def create_accumulator(self) -> dict[int, int]:
        return {}

    def add_input(self, accumulator: dict[int, int], letter: dict) -> dict[int, int]:
        if letter.get("profile_state") == UNKNOWN:
            snapshot_ms = letter.get("snapshot_ms")
            key = ANY_SNAPSHOT if snapshot_ms is None else snapshot_ms
            accumulator[key] = accumulator.get(key, 0) + 1
        return accumulator

    def merge_accumulators(self, accumulators):
        merged: dict[int, int] = {}
        for accumulator in accumulators:
            for key, count in accumulator.items():
                merged[key] = merged.get(key, 0) + count
        return merged

    def extract_output(self, accumulator: dict[int, int]) -> dict[int, int]:
        return accumulator


def check_bad_records(counts: dict[int, int], max_bad_records: int) -> frozenset[int]:
    """Applies ``--max_bad_records`` to the unreadable records of a batch run.

    Args:
        counts: Snapshot ms (or ``ANY_SNAPSHOT``) -> records of that snapshot that could
            not be tied to a profile.
        max_bad_records: How many such records the run accepts.

    Returns:
        The incomplete snapshots, whose disappearance exits are withheld.

    Raises:
        BadRecordsError: More than ``max_bad_records``; nothing was computed or sent.
    """
    total = sum(counts.values())
    if total > max_bad_records:
        where = ", ".join(
            "unknown snapshot" if t == ANY_SNAPSHOT else format_timestamp(t) for t in sorted(counts)
        )
        raise BadRecordsError(
            f"{total} input record(s) could not be read and do not say which profile they "
            f"belong to (snapshots: {where}); more than --max_bad_records "
            f"{max_bad_records}, so nothing was sent: an absent profile there may only be "
            "unreadable. Fix the export, or rerun with "
            f"--max_bad_records {total} (those snapshots then send no disappearance exits; "
            "the records go to --dead_letter_path)"
        )
    if total:
        _LOGGER.warning(
            "%d unreadable input record(s) allowed by --max_bad_records: no disappearance "
            "exits from %d incomplete snapshot(s)",
            total,
            len(counts),
        )
    return frozenset(counts)


# ------------------------------------------------------------------ mass-exit guard


def check_mass_exit(
    counts: dict[int, list[int]], max_exit_fraction: float, allow_mass_exit: bool = False
) -> bool:
    """Applies the batch mass-exit guard to the per-snapshot counts (docs/contract.md §7).

    Args:
        counts: Snapshot ms -> ``[profiles tracked before it, of those absent from it]``.
        max_exit_fraction: The largest allowed ``absent / tracked``.
        allow_mass_exit: Only log a warning instead of failing.

    Returns:
        ``True`` when the run may go on.

    Raises:
        MassExitError: A snapshot with at least 100 tracked profiles exceeds the
            fraction; the one-line message names the first such snapshot.
    """
    failures = []
    for snapshot_ms in sorted(counts):
        tracked, absent = counts[snapshot_ms]
        if tracked >= MIN_TRACKED_PROFILES and absent / tracked > max_exit_fraction:
            failures.append((snapshot_ms, tracked, absent))
    if not failures:
        return True
    if allow_mass_exit:
        for snapshot_ms, tracked, absent in failures:
            _LOGGER.warning(
                "mass exit allowed: snapshot %s exits %d of %d tracked profiles (%.1f%%)",
                format_timestamp(snapshot_ms),
                absent,
                tracked,
                100.0 * absent / tracked,
            )
        return True
    snapshot_ms, tracked, absent = failures[0]
    more = f" (and {len(failures) - 1} later snapshot(s))" if len(failures) > 1 else ""
    raise MassExitError(
        f"mass exit guard: snapshot {format_timestamp(snapshot_ms)} is missing {absent} of "
        f"the {tracked} profiles tracked before it (fraction {absent / tracked:.3f} > "
        f"max_exit_fraction {max_exit_fraction:g}){more}; nothing was sent. Check the "
        f"export for truncation, or rerun with --allow_mass_exit"
    )


class MassExitCountsFn(beam.DoFn):
    """Per-bundle guard counts from the grouped values of each profile (their headers)."""

    def start_bundle(self) -> None:
        self._counts: dict[int, list[int]] = {}
        self._times_for: Any = None
        self._times: list[int] = []

    def process(self, element, snapshots):
        progress.add("profiles_total")
        if snapshots is not self._times_for:
            self._times_for = snapshots
            self._times = sorted(snapshots)
        presence = []
        live_before = False
        for snapshot_ms, flag in map(presence_of, element[1]):
            if snapshot_ms is None:
                live_before = live_before or flag  # a carried state: flag = live
            else:
                presence.append((snapshot_ms, flag))  # a record: flag = deleted
        mass_exit_counts(presence, self._times, snapshots, self._counts, live_before)

    def finish_bundle(self):
        for snapshot_ms, counts in self._counts.items():
            yield WindowedValue((snapshot_ms, tuple(counts)), 0, (GlobalWindow(),))


class SnapshotTimesFn(beam.CombineFn):
    """Every snapshot time of a batch run -> whether it is a baseline snapshot."""

    def create_accumulator(self) -> dict[int, bool]:
        return {}

    def add_input(self, accumulator: dict[int, bool], element: tuple) -> dict[int, bool]:
        record = element[1]
        if is_carried_state(record):
            return accumulator
        snapshot_ms = record["snapshot_ms"]
        if not accumulator.get(snapshot_ms, False):
            accumulator[snapshot_ms] = bool(record.get("baseline", False))
        return accumulator

    def merge_accumulators(self, accumulators):
        return _merge_times(accumulators)

    def extract_output(self, accumulator: dict[int, bool]) -> dict[int, bool]:
        return accumulator


class SnapshotCountsFn(beam.CombineFn):
    """``(snapshot ms, baseline, records)`` per file -> whether each snapshot time of a
    batch run is a baseline snapshot (as :class:`SnapshotTimesFn`, from the read step's
    counts instead of every record)."""

    def create_accumulator(self) -> dict[int, bool]:
        return {}

    def add_input(self, accumulator: dict[int, bool], element: tuple) -> dict[int, bool]:
        snapshot_ms, baseline, _ = element
        accumulator[snapshot_ms] = accumulator.get(snapshot_ms, False) or bool(baseline)
        return accumulator

    def merge_accumulators(self, accumulators):
        return _merge_times(accumulators)

    def extract_output(self, accumulator: dict[int, bool]) -> dict[int, bool]:
        return accumulator


def _merge_times(accumulators) -> dict[int, bool]:
    merged: dict[int, bool] = {}
    for accumulator in accumulators:
        for snapshot_ms, baseline in accumulator.items():
            merged[snapshot_ms] = merged.get(snapshot_ms, False) or baseline
    return merged


class GuardCountsFn(beam.CombineFn):
    """Sums ``(snapshot ms, [tracked, absent])`` pairs into one dict."""

    def create_accumulator(self) -> dict[int, list[int]]:
        return {}

    def add_input(self, accumulator, element):
        snapshot_ms, (tracked, absent) = element
        counts = accumulator.setdefault(snapshot_ms, [0, 0])
        counts[0] += tracked
        counts[1] += absent
        return accumulator

    def merge_accumulators(self, accumulators):
        merged: dict[int, list[int]] = {}
        for accumulator in accumulators:
            for element in accumulator.items():
                self.add_input(merged, element)
        return merged

    def extract_output(self, accumulator):
        return accumulator
