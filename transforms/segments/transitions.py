"""Segment entry/exit transitions per profile (SPEC §4, §7, §9).

:class:`ComputeSegmentTransitions` turns ``(profile key, record)`` pairs into
``(profile key, transition)`` pairs. The rules live in the pure functions of
:mod:`transforms.segments.memberships`; this module only feeds them, in two modes.

Batch (``streaming=False``)::

    records --CombineGlobally--> snapshot times of the run ------------------(side input)
    records --(key, (T, deleted))--GroupByKey--> _MassExitCountsFn --> CombineGlobally
            --> check_mass_exit --> verdict (raises MassExitError) ----------(side input)
    records --encode_record--> (key, bytes) --GroupByKey--> (key, its whole history)
            --_BatchTransitionsFn--> transitions

  In a run of a split backfill (``--snapshots_per_run``) the states carried from the
  previous run come among the records (``ReadSnapshots(carried_states=...)``) and join
  both groupings; the replay also emits the final states of live profiles for the next
  run (``carry_states``).

  Records cross the GroupByKey as compact ``bytes`` (:func:`encode_record`): the local
  runner holds a shuffle in memory as decoded values, and a dict tree per record costs
  several times its encoding. Each key arrives once with every record of the run; the
  replay walks the run's
  snapshots, so a profile absent from a snapshot exits there. The replay step reads the
  verdict as a side input: it cannot start, and nothing downstream of it (sink, files)
  receives a transition, before the guard passed.

Streaming (``streaming=True``)::

    records --_StreamingTransitionsFn (stateful)--> transitions
                 +-- TTL exits + live counts per snapshot --> _MassExitHoldFn --> released

  Records are buffered in bag state and applied in snapshot order when the watermark
  has passed their snapshot (an event-time timer), so files may arrive in any order.

State and timers are limited to what the Flink portable runner and Dataflow serve:
ReadModifyWrite and Bag state (both bag-backed) and event-time timers. Values are
``bytes`` (Beam's portable primitive encoding, see :func:`encode_state`) in
``BytesCoder`` cells, so the SDK state cache never walks a nested object.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import coders
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsSingleton, TaggedOutput
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms.config import ActivationConfig
from transforms.events.timestamps import format_timestamp
from transforms.segments.carried_state import CARRIED_STATE_FIELD, is_carried_state
from transforms.segments.memberships import (
    ANY_SNAPSHOT,
    RETENTION_MS,
    ProfileState,
    Tally,
    Triggers,
    carried_state,
    mass_exit_counts,
    next_deadline,
    replay_batch,
    replay_stream,
)

_LOGGER = logging.getLogger(__name__)

METRICS_NAMESPACE = "segment_events"
# The mass-exit guard ignores snapshots with fewer tracked profiles (SPEC §7).
MIN_TRACKED_PROFILES = 100
# A snapshot at T is complete once the watermark passed T; timers fire at T + 1 ms
# because a watermark equal to T still admits elements stamped T.
_EPSILON_MS = 1
_STATE_VERSION = 1

_DEAD = "dead_letters"
_TTL = "ttl_exits"
_STATES = "carried_states"
# The grouped values of a batch run: a record, or the state of a live profile carried
# from a previous run of a split backfill (only live ones are carried: the guard's pass
# counts them as tracked without decoding them).
_RECORD_TAG = b"r"
_CARRIED_TAG = b"L"

# Beam's own portable encoding of plain values; used inside bytes state values (the
# state cell's coder is BytesCoder, so the state cache never walks the object).
_VALUE_CODER = coders.FastPrimitivesCoder()


class MassExitError(ValueError):
    """A batch run would exit too many profiles at once (SPEC §7); nothing was sent."""


class TransitionsResult(NamedTuple):
    """The outputs of :class:`ComputeSegmentTransitions`.

    Attributes:
        transitions: ``(profile key, transition)``; see :mod:`transforms.segments.memberships`.
        dead_letters: Dicts ``{"stage", "reason", "error", "file", "raw"}``.
        states: Batch with ``carry_states``: ``(profile key, encoded state)`` to seed
            the next run of a split backfill; otherwise ``None``.
    """

    transitions: beam.PCollection
    dead_letters: beam.PCollection
    states: beam.PCollection | None = None


# ----------------------------------------------------------------- record encoding


def encode_record(record: dict) -> bytes:
    """Encodes a profile record as one compact ``bytes`` value for a shuffle or state.

    A tuple of the fields, without their names, in Beam's portable primitive encoding:
    the local runner then holds each shuffled record as one ``bytes`` object instead of
    a decoded dict tree (about a third of the memory, and no decode/re-encode by the
    runner).
    """
    return _VALUE_CODER.encode(
        (
            record["snapshot_ms"],
            bool(record.get("baseline", False)),
            bool(record.get("deleted", False)),
            record["segments"],
            record["identities"],
            record["attributes"],
            record.get("file", ""),
            bool(record.get("keep", False)),
        )
    )


def decode_record(data: bytes) -> dict:
    """Decodes :func:`encode_record` output back into the record dict."""
    snapshot_ms, baseline, deleted, segments, identities, attributes, file, keep = (
        _VALUE_CODER.decode(data)
    )
    record = {
        "snapshot_ms": snapshot_ms,
        "baseline": baseline,
        "deleted": deleted,
        "segments": segments,
        "identities": identities,
        "attributes": attributes,
        "file": file,
    }
    if keep:
        record["keep"] = True
    return record


# --------------------------------------------------------------------------- state


def encode_state(state: ProfileState) -> bytes:
    """Encodes a profile state as one compact ``bytes`` value (versioned list)."""
    return _VALUE_CODER.encode(
        [
            _STATE_VERSION,
            state.snapshot_ms,
            state.gone,
            state.memberships,
            state.identities,
            state.attributes,
            state.digests,
        ]
    )


def decode_state(data: bytes) -> ProfileState:
    """Decodes :func:`encode_state` output."""
    version, snapshot_ms, gone, memberships, identities, attributes, digests = _VALUE_CODER.decode(
        data
    )
    if version != _STATE_VERSION:
        raise ValueError(f"unsupported transition state version {version}")
    return ProfileState(snapshot_ms, gone, memberships, identities, attributes, digests)


# ------------------------------------------------------------------------ transform


class ComputeSegmentTransitions(beam.PTransform):
    """Computes segment entry/exit transitions per profile key (SPEC §4).

    Example timeline (batch, one profile ``k``, segment ``s`` mapped)::

        T1  k: s realized (lqt L1)   -> {"s": ["realized", L1]}   first sight
        T2  k: s existing            -> nothing                    member -> member
        T3  k absent                 -> {"s": ["exited", T3]}      disappearance
        T4  k: s realized (no lqt)   -> {"s": ["realized", T4]}    re-entry

    In streaming the same records (as elements stamped T1, T2, T4) give the same events
    except that T3's exit becomes a TTL exit at (T2 + absent_profile_ttl), if that is
    before T4.

    Args:
        config: The activation config.
        streaming: Streaming semantics (TTL exits, late data) instead of batch.
        allow_mass_exit: Do not stop at the mass-exit guard (SPEC §7).
        carry_states: Batch only: the result's ``states`` holds what the next run of a
            split backfill needs, as opaque ``bytes`` values for
            :class:`transforms.segments.carried_state.WriteCarriedStates`.
        read_dead_letters: Batch only: the read step's dead letters. Those whose
            profile is unknown (``"profile_state": "unknown"``) make their snapshot
            incomplete: more than ``max_bad_records`` of them fail the run before any
            transition exists (:class:`BadRecordsError`); up to that many, no profile
            exits by disappearance from an incomplete snapshot.
        max_bad_records: See ``read_dead_letters``.

    Returns (from ``expand``):
        A :class:`TransitionsResult` with ``transitions`` and ``dead_letters``.
    """

    def __init__(
        self,
        config: ActivationConfig,
        streaming: bool = False,
        allow_mass_exit: bool = False,
        label: str | None = None,
        carry_states: bool = False,
        *,
        read_dead_letters: beam.PCollection | None = None,
        max_bad_records: int = 0,
    ) -> None:
        super().__init__(label)
        if streaming and carry_states:
            raise ValueError("carried states only apply to batch runs")
        self._read_dead_letters = read_dead_letters
        self._max_bad_records = max_bad_records
        self._config = config
        self._streaming = streaming
        self._allow_mass_exit = allow_mass_exit
        self._carry_states = carry_states

    def expand(self, keyed_records: beam.PCollection) -> TransitionsResult:
        records = keyed_records
        if not isinstance(keyed_records.windowing.windowfn, GlobalWindows):
            # Profile state must outlive any window: it spans the whole run.
            records = keyed_records | "GlobalWindow" >> beam.WindowInto(GlobalWindows())
        if self._streaming:
            return self._expand_streaming(records)
        return self._expand_batch(records)

    def _expand_batch(self, records: beam.PCollection) -> TransitionsResult:
        config = self._config
        snapshots = AsSingleton(
            records | "SnapshotTimes" >> beam.CombineGlobally(_SnapshotTimesFn())
        )
        # The guard only needs which snapshots each profile is in: a light pass whose
        # verdict is a side input of the replay, so no transition exists (and nothing
        # downstream starts) before it passed.
        presence = records | "ProfilePresence" >> beam.Map(_presence)
        grouped = records | "EncodeRecords" >> beam.Map(_encode_keyed).with_output_types(
            tuple[str, bytes]
        )
        verdict = (
            presence
            | "GroupPresence" >> beam.GroupByKey()
            | "CountAbsences" >> beam.ParDo(_MassExitCountsFn(), snapshots)
            | "SumAbsences" >> beam.CombineGlobally(_GuardCountsFn())
            | "MassExitGuard"
            >> beam.Map(check_mass_exit, config.max_exit_fraction, self._allow_mass_exit)
        )
        if self._read_dead_letters is not None:
            unreadable = self._read_dead_letters | "CountUnreadable" >> beam.CombineGlobally(
                _CountUnreadableFn()
            )
        else:
            unreadable = records.pipeline | "NoUnreadable" >> beam.Create([{}])
        incomplete = unreadable | "BadRecordsGuard" >> beam.Map(
            check_bad_records, self._max_bad_records
        )
        outputs = (
            grouped
            | "GroupByProfile" >> beam.GroupByKey()
            | "Replay"
            >> beam.ParDo(
                _BatchTransitionsFn(config, self._carry_states),
                snapshots,
                AsSingleton(verdict),
                AsSingleton(incomplete),
            ).with_outputs(_DEAD, _STATES, main="transitions")
        )
        states = outputs[_STATES] if self._carry_states else None
        return TransitionsResult(outputs.transitions, outputs[_DEAD], states)

    def _expand_streaming(self, records: beam.PCollection) -> TransitionsResult:
        config = self._config
        outputs = (
            records
            # State is keyed by the encoded key: declare str so that the key coder is
            # the deterministic StrUtf8Coder on every runner.
            | "KeyType" >> beam.Map(_identity).with_output_types(tuple[str, Any])
            | "Replay"
            >> beam.ParDo(_StreamingTransitionsFn(config)).with_outputs(
                _DEAD, _TTL, main="transitions"
            )
        )
        if config.absent_profile_ttl_seconds is None:
            return TransitionsResult(outputs.transitions, outputs[_DEAD])
        held = (
            outputs[_TTL]
            | "SnapshotKeyType" >> beam.Map(_identity).with_output_types(tuple[int, Any])
            | "MassExitHold"
            >> beam.ParDo(_MassExitHoldFn(config, self._allow_mass_exit)).with_outputs(
                _DEAD, main="released"
            )
        )
        transitions = (outputs.transitions, held.released) | "MergeTransitions" >> beam.Flatten()
        dead_letters = (outputs[_DEAD], held[_DEAD]) | "MergeDeadLetters" >> beam.Flatten()
        return TransitionsResult(transitions, dead_letters)


def _identity(element: Any) -> Any:
    return element


def _encode_keyed(element: tuple[str, dict]) -> tuple[str, bytes]:
    key, record = element
    if is_carried_state(record):
        return key, _carried_bytes(record)
    return key, _RECORD_TAG + encode_record(record)


def _carried_bytes(record: dict) -> bytes:
    data = record[CARRIED_STATE_FIELD]
    if data[:1] != _CARRIED_TAG:
        raise ValueError("a carried state file holds a value of an unknown kind")
    return data


def _carry(key: str, state: ProfileState) -> tuple[str, bytes]:
    return key, _CARRIED_TAG + encode_state(state)


# ------------------------------------------------------------------ bad-records guard


class BadRecordsError(ValueError):
    """More input records than ``--max_bad_records`` could not be tied to a profile."""


class _CountUnreadableFn(beam.CombineFn):
    """Read dead letters of unknown profiles -> count per snapshot (ANY_SNAPSHOT: none)."""

    def create_accumulator(self) -> dict[int, int]:
        return {}

    def add_input(self, accumulator: dict[int, int], letter: dict) -> dict[int, int]:
        if letter.get("profile_state") == "unknown":
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
    """Applies the batch mass-exit guard to the per-snapshot counts (SPEC §7).

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


def _presence(element: tuple[str, dict]) -> tuple[str, tuple[int | None, bool]]:
    key, record = element
    if is_carried_state(record):
        # (None, live): the profile's state before the run, not a snapshot's record.
        _carried_bytes(record)  # checks the tag
        return key, (None, True)
    return key, (record["snapshot_ms"], bool(record.get("deleted", False)))


class _MassExitCountsFn(beam.DoFn):
    """Per-bundle guard counts from ``(key, [(snapshot ms, deleted)])`` groups."""

    def start_bundle(self) -> None:
        self._counts: dict[int, list[int]] = {}
        self._times_for: Any = None
        self._times: list[int] = []

    def process(self, element, snapshots):
        if snapshots is not self._times_for:
            self._times_for = snapshots
            self._times = sorted(snapshots)
        presence = []
        live_before = False
        for snapshot_ms, flag in element[1]:
            if snapshot_ms is None:
                live_before = live_before or flag  # a carried state: flag = live
            else:
                presence.append((snapshot_ms, flag))  # a record: flag = deleted
        mass_exit_counts(presence, self._times, snapshots, self._counts, live_before)

    def finish_bundle(self):
        for snapshot_ms, counts in self._counts.items():
            yield WindowedValue((snapshot_ms, tuple(counts)), 0, (GlobalWindow(),))


class _SnapshotTimesFn(beam.CombineFn):
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
        merged: dict[int, bool] = {}
        for accumulator in accumulators:
            for snapshot_ms, baseline in accumulator.items():
                merged[snapshot_ms] = merged.get(snapshot_ms, False) or baseline
        return merged

    def extract_output(self, accumulator: dict[int, bool]) -> dict[int, bool]:
        return accumulator


class _GuardCountsFn(beam.CombineFn):
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


# -------------------------------------------------------------------------- DoFns


class _TransitionsFnBase(beam.DoFn):
    """Shared per-bundle bookkeeping of the two transition DoFns."""

    def __init__(self, config: ActivationConfig) -> None:
        self._triggers = Triggers.from_config(config)
        ttl = config.absent_profile_ttl_seconds
        self._ttl_ms = None if ttl is None else ttl * 1000
        self._counters: dict[str, Any] = {}
        self._tally = Tally()

    def start_bundle(self) -> None:
        self._tally = Tally()

    def _flush_counters(self) -> None:
        for name, value in self._tally.counters.items():
            if value:
                counter = self._counters.get(name)
                if counter is None:
                    counter = self._counters[name] = Metrics.counter(METRICS_NAMESPACE, name)
                counter.inc(value)
        self._tally.counters.clear()

    def _late(self, record: dict, applied_ms: int) -> TaggedOutput:
        self._tally.counters["late_records"] += 1
        return TaggedOutput(
            _DEAD,
            {
                "stage": "transitions",
                "reason": "late_snapshot",
                "error": (
                    f"record of snapshot {format_timestamp(record['snapshot_ms'])} arrived "
                    f"after snapshot {format_timestamp(applied_ms)} was applied to its "
                    "profile; not applied"
                ),
                "file": record.get("file", ""),
                "raw": json.dumps(record, sort_keys=True, default=str),
            },
        )


class _BatchTransitionsFn(_TransitionsFnBase):
    """Replays each profile over every snapshot of the run (input: GroupByKey output).

    Timeline of one key (snapshots of the run T1 < T2 < T3 come as a side input)::

        element (k, [rec@T3, rec@T1])   the key's whole history (encoded), any order
        T1: first sight -> entries
        T2: no record   -> every membership exits at T2 (disappearance)
        T3: record      -> re-entry: its memberships are entries again

    No user state, on purpose (README "Transitions"):

    * the GroupByKey hands over each key exactly once with all its snapshots, so state
      would carry nothing between elements;
    * buffering the records in bag state until an end-of-window timer instead of the
      GroupByKey cannot work in Python: a timer callback cannot read side inputs
      (``invoke_timer_callback`` in ``apache_beam/runners/common.py``, "TODO: support
      side inputs"), and the replay needs the run's snapshot times;
    * each state access through the SDK's state cache costs ~2 ms on this machine:
      the cache sizes every value with ``objsize``, which walks the globals of every
      loaded module on each call (``bench/bench_state_cost.py``).
    """

    def __init__(self, config: ActivationConfig, carry_states: bool = False) -> None:
        super().__init__(config)
        self._carry_states = carry_states
        self._times_for: Any = None
        self._times: list[int] = []

    def process(self, element, snapshots, verdict, incomplete):
        del verdict  # only read so that the replay waits for the mass-exit guard
        key, values = element
        records = []
        initial = None
        for data in values:
            if data[:1] == _CARRIED_TAG:
                initial = decode_state(data[1:])
            else:
                records.append(decode_record(data[1:]))
        self._tally.counters["profiles_processed"] += 1
        if snapshots is not self._times_for:
            # The side input is the same object for a whole bundle: sort it once.
            self._times_for = snapshots
            self._times = sorted(snapshots)
        replay = replay_batch(
            records,
            self._times,
            self._triggers,
            self._tally,
            snapshots,
            initial=initial,
            incomplete=incomplete,
        )
        for transition in replay.transitions:
            yield (key, transition)
        if self._carry_states:
            carried = carried_state(replay.state)
            if carried is not None:
                yield TaggedOutput(_STATES, _carry(key, carried))

    def finish_bundle(self):
        self._flush_counters()


class _StreamingTransitionsFn(_TransitionsFnBase):
    """Keeps each profile's state across snapshots that arrive over time.

    ``process`` only appends the record to BUFFER and sets WAKE to just after its
    snapshot: no state read per element. When the watermark passes WAKE, ``on_wake``
    applies every buffered record of a complete snapshot in time order, expires the
    profile if its TTL ran out, writes PROFILE and sets WAKE to the next thing to do (a
    buffered later snapshot, the TTL deadline, or the end of a gone profile's
    retention). Setting WAKE to a later time than a pending one only delays that work:
    ``on_wake`` always catches up in time order.

    Timeline of one key with ``absent_profile_ttl`` = 2 days (times in days)::

        element rec@1 (watermark < 1)   BUFFER += rec@1, WAKE at 1+1ms
        watermark > 1+1ms               WAKE: apply rec@1 (first sight -> entries);
                                        WAKE at 3+1ms (TTL deadline)
        element rec@2                   BUFFER += rec@2, WAKE at 2+1ms
        element rec@1 again (late)      BUFFER += rec@1, WAKE at 1+1ms (fires at once)
        WAKE                            rec@1: identical re-delivery -> ignored (a
                                        different one: dead letter late_snapshot)
        watermark > 2+1ms               WAKE: apply rec@2; WAKE at 4+1ms
        watermark > 4+1ms               WAKE: exit all at 4 (TTL), profile gone;
                                        WAKE at 34+1ms (state dropped 30 days later)
    """

    PROFILE = userstate.ReadModifyWriteStateSpec("profile", coders.BytesCoder())
    BUFFER = userstate.BagStateSpec("buffer", coders.BytesCoder())
    WAKE = userstate.TimerSpec("wake", TimeDomain.WATERMARK)

    def process(
        self,
        element,
        buffer=beam.DoFn.StateParam(BUFFER),  # noqa: B008
        wake=beam.DoFn.TimerParam(WAKE),  # noqa: B008
    ):
        record = element[1]
        buffer.add(encode_record(record))
        wake.set(_timestamp(record["snapshot_ms"] + _EPSILON_MS))

    @userstate.on_timer(WAKE)
    def on_wake(
        self,
        key=beam.DoFn.KeyParam,
        fired=beam.DoFn.TimestampParam,
        profile=beam.DoFn.StateParam(PROFILE),  # noqa: B008
        buffer=beam.DoFn.StateParam(BUFFER),  # noqa: B008
        wake=beam.DoFn.TimerParam(WAKE),  # noqa: B008
    ):
        now_ms = fired.micros // 1000
        stored = profile.read()
        state = decode_state(stored) if stored is not None else None
        buffered = [decode_record(data) for data in buffer.read()]
        # Snapshots before the timer's time are complete: the watermark passed them.
        ready = [r for r in buffered if r["snapshot_ms"] < now_ms]
        waiting = [r for r in buffered if r["snapshot_ms"] >= now_ms]
        replay = replay_stream(state, ready, now_ms, self._triggers, self._ttl_ms, self._tally)
        final = replay.state
        if final is not None and final.gone and now_ms >= final.gc_time():
            final = None  # a gone profile's retention is over: drop everything
        if ready:
            buffer.clear()
            for record in waiting:
                buffer.add(encode_record(record))
        if final is None:
            if stored is not None:
                profile.clear()
        elif final is not state:
            profile.write(encode_state(final))
        deadline = next_deadline(final, self._ttl_ms)
        targets = [r["snapshot_ms"] + _EPSILON_MS for r in waiting]
        if deadline is not None:
            targets.append(deadline + _EPSILON_MS)
        if targets:
            wake.set(_timestamp(min(targets)))
        for transition in replay.transitions:
            yield (key, transition)
        for last_seen, transition in replay.ttl_exits:
            yield TaggedOutput(_TTL, (last_seen, ("exit", key, transition)))
        for record in replay.late:
            yield self._late(record, state.snapshot_ms)

    def finish_bundle(self):
        self._flush_counters()
        if self._ttl_ms is not None:
            # Live profiles per snapshot, the denominator of the mass-exit hold; one
            # element per snapshot and bundle, not one per profile.
            for snapshot_ms, count in self._tally.present.items():
                yield TaggedOutput(
                    _TTL,
                    WindowedValue(
                        (snapshot_ms, ("live", count)),
                        _timestamp(snapshot_ms + _EPSILON_MS),
                        (GlobalWindow(),),
                    ),
                )
        self._tally.present.clear()


def _timestamp(epoch_ms: int) -> Timestamp:
    return Timestamp(micros=epoch_ms * 1000)


class _MassExitHoldFn(beam.DoFn):
    """Streaming mass-exit guard for TTL exits, keyed by the exits' last seen snapshot.

    All profiles last seen at snapshot T that stay unseen expire together at
    T + TTL. This DoFn collects their exits and the number of profiles that were live
    after T; when the watermark passes T + TTL it releases the exits or, if more than
    ``max_exit_fraction`` of at least 100 live profiles expire, holds them: they are
    not sent but written to the dead letter (reason ``mass_exit_held``), with a
    WARNING log and the ``mass_exit_held`` metric.

    Decisions are cumulative: exits that arrive after a decision (a runner whose
    timers do not hold the watermark, such as the BundleBasedDirectRunner, may deliver
    them later) re-arm the timer and are judged together with those already decided;
    once T is held, every later exit of T is held too. The counts are dropped 30 days
    after T + TTL.

    Timeline (TTL = 2 days, times in days)::

        ("live", 500)@1+1ms   LIVE += [500]; RELEASE at 3 + 2 ms; CLEANUP at 33
        ("exit", k, tr)@3+1ms EXITS += (k, tr)                      (x 400)
        watermark > 3 + 2 ms  RELEASE: (0 + 400) / 500 = 0.8 > 0.5 -> hold 400
        watermark > 33        CLEANUP: clear LIVE and DECIDED
    """

    LIVE = userstate.BagStateSpec("live", coders.VarIntCoder())
    EXITS = userstate.BagStateSpec("exits", coders.BytesCoder())
    # [exits decided so far, 1 if held else 0]
    DECIDED = userstate.ReadModifyWriteStateSpec(
        "decided", coders.TupleCoder((coders.VarIntCoder(), coders.VarIntCoder()))
    )
    RELEASE = userstate.TimerSpec("release", TimeDomain.WATERMARK)
    CLEANUP = userstate.TimerSpec("cleanup", TimeDomain.WATERMARK)

    def __init__(self, config: ActivationConfig, allow_mass_exit: bool) -> None:
        self._ttl_ms = config.absent_profile_ttl_seconds * 1000
        self._max_fraction = config.max_exit_fraction
        self._allow = allow_mass_exit
        self._held = Metrics.counter(METRICS_NAMESPACE, "mass_exit_held")

    def process(
        self,
        element,
        live=beam.DoFn.StateParam(LIVE),  # noqa: B008
        exits=beam.DoFn.StateParam(EXITS),  # noqa: B008
        release=beam.DoFn.TimerParam(RELEASE),  # noqa: B008
        cleanup=beam.DoFn.TimerParam(CLEANUP),  # noqa: B008
    ):
        last_seen, message = element
        expiry_ms = last_seen + self._ttl_ms
        if message[0] == "live":
            live.add(message[1])
        else:
            exits.add(_VALUE_CODER.encode([message[1], message[2]]))
        cleanup.set(_timestamp(expiry_ms + RETENTION_MS))
        # Exits of profiles last seen at T are emitted at T + TTL + 1 ms.
        release.set(_timestamp(expiry_ms + 2 * _EPSILON_MS))

    @userstate.on_timer(RELEASE)
    def on_release(
        self,
        last_seen=beam.DoFn.KeyParam,
        live=beam.DoFn.StateParam(LIVE),  # noqa: B008
        exits=beam.DoFn.StateParam(EXITS),  # noqa: B008
        decided=beam.DoFn.StateParam(DECIDED),  # noqa: B008
    ):
        pending = [_VALUE_CODER.decode(data) for data in exits.read()]
        if not pending:
            return
        exits.clear()
        tracked = sum(live.read())
        done, held = decided.read() or (0, 0)
        total = done + len(pending)
        decided.write((total, held))
        fraction = total / tracked if tracked else 0.0
        # Without a live count (it was cleaned up) there is nothing to judge against.
        massive = bool(held) or (tracked >= MIN_TRACKED_PROFILES and fraction > self._max_fraction)
        if massive and not self._allow:
            decided.write((total, 1))
            _LOGGER.warning(
                "mass exit held: %d of the %d profiles live at snapshot %s were unseen for "
                "absent_profile_ttl (fraction %.3f > max_exit_fraction %g); %d exits are "
                "not sent but written to the dead letter (reason mass_exit_held)",
                total,
                tracked,
                format_timestamp(last_seen),
                fraction,
                self._max_fraction,
                len(pending),
            )
            self._held.inc(len(pending))
            for key, transition in pending:
                yield TaggedOutput(
                    _DEAD, self._held_letter(key, transition, last_seen, total, tracked)
                )
            return
        if massive:
            _LOGGER.warning(
                "mass exit allowed: %d of the %d profiles live at snapshot %s expired "
                "(fraction %.3f)",
                total,
                tracked,
                format_timestamp(last_seen),
                fraction,
            )
        for key, transition in pending:
            yield (key, transition)

    @userstate.on_timer(CLEANUP)
    def on_cleanup(
        self,
        live=beam.DoFn.StateParam(LIVE),  # noqa: B008
        decided=beam.DoFn.StateParam(DECIDED),  # noqa: B008
    ):
        live.clear()
        decided.clear()

    @staticmethod
    def _held_letter(key: str, transition: dict, last_seen: int, total: int, tracked: int):
        return {
            "stage": "transitions",
            "reason": "mass_exit_held",
            "error": (
                f"exit at {format_timestamp(transition['snapshot_ms'])} held by the mass exit "
                f"guard: {total} of {tracked} profiles live at snapshot "
                f"{format_timestamp(last_seen)} expired at once"
            ),
            "file": "",
            "raw": json.dumps(
                {"profile_key": key, "transition": transition}, sort_keys=True, default=str
            ),
        }
