"""The columnar batch path: read into Arrow buckets, skip steady rows, replay the rest.

    files --ReadSnapshotBuckets--> (bucket, Arrow IPC) --GroupByBucket--> (bucket, [IPC])
            |                                   |--MassExitGuard--> verdict --------(side)
            +-- dead letters --BadRecordsGuard--> incomplete snapshots ------------(side)
            +-- per-file counts --SnapshotTimes--> snapshot times ----------------(side)
                                                +--Replay (after the verdicts)--> transitions

The same guards and replay wiring as the row path
(:func:`transforms.segments.batch_guards.guarded_replay`); only the unit of the shuffle
(a bucket of rows, not a record) and which rows reach Python differ.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsSingleton

from transforms.columnar.bucket_replay import BucketGuardCountsFn, BucketTransitionsFn
from transforms.columnar.read_batches import ReadBucketsFn
from transforms.config import ActivationConfig
from transforms.segments.batch_guards import TransitionsResult, guarded_replay
from transforms.segments.carried_state import CARRIED_STATE_FORMAT
from transforms.segments.codecs import ShuffleCodec
from transforms.segments.guard import SnapshotCountsFn
from transforms.snapshots.read import DEAD_LETTER_TAG, SNAPSHOTS_TAG, SnapshotFile, _match

_LOGGER = logging.getLogger(__name__)

# Rows per bucket aimed at: a bucket is one element of the shuffle and is held whole by
# the step that replays it (~1 KB a row in memory while it is decoded).
ROWS_PER_BUCKET = 50_000
MIN_BUCKETS, MAX_BUCKETS = 16, 4096
# Bytes of Avro or Parquet per row, to estimate rows from file sizes. The sample export
# (tools.sample_data, 20 segments) has ~85 bytes a row; 250 made buckets three times the
# rows aimed at, and a bucket is held whole while it is replayed.
_BYTES_PER_ROW = 100


def bucket_count(total_bytes: int) -> int:
    """Buckets for a run: about :data:`ROWS_PER_BUCKET` rows each (estimated from the
    input's size), at least 16 so that they spread over Flink's parallelism and
    Dataflow's workers, at most 4096."""
    wanted = math.ceil(total_bytes / _BYTES_PER_ROW / ROWS_PER_BUCKET)
    return max(MIN_BUCKETS, min(MAX_BUCKETS, wanted))


def input_bytes(files: Sequence[SnapshotFile]) -> int:
    """The total size of the run's files."""
    total = 0
    for f in files:
        for metadata in FileSystems.match([f.path])[0].metadata_list:
            total += metadata.size_in_bytes
    return total


def unsupported_reason(files: Sequence[SnapshotFile], snapshot_time_field: str | None) -> str | None:
    """Why a run cannot take the columnar path (None: it can)."""
    if snapshot_time_field is not None:
        return "--snapshot_time_field takes each record's time from the record"
    for f in files:
        if f.format not in ("avro", "parquet"):
            return f"{f.path} is {f.format}; the columnar path reads Avro and Parquet"
        if f.format == "avro" and "://" in f.path:
            return f"{f.path} is not a local file; the columnar path reads local Avro files"
    return None


class ColumnarTransitionsResult(NamedTuple):
    """What :class:`ComputeTransitionsColumnar` returns.

    Attributes:
        result: The transitions and what comes with them, as the row path's.
        read_dead_letters: The read step's dead letters.
        snapshot_counts: ``(snapshot ms, baseline, records)`` per file.
    """

    result: TransitionsResult
    read_dead_letters: beam.PCollection
    snapshot_counts: beam.PCollection


class ComputeTransitionsColumnar(beam.PTransform):
    """Batch transitions from snapshot files, through Arrow buckets (see module doc).

    Args:
        files: The run's files (snapshots and baselines).
        config: The activation config.
        buckets: How many buckets profiles are hashed into.
        carried_states: A glob of the states carried from the previous run, or None.
        allow_mass_exit, carry_states, max_bad_records, report, dry_run: As for
            :class:`transforms.segments.transitions.ComputeBatchTransitions`.

    Returns (from ``expand``):
        A :class:`ColumnarTransitionsResult`.
    """

    def __init__(
        self,
        files: Sequence[SnapshotFile],
        config: ActivationConfig,
        *,
        buckets: int,
        carried_states: str | None = None,
        allow_mass_exit: bool = False,
        carry_states: bool = False,
        max_bad_records: int = 0,
        report: bool = False,
        dry_run: bool = False,
    ) -> None:
        super().__init__()
        self._files = list(files)
        self._config = config
        self._buckets = buckets
        self._carried_states = carried_states
        self._allow_mass_exit = allow_mass_exit
        self._carry_states = carry_states
        self._max_bad_records = max_bad_records
        self._report = report
        self._dry_run = dry_run

    def expand(self, pbegin: beam.pvalue.PBegin) -> ColumnarTransitionsResult:
        config = self._config
        codec = ShuffleCodec(config, [f.path for f in self._files])
        listed = [(f.path, f.format, f.baseline) for f in self._files]
        if self._carried_states:
            listed += [
                (path, CARRIED_STATE_FORMAT, False) for path in _match(self._carried_states)
            ]
        read = (
            pbegin
            | "ListSnapshotFiles" >> beam.Create(listed)
            | "SpreadSnapshotFiles" >> beam.Reshuffle()
            | "ReadSnapshotBuckets"
            >> beam.ParDo(ReadBucketsFn(config, codec, self._buckets)).with_outputs(
                DEAD_LETTER_TAG, SNAPSHOTS_TAG, main="buckets"
            )
        )
        read_dead_letters = read[DEAD_LETTER_TAG]
        snapshot_counts = read[SNAPSHOTS_TAG]
        snapshots = AsSingleton(
            snapshot_counts | "SnapshotTimes" >> beam.CombineGlobally(SnapshotCountsFn())
        )
        grouped = read.buckets | "GroupByBucket" >> beam.GroupByKey()
        result = guarded_replay(
            grouped,
            config=config,
            snapshots=snapshots,
            count_fn=BucketGuardCountsFn(),
            replay_fn=BucketTransitionsFn(config, self._carry_states, self._report, codec),
            read_dead_letters=read_dead_letters,
            allow_mass_exit=self._allow_mass_exit,
            max_bad_records=self._max_bad_records,
            carry_states=self._carry_states,
            report=self._report,
            dry_run=self._dry_run,
        )
        return ColumnarTransitionsResult(result, read_dead_letters, snapshot_counts)
