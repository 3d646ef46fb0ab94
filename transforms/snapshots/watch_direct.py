"""The streaming watch on the local BundleBasedDirectRunner.

That runner holds a splittable DoFn's output watermark at -infinity until it finishes,
so :func:`direct_runner_overrides` swaps :class:`transforms.snapshots.landed.WatchLandedFiles`
for a root transform of the runner (:class:`_DirectWatchLandedFiles` and its evaluator)
that runs the same poll and sets the same watermark through the runner's watermark holds
(see :mod:`transforms.snapshots.watch`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import apache_beam as beam
from apache_beam.pipeline import PTransformOverride
from apache_beam.transforms.core import Windowing
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from transforms.beam_internals import (
    TransformEvaluator,
    TransformResult,
    applied_transform,
    register_direct_evaluator,
)
from transforms.snapshots.landed import (
    MAX_LATENESS_MS,
    WatchLandedFiles,
    timestamp_of,
    watermark_after,
)

# The watch's logger, as in transforms.snapshots.landed.
_LOGGER = logging.getLogger("transforms.snapshots.watch")

# The DirectRunner's watch root sleeps at most this long per call, so that the runner's
# monitor (timers, shutdown) is never blocked for a whole interval.
_DIRECT_MAX_SLEEP_SECONDS = 0.5


class _DirectWatchLandedFiles(beam.PTransform):
    """Root primitive of the BundleBasedDirectRunner replacing :class:`WatchLandedFiles`."""

    def __init__(self, watch: WatchLandedFiles) -> None:
        super().__init__()
        self.lister = watch.lister
        self.interval_seconds = watch.interval_seconds
        self.max_watch_seconds = watch.max_watch_seconds
        self.progress = _WatchProgress()

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return beam.pvalue.PCollection(pbegin.pipeline, element_type=str, is_bounded=False)

    def get_windowing(self, inputs: Any) -> Windowing:
        del inputs  # a root: the global window, like the Watch it replaces
        return Windowing(GlobalWindows())


class _WatchProgress:
    """What the DirectRunner's watch root emitted so far (lives for one run)."""

    def __init__(self) -> None:
        # path -> snapshot time; forgotten past the lister's retirement horizon (the
        # lister no longer returns those files either).
        self.emitted: dict[str, int] = {}
        self.watermark: Timestamp = MIN_TIMESTAMP
        self.started: float | None = None
        self.next_poll = 0.0


class _DirectWatchEvaluator(TransformEvaluator):
    """Evaluates :class:`_DirectWatchLandedFiles`: one poll (when due) per call.

    Like the runner's own Pub/Sub root, each call hands back an empty "unprocessed"
    bundle so that the runner calls it again once the rest of the pipeline is idle, and
    sets the output watermark with a watermark hold. When ``max_watch_seconds`` passed,
    it releases the hold (the watermark goes to the end of time) and is not called again.
    """

    def start_bundle(self) -> None:
        pass

    def process_element(self, element: Any) -> None:
        del element  # a root: the runner passes an empty bundle

    def finish_bundle(self) -> TransformResult:
        transform: _DirectWatchLandedFiles = applied_transform(self)
        progress = transform.progress
        now = time.monotonic()
        if progress.started is None:
            progress.started = progress.next_poll = now
        bundles = []
        if now < progress.next_poll:
            time.sleep(min(progress.next_poll - now, _DIRECT_MAX_SLEEP_SECONDS))
        else:
            progress.next_poll = now + transform.interval_seconds
            bundle = self._evaluation_context.create_bundle(next(iter(self._outputs)))
            before = progress.watermark
            for landed in transform.lister.list_complete():
                if landed.path in progress.emitted:
                    continue
                progress.emitted[landed.path] = landed.snapshot_ms
                stamp = timestamp_of(landed.snapshot_ms)
                if stamp < before:
                    _LOGGER.warning(
                        "%s landed behind the watermark %s (a later snapshot landed "
                        "first): its records are late",
                        landed.path,
                        before.to_rfc3339(),
                    )
                bundle.output(GlobalWindows.windowed_value(landed.path, timestamp=stamp))
                progress.watermark = max(progress.watermark, watermark_after(landed.snapshot_ms))
            if bundle.has_elements():
                bundles.append(bundle)
            newest = transform.lister.newest_ms
            if newest is not None:
                horizon = newest - MAX_LATENESS_MS
                progress.emitted = {p: t for p, t in progress.emitted.items() if t >= horizon}
            limit = transform.max_watch_seconds
            if limit is not None and time.monotonic() - progress.started > limit:
                _LOGGER.info("watch stopped after %.1f s (--max_watch_seconds)", limit)
                return TransformResult(self, bundles, [], None, {None: MAX_TIMESTAMP})
        again = self._evaluation_context.create_bundle(beam.pvalue.PBegin(transform.pipeline))
        return TransformResult(self, bundles, [again], None, {None: progress.watermark})


class _DirectWatchOverride(PTransformOverride):
    def matches(self, applied_ptransform) -> bool:
        return isinstance(applied_ptransform.transform, WatchLandedFiles)

    def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
        return _DirectWatchLandedFiles(applied_ptransform.transform)


def direct_runner_overrides() -> list[PTransformOverride]:
    """Overrides to apply before running a pipeline on the BundleBasedDirectRunner.

    Registers the evaluator of the DirectRunner's watch root with the runner (through
    its evaluator-override table, keyed by our own transform class) and returns the
    override replacing :class:`WatchLandedFiles` with it.
    """
    # The table is the runner's hook for extra evaluators (Beam's tests use it); keyed
    # by our class, so it cannot change how any other transform runs.
    register_direct_evaluator(_DirectWatchLandedFiles, _DirectWatchEvaluator)
    return [_DirectWatchOverride()]
