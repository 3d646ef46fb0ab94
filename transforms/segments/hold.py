"""The streaming mass-exit hold: TTL exits that expire together are judged together."""

from __future__ import annotations

import json
import logging

import apache_beam as beam
from apache_beam import coders
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain

from transforms.config import ActivationConfig
from transforms.events.timestamps import format_timestamp
from transforms.metrics import METRICS_NAMESPACE
from transforms.segments.codecs import VALUE_CODER
from transforms.segments.guard import MIN_TRACKED_PROFILES
from transforms.segments.replay import DEAD, EPSILON_MS, timestamp_ms
from transforms.segments.state import (
    RETENTION_MS,
)

_LOGGER = logging.getLogger(__name__)


class MassExitHoldFn(beam.DoFn):
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
            exits.add(VALUE_CODER.encode([message[1], message[2]]))
        cleanup.set(timestamp_ms(expiry_ms + RETENTION_MS))
        # Exits of profiles last seen at T are emitted at T + TTL + 1 ms.
        release.set(timestamp_ms(expiry_ms + 2 * EPSILON_MS))

    @userstate.on_timer(RELEASE)
    def on_release(
        self,
        last_seen=beam.DoFn.KeyParam,
        live=beam.DoFn.StateParam(LIVE),  # noqa: B008
        exits=beam.DoFn.StateParam(EXITS),  # noqa: B008
        decided=beam.DoFn.StateParam(DECIDED),  # noqa: B008
    ):
        pending = [VALUE_CODER.decode(data) for data in exits.read()]
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
                    DEAD, self._held_letter(key, transition, last_seen, total, tracked)
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
