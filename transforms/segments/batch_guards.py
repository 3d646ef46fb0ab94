"""The batch guards, and the replay that waits for them, as named transforms.

Both batch paths (records grouped by profile, or rows grouped by bucket) end the same
way: the mass-exit guard counts each snapshot's tracked and absent profiles from the
grouped values, the bad-records guard counts the read step's unreadable records, and
the replay reads both verdicts as side inputs, so it cannot start, and nothing
downstream of it receives a transition, before the guards passed::

    grouped --MassExitGuard(CountAbsences, SumAbsences, CheckMassExit)--> verdict --+
    read dead letters --BadRecordsGuard(CountUnreadable, CheckBadRecords)--> ------+
    grouped --Replay (side inputs: snapshot times, both verdicts)--> transitions,
              dead letters, carried states, report facts

Each guard is a composite transform, so it nests in a runner's UI and can be applied
(and tested) alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from transforms.config import ActivationConfig
from transforms.report.facts import FACTS
from transforms.segments.guard import (
    CountUnreadableFn,
    GuardCountsFn,
    check_bad_records,
    check_mass_exit,
)
from transforms.segments.tags import DEAD, STATES


class TransitionsResult(NamedTuple):
    """The outputs of a transitions transform.

    Attributes:
        transitions: ``(profile key, transition)``; see :mod:`transforms.segments.memberships`.
        dead_letters: Dead-letter dicts (:mod:`transforms.dead_letters`).
        states: Batch with ``carry_states``: ``(profile key, encoded state)`` to seed
            the next run of a split backfill; otherwise ``None``.
        report_facts: With ``report``: members per snapshot and segment, and the
            mass-exit guard's counts (see :mod:`transforms.report.facts`).
    """

    transitions: beam.PCollection
    dead_letters: beam.PCollection
    states: beam.PCollection | None = None
    report_facts: beam.PCollection | None = None


class MassExitGuard(beam.PTransform):
    """Grouped histories -> ``(counts, verdict)``; the verdict raises ``MassExitError``.

    Args:
        count_fn: The DoFn counting each group's tracked and absent profiles per
            snapshot (it takes the snapshot times as a side input).
        snapshots: The run's snapshot times (a singleton side input).
        config: The activation config (its ``max_exit_fraction``).
        allow_mass_exit: ``--allow_mass_exit``.
        dry_run: Nothing will be sent: the counts go to the report, the run goes on.
    """

    def __init__(
        self,
        count_fn: beam.DoFn,
        snapshots: Any,
        config: ActivationConfig,
        *,
        allow_mass_exit: bool,
        dry_run: bool,
    ) -> None:
        super().__init__()
        self._count_fn = count_fn
        self._snapshots = snapshots
        self._config = config
        self._allow_mass_exit = allow_mass_exit
        self._dry_run = dry_run

    def expand(self, grouped):
        counts = (
            grouped
            | "CountAbsences" >> beam.ParDo(self._count_fn, self._snapshots)
            | "SumAbsences" >> beam.CombineGlobally(GuardCountsFn())
        )
        verdict = counts | "CheckMassExit" >> (
            beam.Map(_report_only)
            if self._dry_run
            else beam.Map(
                check_mass_exit, self._config.max_exit_fraction, self._allow_mass_exit
            )
        )
        return counts, verdict


class BadRecordsGuard(beam.PTransform):
    """Read dead letters -> the incomplete snapshots; raises ``BadRecordsError`` past
    ``max_bad_records`` unreadable records."""

    def __init__(self, max_bad_records: int) -> None:
        super().__init__()
        self._max_bad_records = max_bad_records

    def expand(self, dead_letters):
        return (
            dead_letters
            | "CountUnreadable" >> beam.CombineGlobally(CountUnreadableFn())
            | "CheckBadRecords" >> beam.Map(check_bad_records, self._max_bad_records)
        )


def guarded_replay(
    grouped: beam.PCollection,
    *,
    config: ActivationConfig,
    snapshots: Any,
    count_fn: beam.DoFn,
    replay_fn: beam.DoFn,
    read_dead_letters: beam.PCollection | None,
    allow_mass_exit: bool,
    max_bad_records: int,
    carry_states: bool,
    report: bool,
    dry_run: bool,
) -> TransitionsResult:
    """Applies both guards and the replay that waits for them (see the module doc)."""
    counts, verdict = grouped | "MassExitGuard" >> MassExitGuard(
        count_fn, snapshots, config, allow_mass_exit=allow_mass_exit, dry_run=dry_run
    )
    if read_dead_letters is None:
        read_dead_letters = grouped.pipeline | "NoUnreadable" >> beam.Create([])
    incomplete = read_dead_letters | "BadRecordsGuard" >> BadRecordsGuard(max_bad_records)
    outputs = grouped | "Replay" >> beam.ParDo(
        replay_fn, snapshots, AsSingleton(verdict), AsSingleton(incomplete)
    ).with_outputs(DEAD, STATES, FACTS, main="transitions")
    states = outputs[STATES] if carry_states else None
    facts = None
    if report:
        guard_facts = counts | "GuardFacts" >> beam.FlatMap(_guard_facts)
        facts = (outputs[FACTS], guard_facts) | "MergeReplayFacts" >> beam.Flatten()
    return TransitionsResult(outputs.transitions, outputs[DEAD], states, facts)


def _report_only(counts: dict) -> bool:
    del counts  # a dry run sends nothing: the report shows the guard's verdict
    return True


def _guard_facts(counts: dict[int, list[int]]):
    for snapshot_ms, (tracked, absent) in counts.items():
        yield ("guard", snapshot_ms, "tracked"), tracked
        yield ("guard", snapshot_ms, "absent"), absent
