"""Arrow values as the row path's raw records: maps become dicts, by the schema.

pyarrow's ``to_pylist`` gives a MAP value as a list of ``(key, value)`` tuples, so an
empty map and an empty list look the same. Converting by the column's type tells them
apart, and gives the same Python values fastavro gives for Avro.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa


def _has_map(kind: pa.DataType) -> bool:
    if pa.types.is_map(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _has_map(kind.value_type)
    if pa.types.is_struct(kind):
        return any(_has_map(f.type) for f in kind)
    return False


def _same(value: Any) -> Any:
    return value


@functools.lru_cache(maxsize=256)
def converter(kind: pa.DataType) -> Callable[[Any], Any]:
    """A function turning ``to_pylist`` values of type ``kind`` into fastavro's form.

    Subtrees without a map are left as pyarrow made them (dicts and lists already).
    """
    if not _has_map(kind):
        return _same
    if pa.types.is_map(kind):
        item = converter(kind.item_type)
        if item is _same:
            return lambda v: None if v is None else dict(v)
        return lambda v: None if v is None else {k: item(x) for k, x in v}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        element = converter(kind.value_type)
        return lambda v: None if v is None else [element(x) for x in v]
    fields = [(f.name, converter(f.type)) for f in kind if _has_map(f.type)]

    def struct(v: Any) -> Any:
        if v is None:
            return None
        for name, convert in fields:
            v[name] = convert(v[name])
        return v

    return struct


def to_python(value: Any, kind: pa.DataType) -> Any:
    """An Arrow value (``to_pylist`` form) of type ``kind`` with its maps as dicts."""
    return converter(kind)(value)


def batch_rows(batch: pa.RecordBatch | pa.Table) -> Iterator[dict]:
    """The rows of a record batch as dicts, maps as dicts."""
    mapped = [(f.name, converter(f.type)) for f in batch.schema if _has_map(f.type)]
    for row in batch.to_pylist():
        for name, convert in mapped:
            row[name] = convert(row[name])
        yield row
