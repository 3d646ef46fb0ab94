"""The streaming hold of TTL exits: exits that expire together are judged together.

All profiles last seen at snapshot T that stay unseen expire together at T + TTL. Before
any of those exits is sent, the job checks two things about T (docs/contract.md §7):

* **mass exit**: more than ``max_exit_fraction`` of at least 100 profiles live after T
  expire at once (the mark of a truncated export): the exits are held;
* **proof**: a snapshot in (T, T + TTL] had input records that could not be tied to a
  profile (``profile_state: unknown`` dead letters): any of the expiring profiles may
  have been in it, so its absence is not proven and the exits are withheld.

Held and withheld exits are not sent: they go to the dead letters (reasons
``mass_exit_held`` and ``incomplete_snapshot``) with a WARNING and a counter.

Two steps, so that no key ever holds more than a slice of the exits::

    counts (live per T, exits per T and shard, incomplete snapshots)
        --(one key)--> MassExitGuardFn: small counts only; when the watermark passes
                       T + TTL it decides T and sends each shard its verdict
    exits ((T, shard), exit) + verdicts ((T, shard), verdict)
        --> ReleaseExitsFn: holds a shard's exits until a verdict covers them, then
            sends or dead-letters exactly as many as the verdict counted

A shard is a stable hash of the profile key modulo :data:`EXIT_SHARDS`. Decisions are
cumulative: exits that arrive after T was decided (a runner whose timers do not hold
the watermark, such as the BundleBasedDirectRunner, may deliver them later) re-arm the
guard, which judges them together with those already decided; once T is held, every
later exit of T is held too.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import apache_beam as beam
from apache_beam import coders
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain

from transforms.config import ActivationConfig
from transforms.dead_letters import (
    INCOMPLETE_SNAPSHOT,
    MASS_EXIT_HELD,
    UNKNOWN,
    transitions_dead_letter,
)
from transforms.events.timestamps import format_timestamp
from transforms.metrics import METRICS_NAMESPACE
from transforms.segments.codecs import VALUE_CODER
from transforms.segments.guard import MIN_TRACKED_PROFILES
from transforms.segments.state import RETENTION_MS
from transforms.segments.tags import DEAD, EPSILON_MS, GUARD_KEY, timestamp_ms

_LOGGER = logging.getLogger(__name__)

# In the guard's table of incomplete snapshots: the newest landed snapshot; and the
# time before any.
_NEWEST = -(2**62) + 1
_NEVER = -(2**63)

# Verdicts: send, or withhold as MASS_EXIT_HELD or INCOMPLETE_SNAPSHOT, which are the
# withheld exits' dead-letter reasons too.
SEND = "send"


def incomplete_marker(letter: dict, timestamp_ms_: int) -> list[tuple[str, tuple]]:
    """A read dead letter -> the guard's "incomplete snapshot" message, if it is one."""
    if letter.get("profile_state") != UNKNOWN:
        return []
    snapshot_ms = letter.get("snapshot_ms")
    return [(GUARD_KEY, ("incomplete", timestamp_ms_ if snapshot_ms is None else snapshot_ms))]


def decide(
    tracked: int,
    total: int,
    held_before: str | None,
    unproven: bool,
    max_fraction: float,
    allow_mass_exit: bool,
) -> tuple[str, bool]:
    """The verdict for the exits of one last-seen snapshot (pure).

    Returns:
        ``(verdict, massive)``; a withholding verdict, once given, stays.
    """
    fraction = total / tracked if tracked else 0.0
    # Without a live count (it was cleaned up) there is nothing to judge against.
    massive = held_before == MASS_EXIT_HELD or (
        tracked >= MIN_TRACKED_PROFILES and fraction > max_fraction
    )
    if held_before == INCOMPLETE_SNAPSHOT or unproven:
        return INCOMPLETE_SNAPSHOT, massive
    if massive and not allow_mass_exit:
        return MASS_EXIT_HELD, massive
    return SEND, massive


class MassExitGuardFn(beam.DoFn):
    """Decides, per last-seen snapshot T, whether its TTL exits may be sent.

    Input (one key, :data:`GUARD_KEY`): ``("live", T, n)``, ``("exits", T, shard, n)``
    and ``("incomplete", U)``. Output: ``((T, shard), ("verdict", verdict, covered))``
    where ``covered`` is how many exits of that shard the verdicts so far counted.

    Attributes:
        COUNTS: ``bytes``: {T: [live, {shard: exits}, {shard: decided}, verdict]} and the
            incomplete snapshot times; small (no profile appears in it).
        DECIDE: Watermark timer at the earliest T + TTL + 2 ms with undecided exits (or
            the earliest clean-up time).

    Timeline (TTL = 2 days, times in days)::

        ("live", 1, 500)@1        COUNTS[1].live = 500; DECIDE at 3 + 2 ms
        ("exits", 1, s, 7)@3      COUNTS[1].exits[s] += 7           (all shards: 400)
        watermark > 3 + 2 ms      DECIDE: 400 / 500 = 0.8 > 0.5 -> mass_exit_held;
                                  ((1, s), ("verdict", "mass_exit_held", 7)) per shard
        watermark > 33            DECIDE: T = 1 is forgotten
    """

    COUNTS = userstate.ReadModifyWriteStateSpec("counts", coders.BytesCoder())
    DECIDE = userstate.TimerSpec("decide", TimeDomain.WATERMARK)

    def __init__(
        self, config: ActivationConfig, allow_mass_exit: bool, proven_by_landing: bool = False
    ) -> None:
        self._ttl_ms = config.absent_profile_ttl_seconds * 1000
        self._max_fraction = config.max_exit_fraction
        self._allow = allow_mass_exit
        self._proven_by_landing = proven_by_landing
        self._not_proven = Metrics.counter(METRICS_NAMESPACE, "ttl_exits_not_proven_at_stop")
        self._held = Metrics.counter(METRICS_NAMESPACE, "mass_exit_held")
        self._unproven = Metrics.counter(METRICS_NAMESPACE, "ttl_exits_unproven")

    def process(
        self,
        element,
        counts=beam.DoFn.StateParam(COUNTS),  # noqa: B008
        decide_timer=beam.DoFn.TimerParam(DECIDE),  # noqa: B008
    ):
        message = element[1]
        snapshots, incomplete = self._read(counts)
        kind = message[0]
        if kind == "incomplete":
            incomplete[message[1]] = incomplete.get(message[1], 0) + 1
        elif kind == "landed":
            # The newest landed snapshot, under a key no snapshot time can take.
            incomplete[_NEWEST] = max(incomplete.get(_NEWEST, message[1]), message[1])
        else:
            entry = snapshots.setdefault(message[1], [0, {}, {}, None])
            if kind == "live":
                entry[0] += message[2]
            else:
                shard, n = message[2], message[3]
                entry[1][shard] = entry[1].get(shard, 0) + n
        self._write(counts, snapshots, incomplete)
        self._arm(decide_timer, snapshots)

    @userstate.on_timer(DECIDE)
    def on_decide(
        self,
        fired=beam.DoFn.TimestampParam,
        counts=beam.DoFn.StateParam(COUNTS),  # noqa: B008
        decide_timer=beam.DoFn.TimerParam(DECIDE),  # noqa: B008
    ):
        now_ms = fired.micros // 1000
        snapshots, incomplete = self._read(counts)
        for last_seen in sorted(snapshots):
            live, exits, decided, verdict = snapshots[last_seen]
            expiry_ms = last_seen + self._ttl_ms
            if expiry_ms + RETENTION_MS < now_ms:
                del snapshots[last_seen]
                continue
            if self._deadline(last_seen) > now_ms or exits == decided:
                continue
            if self._proven_by_landing and incomplete.get(_NEWEST, _NEVER) < expiry_ms:
                # The watermark passed T + TTL without any snapshot at or after it: the
                # job is stopping (drain, --max_watch_seconds). Absence is not proven.
                self._stop_unproven(last_seen, exits, decided)
                continue
            total = sum(exits.values())
            unproven = any(last_seen < u <= expiry_ms for u in incomplete)
            verdict, massive = decide(
                live, total, verdict, unproven, self._max_fraction, self._allow
            )
            new = total - sum(decided.values())
            self._report(verdict, massive, last_seen, total, live, new)
            for shard, count in sorted(exits.items()):
                if decided.get(shard) != count:
                    decided[shard] = count
                    yield (last_seen, shard), ("verdict", verdict, count)
            snapshots[last_seen] = [live, exits, decided, verdict]
        horizon = now_ms - self._ttl_ms - RETENTION_MS
        incomplete = {u: n for u, n in incomplete.items() if u >= horizon or u == _NEWEST}
        self._write(counts, snapshots, incomplete)
        self._arm(decide_timer, snapshots)

    def _stop_unproven(self, last_seen: int, exits: dict, decided: dict) -> None:
        pending = sum(exits.values()) - sum(decided.values())
        # Counted as decided so that they are reported once; no verdict is sent, so
        # the exits stay unsent.
        decided.update(exits)
        self._not_proven.inc(pending)
        _LOGGER.warning(
            "%d TTL exits of profiles last seen at snapshot %s are not sent: the watermark "
            "passed their deadline %s without a snapshot at or after it (the job is "
            "stopping: drained, or --max_watch_seconds ran out); a stop is not an absence",
            pending,
            format_timestamp(last_seen),
            format_timestamp(last_seen + self._ttl_ms),
        )

    def _deadline(self, last_seen: int) -> int:
        # TTL exits of profiles last seen at T are stamped T + TTL + 1 ms.
        return last_seen + self._ttl_ms + 2 * EPSILON_MS

    def _arm(self, timer, snapshots: dict) -> None:
        times = [
            self._deadline(t) if entry[1] != entry[2] else t + self._ttl_ms + RETENTION_MS + 1
            for t, entry in snapshots.items()
        ]
        if times:
            timer.set(timestamp_ms(min(times)))

    def _report(self, verdict, massive, last_seen, total, live, new) -> None:
        fraction = total / live if live else 0.0
        if verdict == MASS_EXIT_HELD:
            _LOGGER.warning(
                "mass exit held: %d of the %d profiles live at snapshot %s were unseen for "
                "absent_profile_ttl (fraction %.3f > max_exit_fraction %g); %d exits are "
                "not sent but written to the dead letter (reason mass_exit_held)",
                total,
                live,
                format_timestamp(last_seen),
                fraction,
                self._max_fraction,
                new,
            )
            self._held.inc(new)
        elif verdict == INCOMPLETE_SNAPSHOT:
            _LOGGER.warning(
                "%d TTL exits of profiles last seen at snapshot %s are not sent but written "
                "to the dead letter (reason incomplete_snapshot): a snapshot within "
                "absent_profile_ttl after it had records that name no profile",
                new,
                format_timestamp(last_seen),
            )
            self._unproven.inc(new)
        elif massive:
            _LOGGER.warning(
                "mass exit allowed: %d of the %d profiles live at snapshot %s expired "
                "(fraction %.3f)",
                total,
                live,
                format_timestamp(last_seen),
                fraction,
            )

    @staticmethod
    def _read(counts) -> tuple[dict, dict]:
        stored = counts.read()
        if stored is None:
            return {}, {}
        snapshots, incomplete = VALUE_CODER.decode(stored)
        return snapshots, incomplete

    @staticmethod
    def _write(counts, snapshots: dict, incomplete: dict) -> None:
        counts.write(VALUE_CODER.encode((snapshots, incomplete)))


class ReleaseExitsFn(beam.DoFn):
    """Holds one shard's TTL exits of one last-seen snapshot until a verdict covers them.

    Input, keyed by ``(T, shard)``: ``("exit", profile key, transition)`` and
    ``("verdict", verdict, covered)``. Sends (main output) or dead-letters as many
    pending exits as the verdicts counted and not yet handled.

    Attributes:
        PENDING: The shard's exits not handled yet (encoded ``[key, transition]``).
        COVERED: ``(exits the verdicts counted, exits handled, last verdict)``.
        CLEANUP: Watermark timer at T + TTL + 30 days: the state is dropped.

    Timeline (one shard)::

        ("exit", k1, tr)@3+1ms            PENDING += k1
        ("exit", k2, tr)@3+1ms            PENDING += k2
        ("verdict", "send", 2)@3+2ms      k1, k2 sent; COVERED = (2, 2, send)
        ("exit", k3, tr) (late)           PENDING += k3 (waits)
        ("verdict", "mass_exit_held", 3)  k3 dead-lettered; COVERED = (3, 3, held)
    """

    PENDING = userstate.BagStateSpec("pending", coders.BytesCoder())
    COVERED = userstate.ReadModifyWriteStateSpec(
        "covered",
        coders.TupleCoder((coders.VarIntCoder(), coders.VarIntCoder(), coders.StrUtf8Coder())),
    )
    CLEANUP = userstate.TimerSpec("cleanup", TimeDomain.WATERMARK)

    def __init__(self, config: ActivationConfig) -> None:
        self._ttl_ms = config.absent_profile_ttl_seconds * 1000

    def process(
        self,
        element,
        pending=beam.DoFn.StateParam(PENDING),  # noqa: B008
        covered=beam.DoFn.StateParam(COVERED),  # noqa: B008
        cleanup=beam.DoFn.TimerParam(CLEANUP),  # noqa: B008
    ):
        (last_seen, _shard), message = element
        cleanup.set(timestamp_ms(last_seen + self._ttl_ms + RETENTION_MS))
        counted, handled, verdict = covered.read() or (0, 0, SEND)
        if message[0] == "exit":
            pending.add(VALUE_CODER.encode([message[1], message[2]]))
            if counted <= handled:
                return  # waits for a verdict that counts it
        else:
            if message[2] <= counted:
                return  # an older verdict
            counted, verdict = message[2], message[1]
        waiting = [VALUE_CODER.decode(data) for data in pending.read()]
        due = min(len(waiting), counted - handled)
        if due <= 0:
            covered.write((counted, handled, verdict))
            return
        pending.clear()
        for item in waiting[due:]:
            pending.add(VALUE_CODER.encode(item))
        covered.write((counted, handled + due, verdict))
        for key, transition in waiting[:due]:
            if verdict == SEND:
                yield (key, transition)
            else:
                yield TaggedOutput(DEAD, _withheld_letter(key, transition, last_seen, verdict))

    @userstate.on_timer(CLEANUP)
    def on_cleanup(
        self,
        pending=beam.DoFn.StateParam(PENDING),  # noqa: B008
        covered=beam.DoFn.StateParam(COVERED),  # noqa: B008
    ):
        pending.clear()
        covered.clear()


def _withheld_letter(key: str, transition: dict, last_seen: int, verdict: str) -> dict[str, Any]:
    why = (
        "held by the mass exit guard: too many profiles"
        if verdict == MASS_EXIT_HELD
        else "not proven: a snapshot within absent_profile_ttl after it had unreadable "
        "records, and the profile may be one of them; profiles"
    )
    return transitions_dead_letter(
        verdict,
        (
            f"exit at {format_timestamp(transition['snapshot_ms'])} {why} last seen at "
            f"snapshot {format_timestamp(last_seen)} expired at once"
            if verdict == MASS_EXIT_HELD
            else f"exit at {format_timestamp(transition['snapshot_ms'])} {why} last seen at "
            f"snapshot {format_timestamp(last_seen)} are withheld"
        ),
        file="",
        raw=json.dumps({"profile_key": key, "transition": transition}, sort_keys=True, default=str),
    )
