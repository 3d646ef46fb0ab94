"""The columnar read step: one snapshot file -> Arrow batches, one per bucket of profiles.

Each file is read into an Arrow table (Avro with Apache DataFusion, Parquet with
pyarrow). Its rows are checked and projected in bulk (:mod:`.projection`); a row the
checks cannot prove is handed to the row path's own parsing (the same dead letters,
the same *keep* records), read again with fastavro for Avro so that the dead letter's
``raw`` is exactly the row path's. Rows are then split by a hash of their profile key
into buckets, and each bucket's rows leave the step as one Arrow IPC message:
``(bucket, bytes)``. The runner moves a few elements per file, not one per record.

A bucket table has the columns of :data:`BUCKET_COLUMNS`; ``payload`` holds the
:class:`transforms.segments.codecs.ShuffleCodec` bytes of a record the row path parsed
(or of a carried state), and is null for rows whose projection columns hold them.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import fastavro
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.columnar.projection import IDENTITY_MAP, check_table, identity_keys, used_columns
from transforms.config import ActivationConfig
from transforms.segments.carried_state import CARRIED_STATE_FORMAT, carried_state_record
from transforms.segments.codecs import ShuffleCodec, carried_bytes
from transforms.snapshots.arrow_values import batch_rows, converter
from transforms.snapshots.profiles import RecordError, resolve_profile_key
from transforms.snapshots.read import (
    SNAPSHOTS_TAG,
    InputFileError,
    _detail,
    _ParseRecordFn,
    _read_records,
)
from transforms.snapshots.snapshot_time import snapshot_time_from_path

_LOGGER = logging.getLogger(__name__)

KEY, SNAPSHOT, FILE, ROW = "key", "snapshot_ms", "file", "row"
BASELINE, PAYLOAD = "baseline", "payload"
# ``row`` is the row's place in its file: with the file, it orders a profile's rows of
# one snapshot the same way on every runner, whatever order the shuffle delivers.
BUCKET_COLUMNS = (KEY, SNAPSHOT, FILE, ROW, BASELINE, PAYLOAD)


def bucket_of(key: str, buckets: int) -> int:
    """The bucket of a profile key (stable across processes and runs)."""
    return zlib.crc32(key.encode("utf-8")) % buckets


def read_table(path: str, fmt: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One snapshot file as an Arrow table (all its rows, the given columns if present).

    Raises:
        InputFileError: The file cannot be read as its format.
    """
    try:
        if fmt == "avro":
            import datafusion  # noqa: PLC0415 - only the columnar path needs it

            frame = datafusion.SessionContext().read_avro(path)
            if columns is not None:
                present = [c for c in columns if c in frame.schema().names]
                frame = frame.select(*[f'"{c}"' for c in present])
            table = frame.to_arrow_table()
            # DataFusion 55 returns the rows before a truncation without an error: the
            # blocks' own record counts (fastavro checks every block and sync marker)
            # must match, or the file is refused as the row path refuses it.
            with FileSystems.open(path) as handle:
                expected = sum(block.num_records for block in fastavro.block_reader(handle))
            if expected != table.num_rows:
                raise InputFileError(
                    f"{path}: corrupt or truncated avro file: {table.num_rows} rows read, "
                    f"{expected} in its blocks"
                )
            return table
        if fmt == "parquet":
            import pyarrow.parquet as pq  # noqa: PLC0415

            with FileSystems.open(path) as handle:
                parquet = pq.ParquetFile(handle)
                names = parquet.schema_arrow.names
                wanted = None if columns is None else [c for c in columns if c in names]
                return parquet.read(columns=wanted)
    except InputFileError:
        raise
    except Exception as err:  # noqa: BLE001 - DataFusion and pyarrow raise many kinds
        raise InputFileError(f"{path}: corrupt or truncated {fmt} file: {_detail(err)}") from None
    raise InputFileError(f"{path}: the columnar path reads avro and parquet, not {fmt}")


class ReadBucketsFn(_ParseRecordFn):
    """``(path, format, baseline)`` -> ``(bucket, Arrow IPC bytes)`` per bucket of the
    file, dead letters on ``DEAD_LETTER_TAG``, and ``(snapshot ms, baseline, records)``
    on ``SNAPSHOTS_TAG`` (as :class:`transforms.snapshots.read.ReadSnapshots` with a
    codec)."""

    def __init__(self, config: ActivationConfig, codec: ShuffleCodec, buckets: int) -> None:
        super().__init__(None, False, config, None)
        self._codec = codec
        self._buckets = buckets
        self._columns = used_columns(config)
        self._rule = config.profile_key
        self._key_root = (
            self._rule[len("field:") :].split(".", 1)[0] if self._rule.startswith("field:") else None
        )

    def process(self, element: tuple[str, str, bool]):
        path, fmt, baseline = element
        if fmt == CARRIED_STATE_FORMAT:
            yield from self._carried(path)
            return
        table = read_table(path, fmt)
        rows = table.num_rows
        snapshot_ms = snapshot_time_from_path(path)
        valid, projection = check_table(table, self._config)
        keys = self._keys(table, valid) if snapshot_ms is not None else [None] * rows
        if snapshot_ms is None:
            valid[:] = False
        parsed_keys: list[str] = []
        parsed_rows: list[int] = []
        payloads: list[bytes] = []
        rejected = np.nonzero(~valid)[0]
        # The row path's parsing counts the rows it parses itself.
        self._counts.add("records_read", rows - len(rejected))
        if len(rejected):
            for row, out in self._parse_rows(path, fmt, baseline, table, rejected):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield out
                else:
                    parsed_keys.append(out[0])
                    parsed_rows.append(row)
                    payloads.append(self._codec.encode(out[1]))
        accepted = np.nonzero(valid)[0]
        counts = len(accepted) + len(payloads)
        if counts:
            yield beam.pvalue.TaggedOutput(SNAPSHOTS_TAG, (snapshot_ms, baseline, counts))
        batch = self._bucket_table(path, snapshot_ms, baseline, projection, accepted, keys)
        extra = _payload_table(
            batch.schema, parsed_keys, payloads, snapshot_ms, path, baseline, parsed_rows
        )
        yield from self._split(pa.concat_tables([batch, extra]))

    # ------------------------------------------------------------------ rows

    def _keys(self, table: pa.Table, valid: np.ndarray) -> list[str | None]:
        """Each row's profile key by the row path's rule (None: unresolvable).

        ``primary`` and namespace rules are resolved in bulk; a ``field:`` rule, and
        rows of an unusual shape, by the row path's own ``resolve_profile_key``.
        """
        n = table.num_rows
        python_rows = np.ones(n, dtype=bool)
        keys: list[str | None] = [None] * n
        if not self._rule.startswith("field:") and IDENTITY_MAP in table.column_names:
            bulk, undecided = identity_keys(
                table.column(IDENTITY_MAP).combine_chunks(), self._rule
            )
            keys = bulk.to_pylist()
            python_rows = undecided
        rows = np.nonzero(python_rows)[0]
        if len(rows):
            names = [IDENTITY_MAP] + ([self._key_root] if self._key_root else [])
            picked = table.take(pa.array(rows, type=pa.int64()))
            columns = [
                (name, converter(picked.column(name).type), picked.column(name).to_pylist())
                for name in names
                if name in picked.column_names
            ]
            for j, i in enumerate(rows):
                raw = {name: convert(values[j]) for name, convert, values in columns}
                try:
                    keys[i] = resolve_profile_key(raw, self._rule)
                except (RecordError, AttributeError, TypeError):
                    keys[i] = None
        for i, key in enumerate(keys):
            if key is None:
                valid[i] = False
        return keys

    def _parse_rows(self, path, fmt, baseline, table, rows) -> Iterator[tuple[int, Any]]:
        """The row path's parsing of the rows the bulk checks could not prove:
        ``(row, output)`` pairs."""
        wanted = set(int(i) for i in rows)
        if fmt == "avro":
            raws = ((i, raw) for i, raw in enumerate(_read_records(path, fmt)) if i in wanted)
        else:
            picked = batch_rows(table.take(pa.array(rows, type=pa.int64())))
            raws = zip((int(i) for i in rows), picked, strict=True)
        for row, raw in raws:
            for out in self._parse(path, fmt, baseline, raw):
                yield row, out

    def _bucket_table(self, path, snapshot_ms, baseline, projection, accepted, keys) -> pa.Table:
        take = pa.array(accepted, type=pa.int64())
        n = len(accepted)
        columns = {
            KEY: pa.array([keys[i] for i in accepted], type=pa.string()),
            SNAPSHOT: pa.array(np.full(n, snapshot_ms or 0, dtype=np.int64)),
            FILE: pa.array([path] * n, type=pa.string()),
            ROW: pa.array(accepted, type=pa.int64()),
            BASELINE: pa.array(np.full(n, bool(baseline))),
            PAYLOAD: pa.nulls(n, pa.binary()),
        }
        for name in projection.column_names:
            columns[name] = projection.column(name).take(take)
        return pa.table(columns)

    def _split(self, table: pa.Table) -> Iterator[tuple[int, bytes]]:
        if not table.num_rows:
            return
        buckets = np.fromiter(
            (bucket_of(k, self._buckets) for k in table.column(KEY).to_pylist()),
            dtype=np.int64,
            count=table.num_rows,
        )
        order = np.argsort(buckets, kind="stable")
        table = table.take(pa.array(order, type=pa.int64()))
        ordered = buckets[order]
        bounds = np.nonzero(np.diff(ordered))[0] + 1
        for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(ordered)], strict=True):
            yield int(ordered[start]), to_ipc(table.slice(start, end - start))

    def _carried(self, path: str) -> Iterator[tuple[int, bytes]]:
        keys, payloads = [], []
        for raw in _read_records(path, CARRIED_STATE_FORMAT):
            key, record = carried_state_record(raw)
            keys.append(key)
            payloads.append(carried_bytes(record))
        schema = self._schema()
        yield from self._split(_payload_table(schema, keys, payloads, 0, path, False))

    def _schema(self) -> pa.Schema:
        empty = pa.table({name: pa.nulls(0) for name in used_columns(self._config)})
        _, projection = check_table(empty.select([]), self._config)
        return self._bucket_table("", 0, False, projection, np.zeros(0, dtype=np.int64), []).schema


def _payload_table(schema, keys, payloads, snapshot_ms, path, baseline, rows=None) -> pa.Table:
    """Rows parsed by the row path (or carried states): only the key and the payload."""
    n = len(keys)
    rows = list(range(n)) if rows is None else rows
    columns = []
    for field in schema:
        if field.name == KEY:
            columns.append(pa.array(keys, type=pa.string()))
        elif field.name == PAYLOAD:
            columns.append(pa.array(payloads, type=pa.binary()))
        elif field.name == SNAPSHOT:
            columns.append(pa.array(np.full(n, snapshot_ms or 0, dtype=np.int64)))
        elif field.name == FILE:
            columns.append(pa.array([path] * n, type=pa.string()))
        elif field.name == ROW:
            columns.append(pa.array(rows, type=pa.int64()))
        elif field.name == BASELINE:
            columns.append(pa.array(np.full(n, bool(baseline))))
        else:
            columns.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


def to_ipc(table: pa.Table) -> bytes:
    """An Arrow table as one IPC stream message."""
    sink = pa.BufferOutputStream()
    # A bucket's rows repeat the same segment ids, namespaces and times: compressed,
    # the runner holds and moves a fraction of the bytes.
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
    """The table of :func:`to_ipc`, or only its ``columns`` (those it has).

    Columns left out are not decompressed nor decoded at all.
    """
    buffer = pa.py_buffer(data)
    if columns is None:
        return pa.ipc.open_stream(buffer).read_all()
    # The stream's schema comes first; the batches are only read by read_all.
    names = pa.ipc.open_stream(buffer).schema.names
    wanted = [names.index(name) for name in columns if name in names]
    options = pa.ipc.IpcReadOptions(included_fields=wanted)
    return pa.ipc.open_stream(buffer, options=options).read_all()
