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
transitions step (``ComputeStreamingTransitions``) applies a snapshot when
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

Modules: this one holds ``WatchSnapshots`` (landed paths -> records, dead letters and
landed times); :mod:`transforms.snapshots.landed` the poll (``LandedSnapshotLister``) and
``WatchLandedFiles``; :mod:`transforms.snapshots.watch_direct` the DirectRunner root.
Their public names are importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from transforms.config import ActivationConfig
from transforms.metrics import METRICS_NAMESPACE
from transforms.snapshots.formats import SNAPSHOT_FORMATS, file_format
from transforms.snapshots.landed import (
    DEFAULT_WATCH_INTERVAL_SECONDS,
    MARKER,
    MAX_LATENESS_MS,
    WATERMARK_MARGIN_MS,
    LandedFile,
    LandedSnapshotLister,
    WatchLandedFiles,
    timestamp_of,
    watermark_after,
)
from transforms.snapshots.read import (
    DEAD_LETTER_TAG,
    parse_records_dofn,
    read_file_dofn,
    run_files,
)
from transforms.snapshots.snapshot_time import require_snapshot_time
from transforms.snapshots.watch_direct import direct_runner_overrides

__all__ = [
    "DEFAULT_WATCH_INTERVAL_SECONDS",
    "MARKER",
    "MAX_LATENESS_MS",
    "WATERMARK_MARGIN_MS",
    "LandedFile",
    "LandedSnapshotLister",
    "WatchLandedFiles",
    "WatchSnapshots",
    "WatchedSnapshots",
    "direct_runner_overrides",
    "timestamp_of",
    "watermark_after",
]

_LANDED = Metrics.counter(METRICS_NAMESPACE, "snapshot_files_landed")


class WatchedSnapshots(NamedTuple):
    """What :class:`WatchSnapshots` returns.

    Attributes:
        records: ``(profile key, record)`` pairs stamped with their snapshot time.
        dead_letters: Read-stage dead letters, as ``ReadSnapshots``'s.
        landed: The snapshot time (epoch ms) of every landed file, for
            ``ComputeStreamingTransitions(landed_snapshots=...)``.
    """

    records: beam.PCollection
    dead_letters: beam.PCollection
    landed: beam.PCollection


class WatchSnapshots(beam.PTransform):
    """Streaming ``ReadSnapshots``: baseline once, then snapshots as they land.

    Files are read and parsed by the same DoFns as in batch. Returns (from
    ``expand``) a :class:`WatchedSnapshots`.

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

    def expand(self, pbegin: beam.pvalue.PBegin) -> WatchedSnapshots:
        # The baseline is read through the watch, not as a separate bounded read: its
        # records then carry their snapshot time from the watch on, and the watch's
        # watermark holds them like any landed snapshot. (A bounded branch re-stamped
        # its records into the past after its own watermark had gone to the end of
        # time; on Flink with checkpointing they reached the transitions step after
        # the first snapshot had been applied, and seeded nothing.)
        baseline_files = run_files((), self._baseline, None)
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
        return WatchedSnapshots(
            records=records
            | "FlattenWatchedRecords" >> beam.Flatten()
            | "StampSnapshotTime" >> beam.Map(_stamp),
            dead_letters=dead_letters | "FlattenWatchDeadLetters" >> beam.Flatten(),
            # The time of every landed snapshot file: what proves an absence in streaming.
            landed=paths | "LandedSnapshotTimes" >> beam.ParDo(_LandedTimeFn()),
        )


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
