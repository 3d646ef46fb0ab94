"""Python values of chosen rows of an Arrow array, built on demand from flat children.

The values are those of :func:`transforms.snapshots.arrow_values.converter` applied to
``to_pylist()`` (maps as dicts, structs as dicts, lists as lists), so the row path's
``to_profile_record`` gets exactly the raw record it always got. Two things make it
cheaper than ``to_pylist()`` of a nested column:

* only the leaves (strings, numbers, booleans) are converted in bulk, by their own
  ``to_pylist()``: those objects are not tracked by the garbage collector, whereas a
  nested ``to_pylist()`` of a bucket makes millions of dicts and lists at once, and
  every collection walks them all;
* a row's dicts and lists are assembled only when the row is asked for (slices of the
  flat leaves, through the offsets), and become garbage with the raw record.

Types other than structs, lists and maps (dictionaries, extensions, unions, fixed-size
lists...) are converted the old way, by ``to_pylist()`` and the converter.
"""

from __future__ import annotations

from typing import Any, Protocol

import pyarrow as pa

from transforms.snapshots.arrow_values import converter


class Values(Protocol):
    """The Python values of an array's rows ``[start, end)``."""

    def values(self, start: int, end: int) -> list[Any]:
        """The values of rows ``start`` to ``end - 1``, as ``to_pylist`` + converter."""
        ...


def _validity(array: pa.Array) -> list[bool] | None:
    """Which rows are not null (None: all of them)."""
    if array.null_count == 0:
        return None
    return array.is_valid().to_pylist()


def _with_nulls(out: list[Any], valid: list[bool] | None, start: int, end: int) -> list[Any]:
    if valid is None:
        return out
    return [v if ok else None for v, ok in zip(out, valid[start:end], strict=True)]


class _Converted:
    """Leaves and every type this module does not take apart: ``to_pylist`` once."""

    def __init__(self, array: pa.Array) -> None:
        values = array.to_pylist()
        if pa.types.is_nested(array.type) or isinstance(array, pa.ExtensionArray):
            convert = converter(array.type)
            values = [convert(v) for v in values]
        self._values = values

    def values(self, start: int, end: int) -> list[Any]:
        return self._values[start:end]


class _Struct:
    """A struct: a dict of its fields, in the schema's order."""

    def __init__(self, array: pa.StructArray) -> None:
        self._names = [field.name for field in array.type]
        self._fields = [values_of(array.field(i)) for i in range(len(self._names))]
        self._valid = _validity(array)

    def values(self, start: int, end: int) -> list[Any]:
        first, *rest = zip(self._names, self._fields, strict=True)
        # Field by field over all rows (not ``dict(zip(names, row))`` per row): a quarter
        # of the time; the keys are inserted in the schema's order, as by to_pylist.
        out: list[Any] = [{first[0]: value} for value in first[1].values(start, end)]
        for name, field in rest:
            for row, value in zip(out, field.values(start, end), strict=False):
                row[name] = value
        return _with_nulls(out, self._valid, start, end)


class _List:
    """A list (or map: a dict of its entries) whose elements are flat children."""

    def __init__(self, array: pa.Array, is_map: bool) -> None:
        offsets = array.offsets.to_numpy()
        first, last = int(offsets[0]), int(offsets[-1])
        # The offsets count from the array's first element: the children are sliced to
        # this array's elements (``values`` ignores a slice's offset).
        self._offsets = (offsets - first).tolist()
        entries = array.values.slice(first, last - first)
        self._is_map = is_map
        if is_map:
            self._keys = values_of(entries.field(0))
            self._items = values_of(entries.field(1))
        else:
            self._elements = values_of(entries)
        self._valid = _validity(array)

    def values(self, start: int, end: int) -> list[Any]:
        offsets = self._offsets
        low, high = offsets[start], offsets[end]
        bounds = zip(offsets[start:end], offsets[start + 1 : end + 1], strict=True)
        out: list[Any]
        if self._is_map:
            keys = self._keys.values(low, high)
            items = self._items.values(low, high)
            # As the converter's ``dict(v)``: a key given twice keeps its last value.
            out = [dict(zip(keys[a - low : b - low], items[a - low : b - low], strict=True))
                   for a, b in bounds]
        else:
            flat = self._elements.values(low, high)
            out = [flat[a - low : b - low] for a, b in bounds]
        return _with_nulls(out, self._valid, start, end)


def values_of(array: pa.Array | pa.ChunkedArray) -> Values:
    """The rows of ``array`` as Python values on demand (see the module doc).

    Args:
        array: Any Arrow array; a chunked array is combined first.

    Returns:
        An object whose ``values(start, end)`` equals
        ``[converter(array.type)(v) for v in array.to_pylist()[start:end]]``.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if isinstance(array, pa.ExtensionArray):
        return _Converted(array)
    if pa.types.is_struct(kind):
        names = [field.name for field in kind]
        # Without fields there is nothing to zip; a name twice is to_pylist's business.
        if names and len(set(names)) == len(names):
            return _Struct(array)
        return _Converted(array)
    if pa.types.is_map(kind):
        return _List(array, is_map=True)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _List(array, is_map=False)
    return _Converted(array)


class RowValues:
    """``rows[i]``: the Python value of row ``i``, assembled a block of rows at a time.

    Rows are mostly asked for in ascending order: a block of :data:`BLOCK` rows is
    assembled at once (one pass per level instead of one per row), and dropped when a
    row outside it is asked for, so that only a block's dicts and lists are alive.
    """

    BLOCK = 256

    def __init__(self, array: pa.Array | pa.ChunkedArray) -> None:
        self._length = len(array)
        self._values = values_of(array)
        self._start = self._end = 0
        self._block: list[Any] = []

    def __getitem__(self, row: int) -> Any:
        if not self._start <= row < self._end:
            self._start, self._end = row, min(row + self.BLOCK, self._length)
            self._block = self._values.values(self._start, self._end)
        return self._block[row - self._start]
