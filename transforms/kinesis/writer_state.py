"""What outlives one Kinesis writer (bundle), shared by the writers of one DoFn instance."""

from __future__ import annotations

import time

from transforms.kinesis.aggregation import ShardMap
from transforms.kinesis.ratelimit import AimdController, TokenBucket
from transforms.kinesis.settings import SinkSettings


class WriterState:
    """What outlives one writer (bundle): rate limiters, the shard map, reachability.

    A throttled stream stays throttled across bundles, the shard map is not reloaded
    for every (small, streaming) bundle, and an endpoint that answered once is known to
    be reachable.
    """

    def __init__(
        self, settings: SinkSettings, now: float | None = None, shard_map: ShardMap | None = None
    ):
        now = time.monotonic() if now is None else now
        self.hard_limit = TokenBucket(settings.max_records_per_second, now=now)
        self.aimd = AimdController(min_rate=settings.min_adaptive_rate)
        self.adaptive_limit = TokenBucket(None, now=now)
        self.shard_map = shard_map
        self.shard_map_loaded = now if shard_map is not None else float("-inf")
        self.throttle_logged = float("-inf")
        # Partition keys with a dead-lettered record: their later records are
        # dead-lettered too (see FailureHandling.give_up in transforms.kinesis.failure_handling).
        self.blocked_keys: set[str] = set()
        # Whether any request got an answer (any HTTP response) from the endpoint, and
        # since when connection failures have lasted while it never did.
        self.answered = False
        self.unreachable_since: float | None = None
