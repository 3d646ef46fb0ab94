"""Segment entry/exit transitions per profile (docs/contract.md §4, §7, §9).

:class:`ComputeBatchTransitions` and :class:`ComputeStreamingTransitions` turn
``(profile key, record)`` pairs into ``(profile key, transition)`` pairs, each
returning one :class:`TransitionsResult`. The rules live in the pure functions of
:mod:`transforms.segments.memberships`; this module only feeds them, in two modes.

Batch (:class:`ComputeBatchTransitions`)::

    records (or the read's per-file counts) --CombineGlobally(SnapshotTimesFn or
            SnapshotCountsFn)--> snapshot times of the run ------------(side input)
    records --ShuffleCodec--> (key, bytes) --GroupByKey "GroupByProfile"--> grouped
    grouped --MassExitGuard (MassExitCountsFn, GuardCountsFn, check_mass_exit)
            --> verdict (raises MassExitError) -------------------------(side input)
    read dead letters --BadRecordsGuard (CountUnreadableFn, check_bad_records)
            --> unreadable records per snapshot (raises BadRecordsError) -(side input)
    grouped --BatchTransitionsFn ("Replay")--> transitions (+ dead letters, carried
            states, report facts)

  The guards and the replay that waits for them are
  :func:`transforms.segments.batch_guards.guarded_replay`, which the columnar path
  (:mod:`transforms.columnar`) shares.

  One GroupByKey serves both passes: the guard reads which snapshots each profile is
  in from the grouped values' headers, and the replay reads the same groups once the
  verdict (its side input) exists. When the read step encodes the records itself (it is
  given the codec, see ``snapshot_counts``), the snapshot times come from its per-file
  counts and the records are already ``(key, bytes)``.

  In a run of a split backfill (``--snapshots_per_run``) the states carried from the
  previous run come among the records (``ReadSnapshots(carried_states=...)``) and join
  the grouping; the replay also emits the final states of live profiles for the next
  run (``carry_states``).

  Records cross the GroupByKey as compact ``bytes`` (:class:`ShuffleCodec`): the local
  runner holds a shuffle in memory as decoded values, and a dict tree per record costs
  several times its encoding. Each key arrives once with every record of the run; the
  replay walks the run's snapshots, so a profile absent from a snapshot exits there.
  The replay step reads the verdicts as side inputs: it cannot start, and nothing
  downstream of it (sink, files) receives a transition, before the guards passed.

Streaming (:class:`ComputeStreamingTransitions`)::

    records --StreamingTransitionsFn (stateful, "Replay")--> transitions
       +-- TTL exits (keyed by last seen snapshot and shard) ----------------+
       +-- live and exit counts, with landed and incomplete snapshot marks   |
            --> MassExitGuardFn (one key) --> verdicts ----------------------+
                                      --> ReleaseExitsFn --> released exits (+ dead letters)

  Records are buffered in bag state and applied in snapshot order when the watermark
  has passed their snapshot (an event-time timer), so files may arrive in any order.
  Without ``absent_profile_ttl`` there are no TTL exits, and no guard or hold.

State and timers are limited to what the Flink portable runner and Dataflow serve:
ReadModifyWrite and Bag state (both bag-backed) and event-time timers. Values are
``bytes`` (Beam's portable primitive encoding, see :func:`encode_state`) in
``BytesCoder`` cells, so the SDK state cache never walks a nested object.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.pvalue import AsSingleton
from apache_beam.transforms.window import GlobalWindows

from transforms.config import ActivationConfig
from transforms.segments.batch_guards import TransitionsResult, guarded_replay
from transforms.segments.codecs import ShuffleCodec
from transforms.segments.guard import (
    BadRecordsError,
    MassExitCountsFn,
    MassExitError,
    SnapshotCountsFn,
    SnapshotTimesFn,
)
from transforms.segments.hold import MassExitGuardFn, ReleaseExitsFn, incomplete_marker
from transforms.segments.tags import DEAD, GUARD, GUARD_KEY, TTL_EXITS
from transforms.segments.transition_fns import BatchTransitionsFn, StreamingTransitionsFn

__all__ = [
    "BadRecordsError",
    "ComputeBatchTransitions",
    "ComputeStreamingTransitions",
    "MassExitError",
    "TransitionsResult",
]


class ComputeBatchTransitions(beam.PTransform):
    """Batch segment entry/exit transitions per profile key (docs/contract.md §4).

    Example timeline (one profile ``k``, segment ``s`` mapped)::

        T1  k: s realized (lqt L1)   -> {"s": ["realized", L1]}   first sight
        T2  k: s existing            -> nothing                    member -> member
        T3  k absent                 -> {"s": ["exited", T3]}      disappearance
        T4  k: s realized (no lqt)   -> {"s": ["realized", T4]}    re-entry

    Input: ``(profile key, record)`` pairs, or, with ``snapshot_counts``, the
    ``(profile key, bytes)`` pairs that ``ReadEncodedSnapshots`` encoded with ``codec``.

    Args:
        config: The activation config.
        allow_mass_exit: Do not stop at the mass-exit guard (docs/contract.md §7).
        carry_states: The result's ``states`` holds what the next run of a split
            backfill needs, as opaque ``bytes`` values for
            :class:`transforms.segments.carried_state.WriteCarriedStates`.
        read_dead_letters: The read step's dead letters. Those whose profile is
            unknown (``"profile_state": "unknown"``) make their snapshot incomplete:
            more than ``max_bad_records`` of them fail the run before any transition
            exists (:class:`BadRecordsError`); up to that many, no profile exits by
            disappearance from an incomplete snapshot.
        max_bad_records: See ``read_dead_letters``.
        report: Also count the report's facts, and tell the formatter the cause of
            each exit (``transition["exit_cause"]``).
        dry_run: Nothing will be sent, so the mass-exit guard does not stop the run;
            its counts go to the report, which shows the verdict.
        codec: How records cross the GroupByKey (made from the config when not given);
            give the one the read step encoded with.
        snapshot_counts: ``(snapshot ms, baseline, records)`` per file, from
            ``ReadEncodedSnapshots``. With it, the input records are already encoded by
            ``codec``, and the run's snapshot times come from these counts instead of
            a pass over every record.

    Returns (from ``expand``):
        A :class:`TransitionsResult`.
    """

    def __init__(
        self,
        config: ActivationConfig,
        *,
        allow_mass_exit: bool = False,
        carry_states: bool = False,
        read_dead_letters: beam.PCollection | None = None,
        max_bad_records: int = 0,
        report: bool = False,
        dry_run: bool = False,
        codec: ShuffleCodec | None = None,
        snapshot_counts: beam.PCollection | None = None,
    ) -> None:
        super().__init__()
        self._config = config
        self._allow_mass_exit = allow_mass_exit
        self._carry_states = carry_states
        self._read_dead_letters = read_dead_letters
        self._max_bad_records = max_bad_records
        self._report = report
        self._dry_run = dry_run
        self._codec = codec or ShuffleCodec(config)
        self._snapshot_counts = snapshot_counts

    def expand(self, records: beam.PCollection) -> TransitionsResult:
        config = self._config
        records = _in_global_window(records)
        if self._snapshot_counts is not None:
            snapshots = AsSingleton(
                self._snapshot_counts | "SnapshotTimes" >> beam.CombineGlobally(SnapshotCountsFn())
            )
            encoded = records
        else:
            snapshots = AsSingleton(
                records | "SnapshotTimes" >> beam.CombineGlobally(SnapshotTimesFn())
            )
            encoded = records | "EncodeRecords" >> beam.Map(
                self._codec.encode_keyed
            ).with_output_types(tuple[str, bytes])
        # One shuffle for the guard and the replay: the guard reads each profile's
        # presence from the grouped values' headers, and the replay reads the same
        # groups once the verdicts (its side inputs) exist.
        grouped = encoded | "GroupByProfile" >> beam.GroupByKey()
        return guarded_replay(
            grouped,
            config=config,
            snapshots=snapshots,
            count_fn=MassExitCountsFn(),
            replay_fn=BatchTransitionsFn(config, self._carry_states, self._report, self._codec),
            read_dead_letters=self._read_dead_letters,
            allow_mass_exit=self._allow_mass_exit,
            max_bad_records=self._max_bad_records,
            carry_states=self._carry_states,
            report=self._report,
            dry_run=self._dry_run,
        )


class ComputeStreamingTransitions(beam.PTransform):
    """Streaming segment entry/exit transitions per profile key (docs/contract.md §4, §9).

    The same records as :class:`ComputeBatchTransitions`'s timeline, as elements stamped
    T1, T2 and T4 (T3's snapshot does not hold ``k``), give the same events, except
    that T3's exit becomes a TTL exit at (T2 + absent_profile_ttl), if that is before
    T4; without ``absent_profile_ttl`` there is no exit at all.

    Input: ``(profile key, record)`` pairs stamped with their snapshot time.

    Args:
        config: The activation config.
        allow_mass_exit: Do not hold TTL exits at the mass-exit guard.
        read_dead_letters: The read step's dead letters. Those of unknown profiles
            make their snapshot incomplete: with ``absent_profile_ttl``, TTL exits of
            profiles last seen at T are withheld when a snapshot in (T, T + TTL] is
            incomplete.
        landed_snapshots: The snapshot time (epoch ms) of every landed file. A TTL exit
            at T + TTL is sent only once a snapshot at or after T + TTL has landed, so
            a stop or a drain (the watermark jumps to the end of time) sends no exit
            that no snapshot proved. ``None``: the watermark alone proves it (for
            inputs whose watermark only advances as snapshots land).

    Returns (from ``expand``):
        A :class:`TransitionsResult` (``states`` and ``report_facts`` are ``None``).
    """

    def __init__(
        self,
        config: ActivationConfig,
        *,
        allow_mass_exit: bool = False,
        read_dead_letters: beam.PCollection | None = None,
        landed_snapshots: beam.PCollection | None = None,
    ) -> None:
        super().__init__()
        self._config = config
        self._allow_mass_exit = allow_mass_exit
        self._read_dead_letters = read_dead_letters
        self._landed_snapshots = landed_snapshots

    def expand(self, records: beam.PCollection) -> TransitionsResult:
        config = self._config
        outputs = (
            _in_global_window(records)
            # State is keyed by the encoded key: declare str so that the key coder is
            # the deterministic StrUtf8Coder on every runner.
            | "KeyType" >> beam.Map(_identity).with_output_types(tuple[str, Any])
            | "Replay"
            >> beam.ParDo(StreamingTransitionsFn(config)).with_outputs(
                DEAD, TTL_EXITS, GUARD, main="transitions"
            )
        )
        if config.absent_profile_ttl_seconds is None:
            return TransitionsResult(outputs.transitions, outputs[DEAD])
        # The mass-exit guard (one key, small counts) and the exits it releases (keyed
        # by last-seen snapshot and shard): see transforms.segments.hold. Their labels
        # stay flat, as in earlier versions: they name stateful steps, and a savepoint
        # or a Dataflow update maps state by those names.
        guard_inputs = [outputs[GUARD]]
        if self._landed_snapshots is not None:
            guard_inputs.append(
                self._landed_snapshots
                | "MarkLandedSnapshots"
                >> beam.Map(_landed_message).with_output_types(tuple[str, Any])
            )
        if self._read_dead_letters is not None:
            guard_inputs.append(
                self._read_dead_letters
                | "MarkIncompleteSnapshots"
                >> beam.ParDo(_MarkIncompleteFn()).with_output_types(tuple[str, Any])
            )
        verdicts = (
            guard_inputs
            | "MergeGuardCounts" >> beam.Flatten()
            | "GuardKeyType" >> beam.Map(_identity).with_output_types(tuple[str, Any])
            | "MassExitGuard"
            >> beam.ParDo(
                MassExitGuardFn(
                    config,
                    self._allow_mass_exit,
                    proven_by_landing=self._landed_snapshots is not None,
                )
            )
        )
        held = (
            (outputs[TTL_EXITS], verdicts)
            | "MergeExitsAndVerdicts" >> beam.Flatten()
            | "ShardKeyType" >> beam.Map(_identity).with_output_types(tuple[tuple[int, int], Any])
            | "ReleaseExits"
            >> beam.ParDo(ReleaseExitsFn(config)).with_outputs(DEAD, main="released")
        )
        transitions = (outputs.transitions, held.released) | "MergeTransitions" >> beam.Flatten()
        dead_letters = (outputs[DEAD], held[DEAD]) | "MergeDeadLetters" >> beam.Flatten()
        return TransitionsResult(transitions, dead_letters)


def _in_global_window(records: beam.PCollection) -> beam.PCollection:
    if isinstance(records.windowing.windowfn, GlobalWindows):
        return records
    # Profile state must outlive any window: it spans the whole run.
    return records | "GlobalWindow" >> beam.WindowInto(GlobalWindows())


def _landed_message(snapshot_ms: int) -> tuple[str, tuple]:
    return GUARD_KEY, ("landed", snapshot_ms)


class _MarkIncompleteFn(beam.DoFn):
    """Read dead letters of unknown profiles -> "incomplete snapshot" guard messages."""

    def process(self, letter, timestamp=beam.DoFn.TimestampParam):  # noqa: B008
        yield from incomplete_marker(letter, timestamp.micros // 1000)


def _identity(element: Any) -> Any:
    return element
