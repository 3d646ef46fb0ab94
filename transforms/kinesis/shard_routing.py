"""The Kinesis writer's shard map: loaded when aggregation needs it, reloaded on a reshard.

An aggregated record goes to the shard of its first user record's key, so its records
are grouped with the stream's shard map (:func:`transforms.kinesis.aggregation.load_shard_map`),
kept in the :class:`~transforms.kinesis.writer_state.WriterState` across bundles and
reloaded after ``shard_map_ttl_seconds``, or at once when an aggregate lands in a shard
the map does not know (docs/design.md, Resharding).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from transforms.kinesis import failures as kinesis_failures
from transforms.kinesis.aggregation import ShardMap, load_shard_map, misfits
from transforms.kinesis.batching import PendingRecord
from transforms.kinesis.settings import SinkSettings
from transforms.kinesis.writer_state import WriterState

_LOGGER = logging.getLogger(__name__)


class ShardRouting:
    """Loads, keeps and checks the shard map for one writer.

    Args:
        fail: Fails the job (raises) on a fatal ListShards error.
        on_map: Called with the map each time it is read (the writer narrows its
            request size to the number of shards).
    """

    def __init__(
        self,
        client: Any,
        stream_name: str,
        settings: SinkSettings,
        state: WriterState,
        clock: Callable[[], float],
        fail: Callable[[kinesis_failures.Failure], None],
        on_map: Callable[[ShardMap], None],
    ):
        self._client = client
        self._stream = stream_name
        self._settings = settings
        self._state = state
        self._clock = clock
        self._fail = fail
        self._on_map = on_map

    def get(self, now: float) -> ShardMap:
        state = self._state
        stale = now - state.shard_map_loaded > self._settings.shard_map_ttl_seconds
        if state.shard_map is None or stale:
            try:
                state.shard_map = load_shard_map(self._client, self._stream)
            except Exception as exc:  # noqa: BLE001 - classified below
                failure = kinesis_failures.classify_exception(exc)
                if failure.kind == kinesis_failures.FATAL or state.shard_map is None:
                    self._fail(
                        kinesis_failures.Failure(
                            kinesis_failures.FATAL,
                            failure.code,
                            f"ListShards (needed for aggregation) failed: {failure.message}",
                        )
                    )
                # A transient error with a map at hand: keep using it, retry later.
                _LOGGER.warning(
                    "ListShards on %s failed (%s); keeping the shard map",
                    self._stream,
                    failure.code,
                )
            state.shard_map_loaded = now
        assert state.shard_map is not None
        self._on_map(state.shard_map)
        return state.shard_map

    def landed_whole(
        self, members: list[PendingRecord], shard_id: str | None, reloaded: bool
    ) -> tuple[bool, bool]:
        """Whether every user record of an aggregate hashes into the shard it landed in.

        The aggregate was built with the cached shard map; after a reshard it can land in
        a child shard whose range does not hold all its records, and a KCL 2.x consumer
        then drops it whole. A shard id the map does not know (a new child) reloads the
        map once per response. Returns ``(landed_whole, reloaded)``.
        """
        keys = [r.partition_key for r in members]
        shard_map = self._state.shard_map
        hash_range = shard_map.range_of(shard_id) if shard_map and shard_id else None
        if hash_range is None and shard_id and not reloaded:
            self.reload()
            reloaded = True
            shard_map = self._state.shard_map
            hash_range = shard_map.range_of(shard_id) if shard_map else None
        return misfits(keys, hash_range) == 0, reloaded

    def reload(self) -> None:
        """Reloads the shard map now (the stream was resharded)."""
        _LOGGER.warning("Stream %s was resharded; reloading its shard map", self._stream)
        self._state.shard_map_loaded = float("-inf")
        self.get(self._clock())
