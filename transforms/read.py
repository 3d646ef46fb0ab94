"""``ReadSnapshots``: profile snapshot files to keyed internal profile records (SPEC §2).

Files are matched when the pipeline is built, so a pattern that matches nothing, a file
of unknown format or a file without a resolvable snapshot time fails before anything
runs, with a message naming the pattern or file. Each format is read with Beam's own IO
(Avro through fastavro, text with gzip auto-detection, Parquet through pyarrow), always
with the file name, because the file decides the snapshot time and goes into dead
letters.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.io import avroio, parquetio, textio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.config import ActivationConfig
from transforms.profiles import RecordError, to_profile_record
from transforms.snapshot_time import require_snapshot_time, snapshot_time_from_path
from transforms.timestamps import TimestampError, parse_timestamp

_LOG = logging.getLogger(__name__)
DEAD_LETTER_TAG = "dead_letter"
METRICS_NAMESPACE = "segment_events"

# Extension -> format. ".gz" is read transparently by the text reader.
_FORMATS = {
    ".avro": "avro",
    ".json": "json",
    ".jsonl": "json",
    ".json.gz": "json",
    ".jsonl.gz": "json",
    ".parquet": "parquet",
}
# Markers and hidden files (Hadoop/Spark conventions) that a glob may match.
_IGNORED_PREFIXES = ("_", ".")


class InputError(ValueError):
    """An input pattern or file cannot be used; the message names it."""


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


def file_format(path: str) -> str | None:
    """The format of a file by its extension, or ``None`` if unknown."""
    lowered = path.lower()
    for extension in sorted(_FORMATS, key=len, reverse=True):
        if lowered.endswith(extension):
            return _FORMATS[extension]
    return None


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


class ReadSnapshots(beam.PTransform):
    """Reads snapshot files into ``(profile key, internal profile record)`` pairs.

    The result is a dict of two PCollections: ``"records"`` and ``"dead_letters"``
    (dicts with ``stage``, ``reason``, ``file`` and ``raw``).

    Args:
        inputs: ``--input`` glob patterns.
        config: The activation config (key rule, mapped segments and attributes).
        baseline: ``--baseline`` glob patterns.
        snapshot_time_field: Optional record field holding the snapshot time.
    """

    def __init__(
        self,
        inputs: Sequence[str],
        config: ActivationConfig,
        baseline: Sequence[str] = (),
        snapshot_time_field: str | None = None,
    ) -> None:
        super().__init__()
        self._inputs = list(inputs)
        self._baseline = list(baseline)
        self._config = config
        self._field = snapshot_time_field

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        files = match_snapshot_files(self._inputs, False, self._field)
        files += match_snapshot_files(self._baseline, True, self._field)
        records, dead_letters = [], []
        for kind, is_baseline in (("Input", False), ("Baseline", True)):
            for fmt, reader in (
                ("Avro", _read_avro),
                ("Json", _read_json),
                ("Parquet", _read_parquet),
            ):
                paths = [
                    f.path for f in files if f.baseline == is_baseline and f.format == fmt.lower()
                ]
                if not paths:
                    continue
                parsed = (
                    pbegin
                    | f"List{kind}{fmt}Files" >> beam.Create(paths)
                    | f"Read{kind}{fmt}" >> reader()
                    | f"Parse{kind}{fmt}Records"
                    >> beam.ParDo(
                        _ParseRecordFn(fmt.lower(), is_baseline, self._config, self._field)
                    ).with_outputs(DEAD_LETTER_TAG, main="records")
                )
                records.append(parsed.records)
                dead_letters.append(parsed[DEAD_LETTER_TAG])
        return {
            "records": records | "FlattenRecords" >> beam.Flatten(),
            "dead_letters": dead_letters | "FlattenReadDeadLetters" >> beam.Flatten(),
        }


def _read_avro() -> beam.PTransform:
    return avroio.ReadAllFromAvro(with_filename=True)


def _read_json() -> beam.PTransform:
    # Bytes, not str: a line that is not UTF-8 must become a dead letter, not a crash.
    return textio.ReadAllFromText(with_filename=True, coder=coders.BytesCoder())


def _read_parquet() -> beam.PTransform:
    return parquetio.ReadAllFromParquet(with_filename=True)


class _ParseRecordFn(beam.DoFn):
    """Decodes and validates one raw record; bad ones go to the dead-letter output."""

    def __init__(
        self,
        fmt: str,
        baseline: bool,
        config: ActivationConfig,
        snapshot_time_field: str | None,
    ) -> None:
        self._format = fmt
        self._baseline = baseline
        self._config = config
        self._field = snapshot_time_field
        self._records = Metrics.counter(METRICS_NAMESPACE, "records_read")
        self._dead = Metrics.counter(METRICS_NAMESPACE, "records_dead_lettered")
        self._path_times: dict[str, int | None] = {}

    def process(self, element: tuple[str, Any]):
        path, raw = element
        self._records.inc()
        try:
            record = self._decode(raw)
            snapshot_ms = self._snapshot_time(path, record)
            yield to_profile_record(record, self._config, snapshot_ms, path, self._baseline)
        except RecordError as err:
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER_TAG,
                {"stage": "read", "reason": str(err), "file": path, "raw": _raw_text(raw)},
            )

    def _decode(self, raw: Any) -> Any:
        if self._format == "json":
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RecordError(
                    f"line is not valid UTF-8: {err.reason} at byte {err.start}"
                ) from None
            try:
                return json.loads(text)
            except json.JSONDecodeError as err:
                raise RecordError(
                    f"line is not valid JSON: {err.msg} at column {err.colno}"
                ) from None
        if self._format == "parquet":
            return _maps_to_dicts(raw)
        return raw

    def _snapshot_time(self, path: str, record: Any) -> int:
        if self._field is not None and isinstance(record, dict) and self._field in record:
            try:
                return parse_timestamp(record[self._field])
            except TimestampError as err:
                raise RecordError(f"snapshot time field {self._field!r}: {err}") from None
        if path not in self._path_times:
            self._path_times[path] = snapshot_time_from_path(path)
        resolved = self._path_times[path]
        if resolved is None:
            raise RecordError(
                f"no snapshot time: the record has no {self._field!r} field and the file "
                "path carries no date"
            )
        return resolved


def _maps_to_dicts(value: Any) -> Any:
    """Parquet MAP columns arrive from pyarrow as lists of (key, value) tuples."""
    if isinstance(value, dict):
        return {k: _maps_to_dicts(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(item, tuple) and len(item) == 2 for item in value):
            return {k: _maps_to_dicts(v) for k, v in value}
        return [_maps_to_dicts(item) for item in value]
    return value


def _raw_text(raw: Any) -> str:
    """The raw input as text for a dead letter, whatever its format."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    try:
        return json.dumps(raw, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(raw)
