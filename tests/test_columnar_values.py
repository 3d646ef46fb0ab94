"""The columnar path's Python values of Arrow rows equal ``to_pylist`` + the converter.

``transforms.columnar.python_values`` builds a row's dicts and lists from flat children;
the raw record handed to ``to_profile_record`` must be exactly the one the converter
makes of ``to_pylist()``. Random nested arrays (structs, lists, large lists, maps, nulls
at every level, slices) and random row blocks are compared value for value, types
included.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.columnar.bucket_replay import _Materialiser
from transforms.columnar.projection import IDENTITY_MAP, SEGMENTS, check_table
from transforms.columnar.python_values import RowValues, values_of
from transforms.config import parse_config
from transforms.snapshots.arrow_values import converter

_LEAVES = [
    (pa.string(), st.text(max_size=3)),
    (pa.int64(), st.integers(-(2**40), 2**40)),
    (pa.bool_(), st.booleans()),
    (pa.float64(), st.floats(allow_nan=False)),
]


@st.composite
def _typed(draw, depth: int = 0):
    """``(Arrow type, strategy of its Python values)``, nested up to three levels."""
    choice = draw(st.integers(0, 4 if depth < 3 else 0))
    if choice == 0:
        kind, values = draw(st.sampled_from(_LEAVES))
    elif choice in (1, 2):
        inner, values_inner = draw(_typed(depth + 1))
        kind = pa.list_(inner) if choice == 1 else pa.large_list(inner)
        values = st.lists(values_inner, max_size=3)
    elif choice == 3:
        fields = draw(st.lists(_typed(depth + 1), min_size=1, max_size=3))
        names = [f"f{i}" for i in range(len(fields))]
        kind = pa.struct([(name, f[0]) for name, f in zip(names, fields, strict=True)])
        values = st.fixed_dictionaries(
            {name: f[1] for name, f in zip(names, fields, strict=True)}
        )
    else:
        inner, values_inner = draw(_typed(depth + 1))
        kind = pa.map_(pa.string(), inner)
        values = st.lists(st.tuples(st.text(max_size=2), values_inner), max_size=3)
    return kind, st.one_of(st.none(), values)


def _expected(array: pa.Array) -> list:
    convert = converter(array.type)
    return [convert(v) for v in array.to_pylist()]


def _same(left, right) -> bool:
    """Equal, with the same types all the way down (True is not 1)."""
    return repr(left) == repr(right) and left == right


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_values_equal_to_pylist_and_converter(data):
    kind, values = data.draw(_typed())
    rows = data.draw(st.lists(values, max_size=8))
    array = pa.array(rows, type=kind)
    start = data.draw(st.integers(0, len(array)))
    array = array.slice(start, data.draw(st.integers(0, len(array) - start)))
    expected = _expected(array)
    low = data.draw(st.integers(0, len(array)))
    high = data.draw(st.integers(low, len(array)))
    assert _same(values_of(array).values(low, high), expected[low:high])
    RowValues.BLOCK = data.draw(st.integers(1, 4))
    try:
        by_row = RowValues(array)
        order = data.draw(st.permutations(range(len(array))))
        assert _same([by_row[i] for i in order], [expected[i] for i in order])
    finally:
        RowValues.BLOCK = 256


def test_chunked_and_null_columns():
    chunked = pa.chunked_array([pa.array([{"a": 1}]), pa.array([None, {"a": 2}])])
    assert values_of(chunked).values(0, 3) == [{"a": 1}, None, {"a": 2}]
    assert values_of(pa.nulls(3)).values(0, 3) == [None, None, None]


def test_raw_record_is_the_converters():
    """The materialiser's raw record: the projection's values as the converter gives them."""
    config = parse_config(
        {"segments": [{"id": "s1", "name": "s1"}], "attributes": ["person.name.firstName"]}
    )
    membership = pa.map_(
        pa.string(),
        pa.map_(
            pa.string(),
            pa.struct([("status", pa.string()), ("lastQualificationTime", pa.string())]),
        ),
    )
    identity = pa.map_(
        pa.string(), pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_())]))
    )
    table = pa.table(
        {
            IDENTITY_MAP: pa.array(
                [[("email", [{"id": "a", "primary": True}])], [("ecid", [])], None],
                type=identity,
            ),
            SEGMENTS: pa.array(
                [
                    [("ups", [("s1", {"status": "realized", "lastQualificationTime": None})])],
                    [("ups", [("s2", {"status": "exited", "lastQualificationTime": None})])],
                    None,
                ],
                type=membership,
            ),
            "_deleted": pa.array([None, True, False]),
            "person": pa.array([{"name": {"firstName": "x"}}, None, {"name": None}]),
        }
    )
    _, projection = check_table(table, config)
    rows = np.array([0, 1, 2])
    materialiser = _Materialiser(projection, rows, config)
    assert materialiser.raw(0) == {
        IDENTITY_MAP: {"email": [{"id": "a", "primary": True}]},
        SEGMENTS: {"ups": {"s1": {"status": "realized", "lastQualificationTime": None}}},
        "_deleted": False,
        "person": {"name": {"firstName": "x"}},
    }
    assert materialiser.raw(1) == {
        IDENTITY_MAP: {"ecid": []},
        SEGMENTS: {},
        "_deleted": True,
        "person": None,
    }
    assert materialiser.raw(2) == {
        IDENTITY_MAP: None,
        SEGMENTS: {},
        "_deleted": False,
        "person": {"name": None},
    }
