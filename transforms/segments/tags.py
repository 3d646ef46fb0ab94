"""Names and timings shared by the transition DoFns, the mass-exit guard and its hold.

The output tags of :mod:`transforms.segments.transition_fns`, the one key of the
streaming mass-exit guard's counts and the slices of the TTL exits it holds
(:mod:`transforms.segments.hold`), and the 1 ms by which timers follow a snapshot. They
live here, not in a DoFn module, so that every module that reads them imports no DoFn.
"""

from __future__ import annotations

import zlib

from apache_beam.utils.timestamp import Timestamp

# Output tags of the transition DoFns.
DEAD = "dead_letters"
TTL_EXITS = "ttl_exits"
GUARD = "guard_counts"
# The one key of the streaming mass-exit guard's counts, and the number of slices of
# the TTL exits it holds (see :mod:`transforms.segments.hold`).
GUARD_KEY = "mass-exit-guard"
EXIT_SHARDS = 64
STATES = "carried_states"
# A snapshot at T is complete once the watermark passed T; timers fire at T + 1 ms
# because a watermark equal to T still admits elements stamped T.
EPSILON_MS = 1


def exit_shard(profile_key: str) -> int:
    """The slice of a profile's TTL exits (stable across processes and runs)."""
    return zlib.crc32(profile_key.encode("utf-8")) % EXIT_SHARDS


def timestamp_ms(epoch_ms: int) -> Timestamp:
    return Timestamp(micros=epoch_ms * 1000)
