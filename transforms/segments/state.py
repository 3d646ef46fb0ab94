"""The plain data of the membership rules: statuses, triggers, profile state, tallies.

See :mod:`transforms.segments.memberships` for the vocabulary.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from transforms.config import ActivationConfig
from transforms.events.identities import output_identities

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
