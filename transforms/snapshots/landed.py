"""The polling source of the streaming watch: which snapshot files have landed.

Holds :class:`LandedSnapshotLister` (the poll: lists the ``--input`` patterns, takes a
folder's files once its ``_SUCCESS`` marker exists, retires folders past the lateness
horizon), :class:`LandedFile`, the timestamp and watermark of a landed snapshot
(:func:`timestamp_of`, :func:`watermark_after`), and :class:`WatchLandedFiles`, the
transform that runs the poll in Beam's ``Watch``. The watermark and lateness rules are
described in :mod:`transforms.snapshots.watch`, which re-exports these names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.watch import PollResult, Watch, after_total_of, never
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms import progress
from transforms.metrics import METRICS_NAMESPACE
from transforms.segments.state import RETENTION_MS
from transforms.snapshots.formats import file_format
from transforms.snapshots.snapshot_time import SnapshotTimeError, snapshot_time_from_path

# The watch's logger, whichever of its modules logs (log configuration and tests name it).
_LOGGER = logging.getLogger("transforms.snapshots.watch")

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
# Markers and hidden files, as in transforms.snapshots.read.
_IGNORED_PREFIXES = ("_", ".")


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
