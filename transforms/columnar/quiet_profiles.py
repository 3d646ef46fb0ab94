"""Profiles that cannot emit anything in a run: seeded by a baseline, then unchanged.

A profile is *quiet* when its rows in a sorted bucket are:

1. first, a row of a baseline snapshot (or a baseline row), proven valid in bulk and
   not a tombstone: the replay applies it without emitting (``emit=False``);
2. then one row in every later snapshot of the run, each *steady* (equal to the row
   before it in everything the record holds, see :mod:`.bucket_replay`);
3. nothing else: no carried state, no row the bulk checks could not prove, no two
   rows in one snapshot.

The replay core then applies the same record again and again to the state that record
made: every mapped segment keeps its status (member to member, or not a member to not
a member), the identities and attributes do not change, and the profile is never
absent. No rule emits, and no counter moves. So such a profile need not become Python
values at all; ``tests/test_columnar_quiet.py`` checks this against the core
(``replay_batch``) itself, and the columnar equivalence test against the row path.

Only used when the run neither reports (the report counts members per snapshot) nor
carries states to a next run (which needs each profile's final state).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def quiet_rows(
    new_profile: np.ndarray,
    snapshot_ms: np.ndarray,
    baseline_row: np.ndarray,
    bulk: np.ndarray,
    steady: np.ndarray,
    deleted: np.ndarray,
    snapshot_times: Mapping[int, bool] | Sequence[int],
    baseline_times: Mapping[int, bool],
) -> np.ndarray:
    """Which rows of a sorted bucket belong to quiet profiles (see module doc).

    Args:
        new_profile: Per row: the row starts a profile (its key differs from the row
            before's); rows are ordered by key, then snapshot.
        snapshot_ms: Per row: its snapshot time.
        baseline_row: Per row: the row comes from a ``--baseline`` file.
        bulk: Per row: proven valid in bulk (not parsed by the row path, not carried).
        steady: Per row: equal to the row before it of the same profile.
        deleted: Per row: a tombstone.
        snapshot_times: Every snapshot time of the run.
        baseline_times: Snapshot time -> whether that snapshot is a baseline.

    Returns:
        A boolean array, one per row.
    """
    n = len(new_profile)
    if n == 0:
        return np.zeros(0, dtype=bool)
    times = np.array(sorted(snapshot_times), dtype=np.int64)
    starts = np.nonzero(new_profile)[0]
    if not len(starts) or starts[0] != 0:
        raise ValueError("the first row must start a profile")
    counts = np.diff(np.r_[starts, n])
    first_baseline = baseline_row[starts] | np.fromiter(
        (bool(baseline_times.get(int(t), False)) for t in snapshot_ms[starts]),
        dtype=bool,
        count=len(starts),
    )
    first_ok = first_baseline & bulk[starts] & ~deleted[starts]
    # Every later row: steady and in a later snapshot than the row before it.
    later = np.ones(n, dtype=bool)
    later[1:] = steady[1:] & (snapshot_ms[1:] > snapshot_ms[:-1])
    later[starts] = True
    # (A record's snapshot always is one of the run's; checked, as the core does.)
    later &= np.isin(snapshot_ms, times)
    rest_ok = np.logical_and.reduceat(later, starts)
    # One row in every snapshot of the run from the first row's on: never absent.
    remaining = len(times) - np.searchsorted(times, snapshot_ms[starts], side="left")
    quiet = first_ok & rest_ok & (counts == remaining)
    return np.repeat(quiet, counts)
