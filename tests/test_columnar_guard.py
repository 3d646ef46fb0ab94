"""The columnar mass-exit guard counts what the row path's guard counts.

``BucketGuardCountsFn`` decodes only the columns presence needs from each bucket
(key, snapshot, ``deleted``, payload); random histories (the equivalence test's:
tombstones, gaps, duplicates, bad records, baselines, carried states) through both
paths' read steps and guard DoFns must give equal per-snapshot counts.
"""

from __future__ import annotations

import collections

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_columnar_equivalence import KEY_RULES, _combine, _split, make_config, profile
from tests.test_columnar_equivalence import write_files as _write_files
from transforms.columnar.bucket_replay import BucketGuardCountsFn
from transforms.columnar.read_batches import ReadBucketsFn, _payload_table, bucket_of, to_ipc
from transforms.segments.codecs import ShuffleCodec, carry
from transforms.segments.guard import MassExitCountsFn, SnapshotCountsFn
from transforms.segments.state import ProfileState
from transforms.snapshots.read import SNAPSHOTS_TAG, _ReadEncodeFn

_BUCKETS = 3


def _counts(columnar: bool, files, initial: dict[str, ProfileState], config):
    codec = ShuffleCodec(config, [p for p, _, _ in files])
    read = ReadBucketsFn(config, codec, _BUCKETS) if columnar else _ReadEncodeFn(
        config, None, codec
    )
    read.start_bundle()
    grouped = collections.defaultdict(list)
    counts = []
    for element in files:
        parts = _split(read.process(element))
        counts += parts[SNAPSHOTS_TAG]
        for key, value in parts["main"]:
            grouped[key].append(value)
    for key, state in initial.items():
        if columnar:
            table = _payload_table(read._schema(), [key], [carry(key, state)[1]], 0, "", False)
            grouped[bucket_of(key, _BUCKETS)].append(to_ipc(table))
        else:
            grouped[key].append(carry(key, state)[1])
    snapshots = _combine(SnapshotCountsFn(), counts)
    guard = BucketGuardCountsFn() if columnar else MassExitCountsFn()
    guard.start_bundle()
    for key in sorted(grouped):
        for _ in guard.process((key, grouped[key]), snapshots) or ():
            pass
    return sorted(value.value for value in guard.finish_bundle())


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    profiles=st.lists(profile, min_size=1, max_size=6),
    days=st.integers(2, 4),
    fmt=st.sampled_from(["avro", "parquet"]),
    duplicate=st.booleans(),
    carried=st.booleans(),
    rule=st.sampled_from(KEY_RULES),
)
def test_guard_counts_equal_row_path(tmp_path_factory, profiles, days, fmt, duplicate, carried,
                                     rule):
    root = str(tmp_path_factory.mktemp("guard"))
    files = _write_files(root, profiles, days, fmt, duplicate)
    initial = {}
    if carried:
        initial["email:p0@x"] = ProfileState(
            0, False, {"ups": {"seg-a": ["realized", 1]}}, {"email": ["p0@x"]}, {}
        )
    config = make_config(rule)
    assert _counts(True, files, initial, config) == _counts(False, files, initial, config)
