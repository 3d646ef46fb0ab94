"""The namespace of every Beam metric (counter) the job reports.

The run summary, the benches and the tests query counters by this namespace.
"""

from __future__ import annotations

from typing import Any

from apache_beam.metrics import Metrics

from transforms import progress

METRICS_NAMESPACE = "segment_events"


class StepCounts:
    """How a DoFn counts: one call per count, for both the run's figures and its
    progress lines.

    ``add`` bumps a local count, and feeds the progress lines at once when
    :data:`transforms.progress.SHOWN` shows that counter; ``flush`` (in
    ``finish_bundle``) adds the bundle's counts to the Beam counters of
    :data:`METRICS_NAMESPACE`, one update per counter and bundle (each costs about a
    microsecond, so never one per element). DoFns do not call the progress module for
    figures that are Beam counters.
    """

    __slots__ = ("_counters", "_counts")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._counters: dict[str, Any] = {}

    def add(self, name: str, n: int = 1, *, snapshot_ms: int | None = None) -> None:
        """Counts ``n`` more of counter ``name`` (of the snapshot at ``snapshot_ms``,
        for the per-snapshot progress lines of a streaming run)."""
        self._counts[name] = self._counts.get(name, 0) + n
        progress.count(name, n, snapshot_ms)

    def flush(self) -> None:
        """Adds the counts so far to the Beam counters and starts from zero."""
        for name, value in self._counts.items():
            if value:
                counter = self._counters.get(name)
                if counter is None:
                    counter = self._counters[name] = Metrics.counter(METRICS_NAMESPACE, name)
                counter.inc(value)
        self._counts.clear()
