"""What the columnar path checks and compares per row, vectorised over a file's table.

A row can skip the Python replay step only when the row path would surely turn it into
a valid internal record (``transforms.snapshots.profiles.to_profile_record``) whose
content equals the previous snapshot's. This module finds, without making any row a
Python value:

* rows the row path would surely accept: every segment entry has a known status and a
  qualification time that parses (each distinct time is parsed once, by the row
  path's own ``parse_timestamp``), every identity has a string id, ``_deleted`` is a
  boolean. Any other row goes through the row path's own parsing, which decides;
* the *mapped segments* of each row, the only segments an internal record keeps;
* the *projection* compared between snapshots: the identity map, the mapped segments,
  ``_deleted`` and the top-level columns that hold the configured attributes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.config import ActivationConfig
from transforms.events.timestamps import TimestampError, parse_timestamp
from transforms.snapshots.profiles import STATUSES

IDENTITY_MAP, SEGMENTS, DELETED = "identityMap", "segmentMembership", "_deleted"
# The mapped segments of a row, as the projection holds them.
MAPPED_TYPE = pa.list_(
    pa.struct(
        [
            ("namespace", pa.string()),
            ("segment", pa.string()),
            ("status", pa.string()),
            ("qualified", pa.string()),
        ]
    )
)


def used_columns(config: ActivationConfig) -> list[str]:
    """The top-level columns the rules read (the key, segments, identities, attributes)."""
    roots = [IDENTITY_MAP, SEGMENTS, DELETED]
    paths = list(config.attributes)
    if config.profile_key.startswith("field:"):
        paths.append(config.profile_key[len("field:") :])
    for path in paths:
        root = path.split(".", 1)[0]
        if root not in roots:
            roots.append(root)
    return roots


def _valid(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    return array.is_valid().to_numpy(zero_copy_only=False)


def flatten_with_parents(array: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The elements of a list or map array (null rows have none) and each one's row."""
    offsets = array.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets) * _valid(array)
    parents = np.repeat(np.arange(len(array)), lengths)
    if lengths.sum() == offsets[-1] - offsets[0]:
        # No null row holds elements: the elements are one contiguous slice.
        return array.values.slice(offsets[0], offsets[-1] - offsets[0]), parents
    starts = np.repeat(offsets[:-1], lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return array.values.take(pa.array(starts + within, type=pa.int64())), parents


def _field(struct: pa.Array, name: str) -> pa.Array | None:
    kind = struct.type
    if not pa.types.is_struct(kind) or kind.get_field_index(name) < 0:
        return None
    return struct.field(kind.get_field_index(name))


# The common text form, checked without Python: a date-time with seconds and "Z", every
# field in range (strptime then checks the day against the month).
_PLAIN_TIME = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\dZ$"
)

_PLAIN_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _invalid_values(array: pa.Array) -> pa.Array:
    """The distinct non-null values ``parse_timestamp`` refuses, as an array.

    Text in the plain form is proven by Arrow (regex and strptime); every other distinct
    value is parsed once by ``parse_timestamp`` itself.
    """
    values = pc.unique(array)
    if pa.types.is_string(values.type):
        stamps = pc.strptime(values, format=_PLAIN_FORMAT, unit="s", error_is_null=True)
        # strptime rolls 2023-02-30 over to March: the text must come back unchanged.
        plain = pc.and_(
            pc.match_substring_regex(values, _PLAIN_TIME),
            pc.equal(pc.strftime(stamps, format=_PLAIN_FORMAT), values),
        )
        values = values.filter(pc.invert(pc.fill_null(plain, False)))
    bad = []
    for value in values.to_pylist():
        if value is None:
            continue
        try:
            parse_timestamp(value)
        except (TimestampError, TypeError, ValueError):
            bad.append(value)
    return pa.array(bad, type=array.type)


def _mark(valid: np.ndarray, rows: np.ndarray, bad: np.ndarray) -> None:
    valid[rows[bad]] = False


def check_identities(column: pa.Array, valid: np.ndarray) -> None:
    """Marks rows whose identity map the row path would refuse (in place)."""
    if pa.types.is_null(column.type):
        return
    if not pa.types.is_map(column.type) or not pa.types.is_list(column.type.item_type):
        valid[_valid(column)] = False
        return
    entries, rows = flatten_with_parents(column)
    lists = entries.field(1)
    items, parents = flatten_with_parents(lists)
    item_rows = rows[parents]
    ids = _field(items, "id")
    if ids is None or not pa.types.is_string(ids.type):
        valid[item_rows] = False
        return
    bad = ~_valid(items) | ~_valid(ids)
    _mark(valid, item_rows, bad)


def check_segments(
    column: pa.Array, config: ActivationConfig, valid: np.ndarray
) -> pa.Array:
    """Marks rows whose segments the row path would refuse; returns the mapped segments.

    Returns:
        Per row, the mapped entries ``(namespace, segment, status, qualified)`` in input
        order (qualification times as text), typed :data:`MAPPED_TYPE`.
    """
    n = len(column)
    empty = pa.array([[]] * n, type=MAPPED_TYPE)
    if pa.types.is_null(column.type):
        return empty
    kind = column.type
    if not (pa.types.is_map(kind) and pa.types.is_map(kind.item_type)):
        valid[_valid(column)] = False
        return empty
    outer, rows = flatten_with_parents(column)
    namespaces, inner = outer.field(0), outer.field(1)
    entries, parents = flatten_with_parents(inner)
    entry_rows = rows[parents]
    seg_ids, values = entries.field(0), entries.field(1)
    status = _field(values, "status")
    qualified = _field(values, "lastQualificationTime")
    if status is None or not pa.types.is_string(status.type):
        valid[entry_rows] = False
        return empty
    bad = ~_valid(values) | ~pc.fill_null(
        pc.is_in(status, pa.array(sorted(STATUSES))), False
    ).to_numpy(zero_copy_only=False)
    if qualified is not None and not pa.types.is_null(qualified.type):
        refused = _invalid_values(qualified)
        if len(refused):
            bad |= pc.fill_null(pc.is_in(qualified, refused), False).to_numpy(
                zero_copy_only=False
            )
        if pa.types.is_string(qualified.type):
            qualified_text = qualified
        else:
            # Times of another type (epoch numbers, timestamps) go to the row path's
            # parsing: as text they would not say what the row path reads from them.
            bad |= _valid(qualified)
            qualified_text = pa.nulls(len(entries), pa.string())
    else:
        qualified_text = pa.nulls(len(entries), pa.string())
    _mark(valid, entry_rows, bad)
    entry_namespaces = namespaces.take(pa.array(parents, type=pa.int64()))
    if config.segments is None:
        mapped = np.ones(len(entries), dtype=bool)
    else:
        wanted = pa.array(sorted(f"{ns}\x1f{seg}" for ns, seg in config._mapped))
        joined = pc.binary_join_element_wise(entry_namespaces, seg_ids, "\x1f")
        mapped = pc.fill_null(pc.is_in(joined, wanted), False).to_numpy(zero_copy_only=False)
    chosen = pa.array(np.nonzero(mapped)[0], type=pa.int64())
    structs = pa.StructArray.from_arrays(
        [
            entry_namespaces.take(chosen),
            seg_ids.take(chosen),
            status.take(chosen),
            qualified_text.take(chosen),
        ],
        fields=list(MAPPED_TYPE.value_type),
    )
    counts = np.bincount(entry_rows[mapped], minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), structs, type=MAPPED_TYPE)


def check_deleted(column: pa.Array, valid: np.ndarray) -> pa.Array:
    """Marks rows whose ``_deleted`` is not a boolean; returns it with null as False."""
    if pa.types.is_boolean(column.type):
        return pc.fill_null(column, False)
    if not pa.types.is_null(column.type):
        valid[_valid(column)] = False
    return pa.array(np.zeros(len(column), dtype=bool))


def check_table(table: pa.Table, config: ActivationConfig) -> tuple[np.ndarray, pa.Table]:
    """Validates a file's rows as far as vectorised checks can prove them.

    Args:
        table: The file's rows (at least the :func:`used_columns` it has).
        config: The activation config.

    Returns:
        ``(surely_valid, projection)``: a mask of the rows the row path would accept
        (rows outside it may still be valid: the row path decides), and per row the
        columns compared between snapshots: ``identityMap``, ``mapped_segments``,
        ``deleted`` and the attribute roots.
    """
    n = table.num_rows
    valid = np.ones(n, dtype=bool)
    columns: dict[str, pa.Array] = {}
    names = set(table.column_names)
    if IDENTITY_MAP in names:
        identities = table.column(IDENTITY_MAP).combine_chunks()
        check_identities(identities, valid)
        columns[IDENTITY_MAP] = identities
    else:
        columns[IDENTITY_MAP] = pa.nulls(n)
    if SEGMENTS in names:
        columns["mapped_segments"] = check_segments(
            table.column(SEGMENTS).combine_chunks(), config, valid
        )
    else:
        columns["mapped_segments"] = pa.array([[]] * n, type=MAPPED_TYPE)
    if DELETED in names:
        columns["deleted"] = check_deleted(table.column(DELETED).combine_chunks(), valid)
    else:
        columns["deleted"] = pa.array(np.zeros(n, dtype=bool))
    for root in used_columns(config)[3:]:
        columns[root] = table.column(root).combine_chunks() if root in names else pa.nulls(n)
    return valid, pa.table(columns)


def identity_keys(column: pa.Array, rule: str) -> tuple[pa.Array, np.ndarray]:
    """Profile keys by the ``primary`` or namespace rule, without Python values.

    The row path's :func:`transforms.snapshots.profiles.resolve_profile_key`: for
    ``primary`` the first identity flagged primary (namespaces in sorted order, ids in
    list order) with a non-empty id, as ``namespace:id``; for a namespace rule the first
    non-empty id of that namespace.

    Returns:
        ``(keys, undecided)``: the key of each row (null: none), and the rows the row
        path must decide (an identity map of another shape, or a namespace twice).
    """
    n = len(column)
    undecided = np.zeros(n, dtype=bool)
    if pa.types.is_null(column.type):
        return pa.nulls(n, pa.string()), undecided
    kind = column.type
    if not (pa.types.is_map(kind) and pa.types.is_list(kind.item_type)):
        return pa.nulls(n, pa.string()), ~undecided
    entries, rows = flatten_with_parents(column)
    namespaces = entries.field(0)
    # A namespace twice in one map: fastavro keeps the last; leave it to the row path.
    order = np.lexsort((namespaces.to_numpy(zero_copy_only=False), rows))
    sorted_rows = rows[order]
    sorted_ns = namespaces.take(pa.array(order, type=pa.int64()))
    twice = np.zeros(len(order), dtype=bool)
    if len(order) > 1:
        twice[1:] = (sorted_rows[1:] == sorted_rows[:-1]) & pc.equal(
            sorted_ns.slice(1), sorted_ns.slice(0, len(order) - 1)
        ).to_numpy(zero_copy_only=False)
    undecided[sorted_rows[twice]] = True
    items, parents = flatten_with_parents(entries.field(1))
    ids = _field(items, "id")
    if ids is None or not pa.types.is_string(ids.type):
        return pa.nulls(n, pa.string()), ~np.zeros(n, dtype=bool)
    item_rows = rows[parents]
    usable = _valid(items) & pc.fill_null(pc.greater(pc.utf8_length(ids), 0), False).to_numpy(
        zero_copy_only=False
    )
    item_ns = namespaces.take(pa.array(parents, type=pa.int64()))
    if rule == "primary":
        primary = _field(items, "primary")
        if primary is None or not pa.types.is_boolean(primary.type):
            return pa.nulls(n, pa.string()), ~np.zeros(n, dtype=bool)
        usable &= pc.fill_null(primary, False).to_numpy(zero_copy_only=False)
    else:
        usable &= pc.fill_null(pc.equal(item_ns, rule), False).to_numpy(zero_copy_only=False)
    chosen = np.nonzero(usable)[0]
    keys = pa.nulls(n, pa.string())
    if len(chosen):
        chosen_ns = item_ns.take(pa.array(chosen, type=pa.int64())).to_numpy(zero_copy_only=False)
        # Rows ascending, then namespaces by name (primary), then the list order.
        first_order = np.lexsort((chosen, chosen_ns, item_rows[chosen]))
        picked = chosen[first_order]
        _, first = np.unique(item_rows[picked], return_index=True)
        winners = pa.array(picked[first], type=pa.int64())
        values = ids.take(winners)
        if rule == "primary":
            values = pc.binary_join_element_wise(item_ns.take(winners), values, ":")
        positions = item_rows[picked[first]]
        mask = np.zeros(n, dtype=bool)
        mask[positions] = True
        full = np.zeros(n, dtype=np.int64)
        full[positions] = np.arange(len(positions))
        keys = pc.if_else(pa.array(mask), values.take(pa.array(full, type=pa.int64())), keys)
    return keys, undecided
