"""Streaming input: snapshots picked up as they land (docs/contract.md §2.3, §4 streaming).

``WatchSnapshots`` is the streaming counterpart of :class:`transforms.snapshots.read.ReadSnapshots`.
It polls the ``--input`` patterns every ``--watch_interval`` seconds and takes the files
of a folder only once the folder's ``_SUCCESS`` marker exists; each file is read once.

Timestamps and watermark::

    poll k:   folders with a marker: snapshot=T1/ (2 files), snapshot=T2/ (1 file)
              -> emits the 3 new paths, each stamped with its folder's time T1 or T2
              -> watermark := T2 + 1002 ms   (max snapshot time seen + WATERMARK_MARGIN_MS)
    poll k+1: snapshot=T3/ has files but no marker yet -> nothing; watermark stays
    poll k+2: snapshot=T3/_SUCCESS exists -> emits its paths at T3; watermark T3 + 1002 ms

Records read from a file keep their file's timestamp, the snapshot time T. The
transitions step (``ComputeSegmentTransitions(streaming=True)``) applies a snapshot when
the watermark passes T + 1 ms, so the watermark must follow *snapshot* times, not the
clock: Beam's ``MatchContinuously`` stamps matches with the poll time and its watermark
follows the clock, which would make every snapshot late (exports land after their T) and
would fire ``absent_profile_ttl`` exits by wall-clock time, before the next snapshot had
a chance to land. So the watermark here is "every snapshot up to the newest landed one
is complete", and advances only when a snapshot lands.

Late data: a folder whose marker appears after a *later* snapshot's marker is behind the
watermark; its files are still read (stamped with their own time, a warning is logged)
and the transitions step applies their records to profiles it has not yet moved past
that time, and dead-letters the others (``late_snapshot``). A file that appears in a
folder after its marker is read too, when it appears, with the same lateness rules.

Engines: on Dataflow and Flink the polling is Beam's ``Watch`` splittable DoFn (the
engine of ``MatchContinuously``) with an explicit watermark per poll, its dedup state
checkpointed with the job. The local BundleBasedDirectRunner runs splittable DoFns but
holds their output watermark at -infinity until they finish (it ignores watermark
estimators), so nothing would be emitted before the job ends; for it,
:func:`direct_runner_overrides` swaps the ``Watch`` for a root transform of that runner
that runs the same poll and sets the same watermark through the runner's watermark holds.

Stopping: ``--max_watch_seconds`` ends the watch after the first poll past that time
(``Watch``'s ``after_total_of``). Like draining a streaming job, the watermark then goes
to the end of time: every pending event-time timer fires, so with ``absent_profile_ttl``
every profile still live gets its TTL exit (stamped last seen + TTL).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.watch import PollResult, Watch, after_total_of, never
from apache_beam.metrics import Metrics
from apache_beam.pipeline import PTransformOverride
from apache_beam.transforms.core import Windowing
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from transforms import progress
from transforms.beam_internals import (
    TransformEvaluator,
    TransformResult,
    applied_transform,
    register_direct_evaluator,
)
from transforms.config import ActivationConfig
from transforms.metrics import METRICS_NAMESPACE
from transforms.segments.state import RETENTION_MS
from transforms.snapshots.formats import SNAPSHOT_FORMATS, file_format
from transforms.snapshots.read import (
    DEAD_LETTER_TAG,
    match_snapshot_files,
    parse_records_dofn,
    read_file_dofn,
)
from transforms.snapshots.snapshot_time import (
    SnapshotTimeError,
    require_snapshot_time,
    snapshot_time_from_path,
)

_LOGGER = logging.getLogger(__name__)

MARKER = "_SUCCESS"
# After snapshot T the watermark is T + 1002 ms: past the transitions step's wake-up
# timer at T + 1 ms on runners that fire a timer only once the watermark is strictly
# past it, and still past it on Beam 2.50's Flink runner, which keeps an SDF's watermark
# hold in whole seconds (it drops the sub-second part of the reported watermark): with a
# 2 ms margin every snapshot was applied only when the next one landed. The cost: a
# snapshot that lands after a newer one and is less than a second later than it counts
# as late (exports are hours or days apart).
WATERMARK_MARGIN_MS = 1002
# How far behind the newest snapshot a folder is still watched (and the watch's dedup
# state still remembers its files): as long as the transitions step keeps exited
# memberships and gone profiles.
MAX_LATENESS_MS = RETENTION_MS
DEFAULT_WATCH_INTERVAL_SECONDS = 60.0
# The DirectRunner's watch root sleeps at most this long per call, so that the runner's
# monitor (timers, shutdown) is never blocked for a whole interval.
_DIRECT_MAX_SLEEP_SECONDS = 0.5
# Markers and hidden files, as in transforms.snapshots.read.
_IGNORED_PREFIXES = ("_", ".")
_LANDED = Metrics.counter(METRICS_NAMESPACE, "snapshot_files_landed")


@dataclass(frozen=True, order=True)
class LandedFile:
    """A file of a complete snapshot folder.

    Attributes:
        snapshot_ms: The snapshot time from the path (epoch ms).
        path: The file path or URL.
    """

    snapshot_ms: int
    path: str


class LandedSnapshotLister:
    """Lists the files of complete snapshot folders; the poll function of the watch.

    Every poll lists the ``--input`` patterns and returns every file of every folder
    that has a ``_SUCCESS`` marker; the caller (Beam's ``Watch`` or the DirectRunner
    root) emits the ones it has not emitted yet. What a poll costs beyond the listing
    depends only on what is new:

    * a folder's marker is checked until it is found, never again (one request per
      *new* folder, not per folder per poll);
    * a folder more than :data:`MAX_LATENESS_MS` older than the newest snapshot is
      *retired*: its files are no longer returned (the watch's dedup state forgets
      them at the same horizon, ``Watch(timestamp_cursor=True)``) and only its file
      count is remembered. A file that appears in a retired folder is not read: it is
      reported once, as a WARNING and in the ``watch_files_skipped`` counter;
    * skipped-file reports are remembered per folder and forgotten with it.

    The caches are an optimisation: after a restart they are rebuilt by the first
    poll, and the watch's checkpointed dedup state keeps files from being read twice.

    Args:
        patterns: The ``--input`` glob patterns.
        baseline: ``(path, snapshot ms)`` of the ``--baseline`` files: returned by every
            poll (no marker needed; the watch emits them once), never as inputs.
    """

    def __init__(self, patterns: Sequence[str], baseline: Iterable[tuple[str, int]] = ()) -> None:
        self._patterns = tuple(patterns)
        self._baseline = tuple(LandedFile(ms, path) for path, ms in baseline)
        self._exclude = frozenset(path for path, _ in baseline)
        self._complete: dict[str, int | None] = {}  # folder -> its newest file's time
        self._retired: dict[str, int] = {}  # folder -> files it had when retired
        self._reported: dict[str, set[str]] = {}  # folder -> paths already reported
        self._waiting: set[str] = set()  # folders seen without their marker (noted once)
        self._newest: int | None = None
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "watch_files_skipped")

    @property
    def newest_ms(self) -> int | None:
        """The newest snapshot time returned so far (``None``: none yet)."""
        return self._newest

    def list_complete(self) -> list[LandedFile]:
        """The files of complete, not retired folders, ordered by (time, path)."""
        folders: dict[str, list[str]] = {}
        for pattern in self._patterns:
            try:
                metadata = FileSystems.match([pattern])[0].metadata_list
            except Exception as err:  # noqa: BLE001 - filesystems raise many kinds
                _LOGGER.warning("cannot list %s (retried at the next poll): %s", pattern, err)
                continue
            for meta in metadata:
                folder, name = FileSystems.split(meta.path)
                if name.startswith(_IGNORED_PREFIXES) or meta.path in self._exclude:
                    continue
                folders.setdefault(folder, []).append(meta.path)
        # The baseline first: it is complete by definition, and its records must reach the
        # transitions step under the same watermark as the snapshots after it.
        landed = list(self._baseline)
        for folder, paths in folders.items():
            if folder in self._retired:
                self._check_retired(folder, paths)
                continue
            if folder not in self._complete:
                if not self._has_marker(folder):
                    if folder not in self._waiting:
                        self._waiting.add(folder)
                        progress.note(f"watch: {folder}: waiting for its {MARKER} marker")
                    continue
                self._waiting.discard(folder)
                self._complete[folder] = None
                progress.note(f"watch: {folder}: landed ({len(paths)} file(s))")
            for path in paths:
                snapshot_ms = self._snapshot_time(folder, path)
                if snapshot_ms is not None:
                    landed.append(LandedFile(snapshot_ms, path))
                    newest = self._complete[folder]
                    self._complete[folder] = (
                        snapshot_ms if newest is None else max(newest, snapshot_ms)
                    )
        if landed:
            newest = max(f.snapshot_ms for f in landed)
            self._newest = newest if self._newest is None else max(self._newest, newest)
        self._retire(folders)
        horizon = self._horizon()
        return sorted({f for f in landed if horizon is None or f.snapshot_ms >= horizon})

    def __call__(self, element: Any) -> PollResult[str]:
        """Beam ``Watch`` poll: new files at their snapshot time, watermark past the newest."""
        del element  # the impulse
        landed = self.list_complete()
        result = PollResult.incomplete(
            [TimestampedValue(f.path, timestamp_of(f.snapshot_ms)) for f in landed]
        )
        if self._newest is None:
            return result
        return result.with_watermark(watermark_after(self._newest))

    def _horizon(self) -> int | None:
        return None if self._newest is None else self._newest - MAX_LATENESS_MS

    def _retire(self, listed: dict[str, list[str]]) -> None:
        horizon = self._horizon()
        if horizon is None:
            return
        for folder, newest in list(self._complete.items()):
            if newest is not None and newest < horizon:
                del self._complete[folder]
                self._reported.pop(folder, None)
                self._retired[folder] = len(listed.get(folder, ()))

    def _check_retired(self, folder: str, paths: list[str]) -> None:
        known = self._retired[folder]
        if len(paths) > known:
            self._retired[folder] = len(paths)
            self._skipped.inc(len(paths) - known)
            _LOGGER.warning(
                "%s: %d file(s) appeared in this snapshot folder after it fell more than "
                "%d days behind the newest snapshot; not read (move them to a new "
                "snapshot folder, or run a batch backfill for that day)",
                folder,
                len(paths) - known,
                MAX_LATENESS_MS // 86_400_000,
            )

    def _has_marker(self, folder: str) -> bool:
        marker = FileSystems.join(folder, MARKER)
        try:
            return FileSystems.exists(marker)
        except Exception as err:  # noqa: BLE001 - filesystems raise many kinds
            _LOGGER.warning("cannot check %s (retried at the next poll): %s", marker, err)
            return False

    def _snapshot_time(self, folder: str, path: str) -> int | None:
        if file_format(path) is None:
            self._report(
                folder,
                path,
                "%s: skipped: unknown file format; expected .avro, .json, .jsonl "
                "(optionally .gz) or .parquet",
            )
            return None
        try:
            snapshot_ms = snapshot_time_from_path(path)
        except SnapshotTimeError as err:
            self._report(folder, path, "%s: skipped: " + str(err).replace("%", "%%"))
            return None
        if snapshot_ms is None:
            self._report(
                folder,
                path,
                "%s: skipped: no snapshot time in the path (a snapshot=<date> folder or a "
                "dated file name is required in streaming mode)",
            )
        return snapshot_ms

    def _report(self, folder: str, path: str, message: str) -> None:
        reported = self._reported.setdefault(folder, set())
        if path not in reported:
            reported.add(path)
            self._skipped.inc()
            _LOGGER.warning(message, path)


def timestamp_of(epoch_ms: int) -> Timestamp:
    """The Beam timestamp of an epoch-millisecond time."""
    return Timestamp(micros=epoch_ms * 1000)


def watermark_after(snapshot_ms: int) -> Timestamp:
    """The watermark once every snapshot up to ``snapshot_ms`` has been emitted."""
    return timestamp_of(snapshot_ms + WATERMARK_MARGIN_MS)


# --------------------------------------------------------------------- transforms


class WatchLandedFiles(beam.PTransform):
    """Paths of snapshot files as their folders complete, stamped with the snapshot time.

    Unbounded output of ``str`` paths; see the module docstring for the watermark.

    Args:
        patterns: The ``--input`` glob patterns.
        interval_seconds: Seconds between two polls.
        max_watch_seconds: Stop polling after this long (``None``: never).
        baseline: ``(path, snapshot ms)`` of the baseline files, emitted first.
    """

    def __init__(
        self,
        patterns: Sequence[str],
        interval_seconds: float = DEFAULT_WATCH_INTERVAL_SECONDS,
        max_watch_seconds: float | None = None,
        baseline: Iterable[tuple[str, int]] = (),
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        if interval_seconds <= 0:
            raise ValueError("the watch interval must be a positive number of seconds")
        if max_watch_seconds is not None and max_watch_seconds <= 0:
            raise ValueError("max_watch_seconds must be a positive number of seconds")
        self.lister = LandedSnapshotLister(patterns, baseline)
        self.interval_seconds = float(interval_seconds)
        self.max_watch_seconds = max_watch_seconds

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        termination = (
            never() if self.max_watch_seconds is None else after_total_of(self.max_watch_seconds)
        )
        return (
            pbegin
            | "StartWatch" >> beam.Impulse()
            | "PollLandedFiles"
            >> Watch(
                self.lister,
                poll_interval=self.interval_seconds,
                termination=termination,
                output_coder=coders.StrUtf8Coder(),
                # Dedup state bounded by event time, at the lister's retirement horizon.
                timestamp_cursor=True,
                allowed_lateness=MAX_LATENESS_MS / 1000,
            )
            | "SelectPath" >> beam.Map(_second).with_output_types(str)
        )


def _second(pair: tuple[Any, str]) -> str:
    return pair[1]


class WatchSnapshots(beam.PTransform):
    """Streaming ``ReadSnapshots``: baseline once, then snapshots as they land.

    The result is a dict like :class:`transforms.snapshots.read.ReadSnapshots`'s: ``"records"``,
    ``(profile key, record)`` pairs stamped with their snapshot time, and
    ``"dead_letters"``; plus ``"landed"``, the snapshot time (epoch ms) of every landed
    file, for ``ComputeSegmentTransitions(landed_snapshots=...)``. Files are read and parsed by the same DoFns as in batch.

    Args:
        inputs: ``--input`` glob patterns (may match nothing yet).
        config: The activation config.
        baseline: ``--baseline`` glob patterns: read once at start; their memberships
            seed the state and emit nothing. Their files are never taken as inputs.
        interval_seconds: Seconds between two polls of ``inputs``.
        max_watch_seconds: Stop watching after this long (``None``: never).
    """

    def __init__(
        self,
        inputs: Sequence[str],
        config: ActivationConfig,
        baseline: Sequence[str] = (),
        interval_seconds: float = DEFAULT_WATCH_INTERVAL_SECONDS,
        max_watch_seconds: float | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self._inputs = tuple(inputs)
        self._config = config
        self._baseline = tuple(baseline)
        self._interval = interval_seconds
        self._max_watch = max_watch_seconds

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        # The baseline is read through the watch, not as a separate bounded read: its
        # records then carry their snapshot time from the watch on, and the watch's
        # watermark holds them like any landed snapshot. (A bounded branch re-stamped
        # its records into the past after its own watermark had gone to the end of
        # time; on Flink with checkpointing they reached the transitions step after
        # the first snapshot had been applied, and seeded nothing.)
        baseline_files = match_snapshot_files(self._baseline, True, None) if self._baseline else []
        baseline = [(f.path, require_snapshot_time(f.path)) for f in baseline_files]
        baseline_paths = [path for path, _ in baseline]
        paths = pbegin | "WatchLandedFiles" >> WatchLandedFiles(
            self._inputs,
            self._interval,
            self._max_watch,
            baseline=baseline,
        )
        by_format = (
            paths
            | "CountLandedFiles" >> beam.Map(_count_landed)
            | "SpreadLandedFiles" >> beam.Reshuffle()
            | "SplitLandedByFormat" >> beam.Partition(_format_index, len(SNAPSHOT_FORMATS))
        )
        records, dead_letters = [], []
        for index, fmt in enumerate(SNAPSHOT_FORMATS):
            name = fmt.capitalize()
            parsed = (
                by_format[index]
                | f"ReadLanded{name}" >> beam.ParDo(read_file_dofn(fmt))
                | f"ParseLanded{name}Records"
                >> beam.ParDo(
                    parse_records_dofn(fmt, self._config, baseline_paths=baseline_paths)
                ).with_outputs(DEAD_LETTER_TAG, main="records")
            )
            records.append(parsed.records)
            dead_letters.append(parsed[DEAD_LETTER_TAG])
        return {
            "records": records
            | "FlattenWatchedRecords" >> beam.Flatten()
            | "StampSnapshotTime" >> beam.Map(_stamp),
            "dead_letters": dead_letters | "FlattenWatchDeadLetters" >> beam.Flatten(),
            # The time of every landed snapshot file: what proves an absence in streaming.
            "landed": paths | "LandedSnapshotTimes" >> beam.ParDo(_LandedTimeFn()),
        }


class _LandedTimeFn(beam.DoFn):
    """A landed path -> its snapshot time (epoch ms), the element's timestamp."""

    def process(self, path: str, timestamp=beam.DoFn.TimestampParam):  # noqa: B008
        del path
        yield timestamp.micros // 1000


def _count_landed(path: str) -> str:
    _LANDED.inc()
    return path


def _format_index(path: str, partitions: int) -> int:
    del partitions
    # The lister only returns files of a known format.
    return SNAPSHOT_FORMATS.index(file_format(path))


def _stamp(element: tuple[str, dict]) -> TimestampedValue:
    # Records already carry their file's time (from the watch); this keeps it explicit.
    return TimestampedValue(element, timestamp_of(element[1]["snapshot_ms"]))


# ------------------------------------------------------ local BundleBasedDirectRunner


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
