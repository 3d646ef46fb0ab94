"""Arrow values as the row path's raw records: maps become dicts, by the schema.

pyarrow's ``to_pylist`` gives a MAP value as a list of ``(key, value)`` tuples, so an
empty map and an empty list look the same. Converting by the column's type tells them
apart, and gives the same Python values fastavro gives for Avro.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa


def to_python(value: Any, kind: pa.DataType) -> Any:
    """An Arrow value (``to_pylist`` form) of type ``kind`` with its maps as dicts."""
    if value is None:
        return None
    if pa.types.is_map(kind):
        return {k: to_python(v, kind.item_type) for k, v in value}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return [to_python(v, kind.value_type) for v in value]
    if pa.types.is_struct(kind):
        return {f.name: to_python(value[f.name], f.type) for f in kind}
    return value


def _has_map(kind: pa.DataType) -> bool:
    if pa.types.is_map(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _has_map(kind.value_type)
    if pa.types.is_struct(kind):
        return any(_has_map(f.type) for f in kind)
    return False


def batch_rows(batch: pa.RecordBatch | pa.Table) -> Iterator[dict]:
    """The rows of a record batch as dicts, maps as dicts."""
    mapped = [f.name for f in batch.schema if _has_map(f.type)]
    types = {name: batch.schema.field(name).type for name in mapped}
    for row in batch.to_pylist():
        for name in mapped:
            row[name] = to_python(row[name], types[name])
        yield row
