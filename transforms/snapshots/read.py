"""``ReadSnapshots``: profile snapshot files to keyed internal profile records (docs/contract.md §2).

Files are matched when the pipeline is built, so a pattern that matches nothing, a file
of unknown format or a file without a resolvable snapshot time fails before anything
runs, with a message naming the pattern or file.

Each matched file is read whole by one DoFn (:class:`_ReadFileFn`) through Beam's
``FileSystems`` (local, GCS, S3...): Avro with fastavro, JSON Lines as raw bytes per line
(gzip by extension), Parquet with pyarrow, in record batches. Beam's ``ReadAllFrom*``
transforms are not used because their errors do not name the file: here a file that
cannot be opened or decoded fails the run with :class:`InputFileError`, whose one-line
message starts with the file's path. A malformed *record* is not a file error: it goes to
the dead letters (:mod:`transforms.dead_letters`) with its raw input, its file, a reason
code and the error. Files are spread over workers by a ``Reshuffle`` of their paths; a
file is not split (exports come as many part files).
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import fastavro
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.config import ActivationConfig
from transforms.errors import SegmentEventsError
from transforms.segments.carried_state import CARRIED_STATE_FORMAT, is_carried_state
from transforms.segments.codecs import ShuffleCodec
from transforms.snapshots.arrow_values import batch_rows
from transforms.snapshots.formats import file_format
from transforms.snapshots.parse_records import (
    DEAD_LETTER_TAG,
    SNAPSHOTS_TAG,
    _detail,
    _ParseRecordFn,
)
from transforms.snapshots.snapshot_time import require_snapshot_time, snapshot_time_from_path

_LOGGER = logging.getLogger(__name__)

# Markers and hidden files (Hadoop/Spark conventions) that a glob may match.
_IGNORED_PREFIXES = ("_", ".")


class InputError(SegmentEventsError, ValueError):
    """An input pattern or file cannot be used; the message names it."""


class InputFileError(InputError):
    """A matched file cannot be opened or decoded while the job runs.

    The message is one line that starts with the file's path, e.g.
    ``"<path>: corrupt or truncated avro file: <detail>"``.
    """


@dataclass(frozen=True)
class SnapshotFile:
    """A matched input file.

    Attributes:
        path: The file path or URL.
        format: ``avro``, ``json`` or ``parquet``.
        baseline: Whether it came from ``--baseline``.
    """

    path: str
    format: str
    baseline: bool


def match_snapshot_files(
    patterns: Sequence[str], baseline: bool, snapshot_time_field: str | None
) -> list[SnapshotFile]:
    """Matches input patterns and checks every file before the pipeline starts.

    Args:
        patterns: Glob patterns (``--input`` or ``--baseline``).
        baseline: Whether these are baseline inputs.
        snapshot_time_field: The record field giving T; without it every file must
            carry its time in its path.

    Returns:
        The matched files, sorted by path.

    Raises:
        InputError: A pattern matches no file, a file has an unknown extension, or a
            file's snapshot time cannot be resolved.
    """
    flag = "--baseline" if baseline else "--input"
    files = []
    for pattern in patterns:
        try:
            metadata = FileSystems.match([pattern])[0].metadata_list
        except Exception as err:  # noqa: BLE001 - filesystems raise many kinds
            raise InputError(f"{flag} {pattern}: cannot list files: {err}") from None
        paths = [
            m.path
            for m in metadata
            if not m.path.replace("\\", "/").rsplit("/", 1)[-1].startswith(_IGNORED_PREFIXES)
        ]
        if not paths:
            raise InputError(f"{flag} {pattern}: no file matches this pattern")
        for path in sorted(paths):
            fmt = file_format(path)
            if fmt is None and _is_directory(path):
                raise InputError(
                    f"{flag} {path}: is a directory (use a glob such as "
                    f"{path.rstrip('/')}/*.avro, or {path.rstrip('/')}/*/*.avro for "
                    "snapshot folders)"
                )
            if fmt is None:
                raise InputError(
                    f"{path}: unknown file format; expected .avro, .json, .jsonl "
                    "(optionally .gz) or .parquet"
                )
            if snapshot_time_field is None:
                require_snapshot_time(path)
            else:
                # Still reject a malformed snapshot= segment up front.
                snapshot_time_from_path(path)
            files.append(SnapshotFile(path, fmt, baseline))
    unique = {f.path: f for f in files}
    return sorted(unique.values(), key=lambda f: f.path)


def run_files(
    inputs: Sequence[str], baseline: Sequence[str], snapshot_time_field: str | None
) -> list[SnapshotFile]:
    """The files a run reads: the one place that turns its patterns into files.

    Args:
        inputs: The ``--input`` glob patterns (empty: none, e.g. a streaming run, whose
            snapshots have not landed yet).
        baseline: The ``--baseline`` glob patterns.
        snapshot_time_field: As in :func:`match_snapshot_files`.

    Returns:
        The ``--input`` files, then the ``--baseline`` files (``baseline=True``), each
        part sorted by path as :func:`match_snapshot_files` returns it.

    Raises:
        InputError: As :func:`match_snapshot_files`; the inputs are checked first.
    """
    files = match_snapshot_files(inputs, False, snapshot_time_field)
    files += match_snapshot_files(baseline, True, snapshot_time_field)
    return files


def _is_directory(path: str) -> bool:
    """Whether a matched path is a folder (local paths; object stores have none)."""
    return "://" not in path and os.path.isdir(path)


class SnapshotRecords(NamedTuple):
    """What :class:`ReadSnapshots` returns.

    Attributes:
        records: ``(profile key, internal profile record)`` pairs.
        dead_letters: Read-stage dead letters (:func:`transforms.dead_letters.read_dead_letter`).
    """

    records: beam.PCollection
    dead_letters: beam.PCollection


class EncodedSnapshots(NamedTuple):
    """What :class:`ReadEncodedSnapshots` returns.

    Attributes:
        records: ``(profile key, bytes)``: each record encoded for the transitions'
            shuffle (:class:`transforms.segments.codecs.ShuffleCodec`).
        dead_letters: Read-stage dead letters, as :class:`SnapshotRecords`'s.
        snapshot_counts: ``(snapshot ms, baseline, records)`` per file and snapshot
            time, for ``ComputeBatchTransitions(snapshot_counts=...)``.
    """

    records: beam.PCollection
    dead_letters: beam.PCollection
    snapshot_counts: beam.PCollection


class _ReadSnapshotFiles(beam.PTransform):
    """What both readers share: the run's files, listed and spread over the workers.

    Every file goes through one read branch (one list, one reshuffle, one read and one
    parse step), whatever its format: the local runner materialises every multi-input
    Flatten as an extra copy of its whole input, so records of several formats, or
    records and carried states, must not meet in a Flatten before the GroupByKey.
    """

    def __init__(
        self,
        inputs: Sequence[str],
        config: ActivationConfig,
        baseline: Sequence[str] = (),
        snapshot_time_field: str | None = None,
        files: Sequence[SnapshotFile] | None = None,
        carried_states: str | None = None,
    ) -> None:
        super().__init__()
        self._inputs = list(inputs)
        self._baseline = list(baseline)
        self._config = config
        self._field = snapshot_time_field
        self._files = None if files is None else list(files)
        self._carried_states = carried_states

    def _spread_files(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        """The run's ``(path, format, baseline)`` triples (and carried-state files)."""
        files = self._files
        if files is None:
            files = run_files(self._inputs, self._baseline, self._field)
        listed = [(f.path, f.format, f.baseline) for f in files]
        if self._carried_states:
            listed += [(path, CARRIED_STATE_FORMAT, False) for path in _match(self._carried_states)]
        return (
            pbegin
            | "ListSnapshotFiles" >> beam.Create(listed)
            | "SpreadSnapshotFiles" >> beam.Reshuffle()
        )


class ReadSnapshots(_ReadSnapshotFiles):
    """Reads snapshot files into ``(profile key, internal profile record)`` pairs.

    Args:
        inputs: ``--input`` glob patterns.
        config: The activation config (key rule, mapped segments and attributes).
        baseline: ``--baseline`` glob patterns.
        snapshot_time_field: Optional record field holding the snapshot time.
        files: Already matched files (one run of a split backfill); replaces the
            patterns, so that file names are never read as globs.
        carried_states: A glob of the profile states carried from the previous run of a
            split backfill (:mod:`transforms.segments.carried_state`). They come out among the
            records, as ``(profile key, carried state record)``.

    Returns (from ``expand``):
        A :class:`SnapshotRecords`.
    """

    def expand(self, pbegin: beam.pvalue.PBegin) -> SnapshotRecords:
        parsed = (
            self._spread_files(pbegin)
            | "ReadSnapshotFiles" >> beam.ParDo(_ReadFileFn())
            | "ParseSnapshotRecords"
            >> beam.ParDo(_ParseRecordFn(None, False, self._config, self._field)).with_outputs(
                DEAD_LETTER_TAG, main="records"
            )
        )
        return SnapshotRecords(parsed.records, parsed[DEAD_LETTER_TAG])


class ReadEncodedSnapshots(_ReadSnapshotFiles):
    """:class:`ReadSnapshots` for the batch transitions: each record is encoded for
    their GroupByKey right where it is parsed, in the step that reads its file, so no
    PCollection of record dicts exists; the step also counts each file's records.

    Args:
        codec: How records cross the shuffle; give the same one to
            ``ComputeBatchTransitions``.
        Others: As :class:`ReadSnapshots`.

    Returns (from ``expand``):
        An :class:`EncodedSnapshots`.
    """

    def __init__(self, *args: Any, codec: ShuffleCodec, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._codec = codec

    def expand(self, pbegin: beam.pvalue.PBegin) -> EncodedSnapshots:
        encoded = self._spread_files(pbegin) | "ReadSnapshotFiles" >> beam.ParDo(
            _ReadEncodeFn(self._config, self._field, self._codec)
        ).with_outputs(DEAD_LETTER_TAG, SNAPSHOTS_TAG, main="records")
        return EncodedSnapshots(encoded.records, encoded[DEAD_LETTER_TAG], encoded[SNAPSHOTS_TAG])


def read_file_dofn(fmt: str | None = None) -> beam.DoFn:
    """The DoFn reading one snapshot file: ``path`` (or ``(path, format, baseline)``)
    -> ``(path, raw record)``. Shared with the watch of a landing folder."""
    return _ReadFileFn(fmt)


def parse_records_dofn(
    fmt: str | None,
    config: ActivationConfig,
    snapshot_time_field: str | None = None,
    baseline_paths: Iterable[str] = (),
) -> beam.DoFn:
    """The DoFn parsing raw records into ``(profile key, record)``, with a
    ``DEAD_LETTER_TAG`` output. Shared with the watch of a landing folder, which reads
    the ``--baseline`` files (``baseline_paths``) among the landed ones."""
    return _ParseRecordFn(fmt, False, config, snapshot_time_field, frozenset(baseline_paths))


def _match(pattern: str) -> list[str]:
    try:
        metadata = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:  # noqa: BLE001 - filesystems raise many kinds
        raise InputError(f"{pattern}: cannot list files: {err}") from None
    if not metadata:
        raise InputError(f"{pattern}: no carried state file")
    return sorted(m.path for m in metadata)


# Rows per pyarrow record batch: bounds the memory of one Parquet read step.
_PARQUET_BATCH_ROWS = 1024


class _ReadFileFn(beam.DoFn):
    """Reads one snapshot file; yields ``(path, raw record)``.

    Built with a format, it reads paths of that format. Built without (``fmt=None``), it
    reads ``(path, format, baseline)`` elements and yields that tuple in place of the
    path.

    Raw records are ``bytes`` lines for JSON (a line that is not UTF-8 must become a dead
    letter, not a crash; blank lines are skipped), and dicts for Avro and Parquet (MAP
    columns as dicts, by the file's schema).

    Raises:
        InputFileError: The file cannot be opened, or is not a readable file of its
            format (corrupt, truncated, wrong format).
    """

    def __init__(self, fmt: str | None = None) -> None:
        self._format = fmt

    def process(self, element: Any) -> Iterator[tuple[Any, Any]]:
        if self._format is None:
            path, fmt, _ = element
        else:
            path, fmt = element, self._format
        for raw in _read_records(path, fmt):
            yield element, raw


def _read_records(path: str, fmt: str) -> Iterator[Any]:
    """The raw records of one file (see :class:`_ReadFileFn`).

    Raises:
        InputFileError: The file cannot be opened or decoded.
    """
    try:
        handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception as err:  # noqa: BLE001 - filesystems raise many kinds
        raise InputFileError(f"{path}: cannot open the file: {_detail(err)}") from None
    kind = "gzip" if fmt == "json" and path.lower().endswith(".gz") else fmt
    with handle:
        try:
            yield from _RECORD_READERS[fmt](handle, path)
        except Exception as err:  # noqa: BLE001 - fastavro, pyarrow, gzip raise many kinds
            # Only this file's decoding fails here: an error raised where a record is
            # used (in the caller's loop, or a downstream step) never enters this
            # generator.
            raise InputFileError(
                f"{path}: corrupt or truncated {kind} file: {_detail(err)}"
            ) from None


def _json_lines(handle: Any, path: str) -> Iterator[bytes]:
    stream = gzip.GzipFile(fileobj=handle, mode="rb") if path.lower().endswith(".gz") else handle
    for line in stream:
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield line


def _avro_records(handle: Any, path: str) -> Iterator[Any]:
    del path
    yield from fastavro.reader(handle)


def _parquet_rows(handle: Any, path: str) -> Iterator[dict]:
    del path
    import pyarrow.parquet as pq  # noqa: PLC0415 - only Parquet inputs need pyarrow

    parquet = pq.ParquetFile(handle)
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        yield from batch_rows(batch)


_RECORD_READERS = {
    "json": _json_lines,
    "avro": _avro_records,
    "parquet": _parquet_rows,
    CARRIED_STATE_FORMAT: _avro_records,
}


class _ReadEncodeFn(_ParseRecordFn):
    """Reads, parses and encodes one file: ``(path, format, baseline)`` ->
    ``(profile key, grouped value bytes)``, dead letters, and per snapshot time of the
    file ``(snapshot ms, baseline, records)`` on ``SNAPSHOTS_TAG``.

    The same records, dead letters and counters as :class:`_ReadFileFn` followed by
    :class:`_ParseRecordFn`, in one step: no element per raw record between them, and
    no pass over the records to find the run's snapshot times.
    """

    def __init__(
        self, config: ActivationConfig, snapshot_time_field: str | None, codec: ShuffleCodec
    ) -> None:
        super().__init__(None, False, config, snapshot_time_field)
        self._codec = codec

    def process(self, element: tuple[str, str, bool]):
        path, fmt, baseline = element
        encode_keyed = self._codec.encode_keyed
        counts: dict[int, int] = {}
        for raw in _read_records(path, fmt):
            for out in self._parse(path, fmt, baseline, raw):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield out
                    continue
                record = out[1]
                if not is_carried_state(record):
                    counts[record["snapshot_ms"]] = counts.get(record["snapshot_ms"], 0) + 1
                yield encode_keyed(out)
        for snapshot_ms, records in counts.items():
            yield beam.pvalue.TaggedOutput(SNAPSHOTS_TAG, (snapshot_ms, baseline, records))
