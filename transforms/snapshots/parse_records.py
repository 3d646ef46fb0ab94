"""The DoFns that parse raw snapshot records into keyed profile records.

Shared by the batch read (:class:`transforms.snapshots.read.ReadSnapshots`), the watch of
a landing folder and the columnar read: a raw record (a JSON line, an Avro or Parquet
row) becomes ``(profile key, record)``, or a dead letter on :data:`DEAD_LETTER_TAG`.
"""

from __future__ import annotations

import json
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import dead_letters
from transforms.config import ActivationConfig
from transforms.events.timestamps import TimestampError, parse_timestamp
from transforms.metrics import METRICS_NAMESPACE, StepCounts
from transforms.segments.carried_state import (
    CARRIED_STATE_FORMAT,
    carried_state_record,
)
from transforms.snapshots.profiles import (
    RecordError,
    keep_record,
    known_profile_key,
    to_profile_record,
)
from transforms.snapshots.snapshot_time import snapshot_time_from_path

DEAD_LETTER_TAG = "dead_letter"
SNAPSHOTS_TAG = "snapshots"


def _detail(err: BaseException) -> str:
    """One line describing an exception: its message, else its type name."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


class _ParseRecordFn(beam.DoFn):
    """Decodes and validates one raw record; bad ones go to the dead-letter output.

    With ``fmt=None`` the format and the baseline flag come with each element (see
    :class:`_ReadFileFn`); carried states pass through as carried state records.
    """

    def __init__(
        self,
        fmt: str | None,
        baseline: bool,
        config: ActivationConfig,
        snapshot_time_field: str | None,
        baseline_paths: frozenset[str] = frozenset(),
    ) -> None:
        self._format = fmt
        self._baseline = baseline
        self._baseline_paths = baseline_paths
        self._config = config
        self._field = snapshot_time_field
        self._dead = Metrics.counter(METRICS_NAMESPACE, "records_dead_lettered")
        self._kept = Metrics.counter(METRICS_NAMESPACE, "dead_letters_state_kept")
        self._path_times: dict[str, int | None] = {}
        self._counts = StepCounts()

    def finish_bundle(self) -> None:
        self._counts.flush()

    def process(self, element: tuple[Any, Any]):
        source, raw = element
        if self._format is None:
            path, fmt, baseline = source
        else:
            path, fmt = source, self._format
            baseline = self._baseline or path in self._baseline_paths
        return self._parse(path, fmt, baseline, raw)

    def _parse(self, path: str, fmt: str, baseline: bool, raw: Any):
        """``(key, record)`` and/or a dead letter (``TaggedOutput``) for one raw record."""
        if fmt == CARRIED_STATE_FORMAT:
            yield carried_state_record(raw)
            return
        self._counts.add("records_read")
        record = None
        snapshot_ms = None
        try:
            record = self._decode(raw, fmt)
            snapshot_ms = self._snapshot_time(path, record)
            yield to_profile_record(record, self._config, snapshot_ms, path, baseline)
        except RecordError as err:
            self._dead.inc()
            key = None if snapshot_ms is None else known_profile_key(record, self._config)
            if key is not None:
                # The profile is in this snapshot: it keeps its state, it is not absent.
                self._kept.inc()
                yield key, keep_record(snapshot_ms, path, baseline)
            else:
                # Whose record this was is unknown: its snapshot is incomplete, and an
                # absence from it proves nothing (see --max_bad_records).
                snapshot_ms = self._path_snapshot_time(path, snapshot_ms)
            letter = dead_letters.read_dead_letter(
                err.code,
                str(err),
                file=path,
                raw=raw,
                kept=key is not None,
                snapshot_ms=snapshot_ms,
            )
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)

    def _decode(self, raw: Any, fmt: str) -> Any:
        if fmt == "json":
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RecordError(
                    f"line is not valid UTF-8: {err.reason} at byte {err.start}",
                    dead_letters.INVALID_UTF8,
                ) from None
            try:
                return json.loads(text)
            except json.JSONDecodeError as err:
                raise RecordError(
                    f"line is not valid JSON: {err.msg} at column {err.colno}",
                    dead_letters.INVALID_JSON,
                ) from None
        return raw

    def _path_snapshot_time(self, path: str, snapshot_ms: int | None) -> int | None:
        """The snapshot of an unreadable record: its own, else its file's, else None."""
        if snapshot_ms is not None or self._field is not None:
            return snapshot_ms
        if path not in self._path_times:
            self._path_times[path] = snapshot_time_from_path(path)
        return self._path_times[path]

    def _snapshot_time(self, path: str, record: Any) -> int:
        if self._field is not None and isinstance(record, dict) and self._field in record:
            try:
                return parse_timestamp(record[self._field])
            except TimestampError as err:
                raise RecordError(
                    f"snapshot time field {self._field!r}: {err}", dead_letters.NO_SNAPSHOT_TIME
                ) from None
        if path not in self._path_times:
            self._path_times[path] = snapshot_time_from_path(path)
        resolved = self._path_times[path]
        if resolved is None:
            raise RecordError(
                f"no snapshot time: the record has no {self._field!r} field and the file "
                "path carries no date",
                dead_letters.NO_SNAPSHOT_TIME,
            )
        return resolved
