"""The DoFns that replay each profile's records through the membership rules.

* :class:`BatchTransitionsFn`: once per profile, over its whole history of the run (the
  output of a GroupByKey), after the batch guards passed.
* :class:`StreamingTransitionsFn`: stateful; buffers records in bag state and applies a
  snapshot when the watermark has passed it (an event-time timer), so files may arrive
  in any order; expires profiles after ``absent_profile_ttl``.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import apache_beam as beam
from apache_beam import coders
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms.config import ActivationConfig
from transforms.dead_letters import LATE_SNAPSHOT, transitions_dead_letter
from transforms.events.timestamps import format_timestamp
from transforms.metrics import StepCounts
from transforms.report.facts import CAUSE, bundle_facts, count_members, exit_cause
from transforms.segments.codecs import (
    ShuffleCodec,
    carry,
    decode_record,
    decode_state,
    encode_record,
    encode_state,
)
from transforms.segments.memberships import (
    carried_state,
    next_deadline,
    replay_batch,
    replay_stream,
)
from transforms.segments.state import (
    Tally,
    Triggers,
)
from transforms.segments.tags import (
    DEAD,
    EPSILON_MS,
    GUARD,
    GUARD_KEY,
    STATES,
    TTL_EXITS,
    exit_shard,
    timestamp_ms,
)


class TransitionsFnBase(beam.DoFn):
    """Shared per-bundle bookkeeping of the two transition DoFns."""

    def __init__(self, config: ActivationConfig) -> None:
        self._triggers = Triggers.from_config(config)
        ttl = config.absent_profile_ttl_seconds
        self._ttl_ms = None if ttl is None else ttl * 1000
        self._counts = StepCounts()
        self._tally = Tally()

    def start_bundle(self) -> None:
        self._tally = Tally()

    def _flush_counters(self) -> None:
        # The pure core counts in the tally; the DoFn's own counts are in _counts.
        for name, value in self._tally.counters.items():
            self._counts.add(name, value)
        self._tally.counters.clear()
        self._counts.flush()

    def _late(self, record: dict, applied_ms: int) -> TaggedOutput:
        self._counts.add("late_records")
        return TaggedOutput(
            DEAD,
            transitions_dead_letter(
                LATE_SNAPSHOT,
                f"record of snapshot {format_timestamp(record['snapshot_ms'])} arrived after "
                f"snapshot {format_timestamp(applied_ms)} was applied to its profile; not applied",
                file=record.get("file", ""),
                raw=json.dumps(record, sort_keys=True, default=str),
            ),
        )


class BatchTransitionsFn(TransitionsFnBase):
    """Replays each profile over every snapshot of the run (input: GroupByKey output).

    Timeline of one key (snapshots of the run T1 < T2 < T3 come as a side input)::

        element (k, [rec@T3, rec@T1])   the key's whole history (encoded), any order
        T1: first sight -> entries
        T2: no record   -> every membership exits at T2 (disappearance)
        T3: record      -> re-entry: its memberships are entries again

    No user state, on purpose (docs/design.md):

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

    def __init__(
        self,
        config: ActivationConfig,
        carry_states: bool = False,
        report: bool = False,
        codec: ShuffleCodec | None = None,
    ) -> None:
        super().__init__(config)
        self._config = config
        self._codec = codec or ShuffleCodec(config)
        self._carry_states = carry_states
        self._report = report
        self._facts: Counter = Counter()
        self._times_for: Any = None
        self._times: list[int] = []

    def process(self, element, snapshots, verdict, incomplete):
        del verdict  # only read so that the replay waits for the mass-exit guard
        key, values = element
        records = []
        initial = None
        decode = self._codec.decode
        for data in values:
            carried, record = decode(data)
            if record is None:
                initial = carried
            else:
                records.append(record)
        yield from self.replay_profile(key, initial, records, snapshots, incomplete)

    def replay_profile(self, key, initial, records, snapshots, incomplete):
        """Replays one profile's records of the run (and its carried state, if any)."""
        self._counts.add("profiles_processed")
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
            on_step=self._count_members if self._report else None,
        )
        if self._report:
            # The formatter counts what is sent; only this step knows why an exit is.
            deleted_at = {r["snapshot_ms"]: bool(r.get("deleted")) for r in records}
            for transition in replay.transitions:
                transition[CAUSE] = exit_cause(transition["snapshot_ms"], deleted_at)
        for transition in replay.transitions:
            yield (key, transition)
        if self._carry_states:
            carried = carried_state(replay.state)
            if carried is not None:
                yield TaggedOutput(STATES, carry(key, carried))

    def _count_members(self, snapshot_ms: int, state) -> None:
        if state is not None and not state.gone:
            count_members(self._facts, snapshot_ms, state.memberships)

    def finish_bundle(self):
        self._flush_counters()
        if self._facts:
            yield from bundle_facts(self._facts)


class StreamingTransitionsFn(TransitionsFnBase):
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
        wake.set(timestamp_ms(record["snapshot_ms"] + EPSILON_MS))

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
        targets = [r["snapshot_ms"] + EPSILON_MS for r in waiting]
        if deadline is not None:
            targets.append(deadline + EPSILON_MS)
        if targets:
            wake.set(timestamp_ms(min(targets)))
        for transition in replay.transitions:
            yield (key, transition)
        if replay.ttl_exits:
            shard = self._shard(key)
            for last_seen, transition in replay.ttl_exits:
                self._exit_counts[(last_seen, shard)] = (
                    self._exit_counts.get((last_seen, shard), 0) + 1
                )
                yield TaggedOutput(TTL_EXITS, ((last_seen, shard), ("exit", key, transition)))
        for record in replay.late:
            yield self._late(record, state.snapshot_ms)

    def start_bundle(self) -> None:
        super().start_bundle()
        self._exit_counts: dict[tuple[int, int], int] = {}

    def finish_bundle(self):
        self._flush_counters()
        if self._ttl_ms is not None:
            # The mass-exit guard's counts: live profiles per snapshot, and TTL exits per
            # last-seen snapshot and shard; one element per bundle and snapshot (and
            # shard), not one per profile.
            for snapshot_ms, count in self._tally.present.items():
                yield self._to_guard(("live", snapshot_ms, count), snapshot_ms + EPSILON_MS)
            for (last_seen, shard), count in self._exit_counts.items():
                yield self._to_guard(
                    ("exits", last_seen, shard, count), last_seen + self._ttl_ms + EPSILON_MS
                )
        self._tally.present.clear()
        self._exit_counts = {}

    @staticmethod
    def _to_guard(message: tuple, at_ms: int) -> TaggedOutput:
        return TaggedOutput(
            GUARD, WindowedValue((GUARD_KEY, message), timestamp_ms(at_ms), (GlobalWindow(),))
        )

    @staticmethod
    def _shard(key: str) -> int:
        return exit_shard(key)
