"""Deep equality of Arrow rows, vectorised: is row ``a[i]`` equal to row ``b[i]``?

The columnar path compares each profile's record with its record of the snapshot
before, for the columns the rules read. The comparison is exact (no hashing): nested
lists, maps and structs are compared element by element through their offsets, with
numpy doing the bookkeeping, so no row becomes a Python value. Map entries compare in
their stored order, so the same entries in another order count as different: such a row
then goes to the replay like any changed one, which costs time, never correctness.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _valid(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    return array.is_valid().to_numpy(zero_copy_only=False)


def rows_equal(array: pa.Array, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether ``array[a[i]]`` deeply equals ``array[b[i]]``, for each ``i``.

    Nulls equal nulls. Floating-point NaN never equals anything (the row then counts as
    changed, which is safe). Types this does not know count as different.

    Args:
        array: Any Arrow array (one chunk).
        a: Row indices (int64).
        b: Row indices of the same length.

    Returns:
        A boolean numpy array of ``len(a)``.
    """
    n = len(a)
    if n == 0:
        return np.ones(0, dtype=bool)
    valid = _valid(array)
    valid_a, valid_b = valid[a], valid[b]
    equal = valid_a == valid_b
    both = valid_a & valid_b
    kind = array.type
    if isinstance(array, pa.ExtensionArray):
        array, kind = array.storage, array.type.storage_type
    if pa.types.is_dictionary(kind):
        return equal & (rows_equal(array.dictionary_decode(), a, b) | ~both)
    if pa.types.is_struct(kind):
        for index in range(kind.num_fields):
            equal &= rows_equal(array.field(index), a, b) | ~both
        return equal
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        offsets = array.offsets.to_numpy().astype(np.int64)
        length_a = offsets[a + 1] - offsets[a]
        length_b = offsets[b + 1] - offsets[b]
        same_length = (length_a == length_b) | ~both
        equal &= same_length
        chosen = np.nonzero(both & same_length & (length_a > 0))[0]
        if len(chosen):
            lengths = length_a[chosen]
            rows = np.repeat(chosen, lengths)
            position = np.arange(int(lengths.sum())) - np.repeat(
                np.cumsum(lengths) - lengths, lengths
            )
            child_equal = rows_equal(
                array.values,
                np.repeat(offsets[a[chosen]], lengths) + position,
                np.repeat(offsets[b[chosen]], lengths) + position,
            )
            differs = np.bincount(rows[~child_equal], minlength=n) > 0
            equal &= ~differs
        return equal
    if pa.types.is_null(kind):
        return equal
    if (
        pa.types.is_nested(kind)
        or pa.types.is_union(kind)
        or pa.types.is_list_view(kind)
        or pa.types.is_large_list_view(kind)
    ):
        return np.zeros(n, dtype=bool)
    left = array.take(pa.array(a, type=pa.int64()))
    right = array.take(pa.array(b, type=pa.int64()))
    same = pc.fill_null(pc.equal(left, right), False).to_numpy(zero_copy_only=False)
    return equal & (same | ~both)
