"""One semantics: the columnar batch path gives exactly the row path's output.

Random histories (hypothesis) are written as Avro or Parquet snapshot files and run
through both paths' own DoFns, without a runner: the row path's read step
(``_ReadEncodeFn``) and replay (``BatchTransitionsFn``), and the columnar path's read
step (``ReadBucketsFn``) and bucket replay (``BucketTransitionsFn``). Transitions,
dead letters, carried states, report facts and the per-snapshot counts must be equal.
The histories repeat records from day to day (so rows are skipped), and hold
tombstones, gaps, duplicates, bad records (bad statuses and times in mapped and
unmapped segments, no key), baselines and carried states from a previous run.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.dead_letter_schema import validate_dead_letters
from tools.sample_data import AVRO_SCHEMA
from transforms.columnar.bucket_replay import BucketTransitionsFn, steady_rows
from transforms.columnar.read_batches import ReadBucketsFn
from transforms.config import parse_config
from transforms.report.facts import FACTS
from transforms.segments.codecs import ShuffleCodec, carry
from transforms.segments.guard import CountUnreadableFn, SnapshotCountsFn, check_bad_records
from transforms.segments.state import ProfileState
from transforms.segments.tags import DEAD, STATES
from transforms.segments.transition_fns import BatchTransitionsFn
from transforms.snapshots.read import DEAD_LETTER_TAG, SNAPSHOTS_TAG, _ReadEncodeFn

MAPPED = ["seg-a", "seg-b", "seg-c"]


def make_config(profile_key: str = "primary"):
    return parse_config(
        {
            "segments": [{"id": s, "name": s} for s in MAPPED],
            "profile_key": profile_key,
            "attributes": ["person.name.firstName"],
            "triggers": {"segments": True, "attributes": True, "identities": True},
        }
    )


CONFIG = make_config()
# The key rules: bulk (primary, a namespace) and the row path's own (a field).
KEY_RULES = ["primary", "ecid", "field:person.name.firstName"]
START = dt.date(2024, 3, 1)

# Mostly valid values (so that rows are skipped), sometimes bad ones.
statuses = st.sampled_from(["realized", "existing", "exited"] * 5 + ["bogus"])
times = st.sampled_from(
    [None, "2024-02-01T10:00:00Z", "2024-02-01T10:00:00Z", "2024-02-03T08:00:00Z",
     "2024-02-02T10:00:00+01:00", "1706781600000"] * 3
    + ["2024-02-30T10:00:00Z", "x"]
)
segment = st.tuples(st.sampled_from([*MAPPED, "unmapped-1", "unmapped-2"]), statuses, times)
record = st.fixed_dictionaries(
    {
        "segments": st.lists(segment, max_size=4, unique_by=lambda s: s[0]),
        "ecid": st.sampled_from(["", "e1", "e2", "ee2"]),
        "primary": st.sampled_from([True] * 6 + [False]),
        "first": st.sampled_from([None, "Ana", "Bo"]),
        "deleted": st.sampled_from([None, None, None, False, True]),
    }
)
# A profile's record per day: absent, or one of a few variants (so days repeat).
profile = st.tuples(
    st.lists(record, min_size=1, max_size=3),
    st.lists(st.integers(-1, 2), min_size=1, max_size=5),
)


def raw_record(index: int, variant: dict) -> dict:
    segments: dict[str, dict] = {}
    for seg_id, status, qualified in variant["segments"]:
        segments.setdefault("ups", {})[seg_id] = {
            "status": status,
            "lastQualificationTime": qualified,
        }
    identities = {"email": [{"id": f"p{index}@x", "primary": variant["primary"],
                             "authenticatedState": None}]}
    if variant["ecid"]:
        # Two ecids, the first possibly empty: the namespace rule takes the first usable.
        identities["ecid"] = [
            {"id": variant["ecid"][:-1], "primary": variant["primary"], "authenticatedState": None},
            {"id": variant["ecid"], "primary": None, "authenticatedState": None},
        ]
    person = None if variant["first"] is None else {"name": {"firstName": variant["first"],
                                                             "lastName": None}}
    return {
        "identityMap": identities,
        "segmentMembership": segments,
        "person": person,
        "personalEmail": None,
        "_deleted": variant["deleted"],
    }


def write_files(root: str, profiles, days: int, fmt: str, duplicate: bool) -> list[tuple]:
    """Snapshot files of the histories: ``(path, format, baseline)``; day 0 may be a
    baseline."""
    files = []
    for day in range(days):
        rows = []
        for index, (variants, plan) in enumerate(profiles):
            choice = plan[day % len(plan)]
            if choice >= 0:
                rows.append(raw_record(index, variants[choice % len(variants)]))
        folder = os.path.join(root, f"snapshot={START + dt.timedelta(days=day)}")
        os.makedirs(folder, exist_ok=True)
        parts = [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
        if duplicate and rows:
            parts.append(rows[:1])
        for part_no, part in enumerate(parts):
            path = os.path.join(folder, f"part-{part_no}.{fmt}")
            if fmt == "avro":
                with open(path, "wb") as handle:
                    fastavro.writer(handle, fastavro.parse_schema(AVRO_SCHEMA), part)
            else:
                pq.write_table(pa.Table.from_pylist(part, schema=_ARROW_SCHEMA), path)
            files.append((path, fmt, False))
    return files


_ARROW_SCHEMA = pa.schema(
    [
        ("identityMap", pa.map_(pa.string(), pa.list_(pa.struct(
            [("id", pa.string()), ("primary", pa.bool_()), ("authenticatedState", pa.string())]
        )))),
        ("segmentMembership", pa.map_(pa.string(), pa.map_(pa.string(), pa.struct(
            [("status", pa.string()), ("lastQualificationTime", pa.string())]
        )))),
        ("person", pa.struct([("name", pa.struct(
            [("firstName", pa.string()), ("lastName", pa.string())]
        ))])),
        ("personalEmail", pa.struct([("address", pa.string())])),
        ("_deleted", pa.bool_()),
    ]
)


def _split(outputs) -> dict[str, list]:
    out = collections.defaultdict(list)
    for item in outputs or ():
        tag = "main"
        if isinstance(item, TaggedOutput):
            tag, item = item.tag, item.value
        if isinstance(item, WindowedValue):
            item = item.value
        out[tag].append(item)
    return out


def _combine(fn, elements):
    acc = fn.create_accumulator()
    for element in elements:
        acc = fn.add_input(acc, element)
    return fn.extract_output(acc)


def run_path(columnar: bool, files, baseline_first: bool, initial: dict[str, ProfileState],
             config=CONFIG, full=True):
    """One path's outputs. ``full``: with a report and carried states; without, the
    columnar path skips quiet profiles (transforms/columnar/quiet_profiles.py)."""
    listed = [(p, f, baseline_first and "2024-03-01" in p) for p, f, _ in files]
    codec = ShuffleCodec(config, [p for p, _, _ in listed])
    read = ReadBucketsFn(config, codec, 3) if columnar else _ReadEncodeFn(config, None, codec)
    read.start_bundle()
    grouped = collections.defaultdict(list)
    letters, counts = [], []
    for element in listed:
        parts = _split(read.process(element))
        letters += parts[DEAD_LETTER_TAG]
        counts += parts[SNAPSHOTS_TAG]
        for key, value in parts["main"]:
            grouped[key].append(value)
    for key, state in initial.items():
        if columnar:
            from transforms.columnar.read_batches import _payload_table, to_ipc
            schema = read._schema()
            table = _payload_table(schema, [key], [carry(key, state)[1]], 0, "", False)
            from transforms.columnar.read_batches import bucket_of
            grouped[bucket_of(key, 3)].append(to_ipc(table))
        else:
            grouped[key].append(carry(key, state)[1])
    snapshots = _combine(SnapshotCountsFn(), counts)
    incomplete = check_bad_records(_combine(CountUnreadableFn(), letters), 1000)
    fn_class = BucketTransitionsFn if columnar else BatchTransitionsFn
    replay = fn_class(config, carry_states=full, report=full, codec=codec)
    replay.start_bundle()
    results = collections.defaultdict(list)
    for key in sorted(grouped):
        for name, values in _split(replay.process((key, grouped[key]), snapshots, True,
                                                 incomplete)).items():
            results[name] += values
    for name, values in _split(replay.finish_bundle()).items():
        results[name] += values
    validate_dead_letters(letters + results[DEAD])
    return {
        "transitions": sorted(json.dumps(t, sort_keys=True) for t in results["main"]),
        "dead": sorted(json.dumps(d, sort_keys=True) for d in letters + results[DEAD]),
        "states": sorted(repr(s) for s in results[STATES]),
        "facts": collections.Counter(
            {k: v for k, v in results[FACTS]} if results[FACTS] else {}
        ),
        "snapshots": snapshots,
        "counts": sorted(counts),
    }


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    profiles=st.lists(profile, min_size=1, max_size=6),
    days=st.integers(2, 5),
    fmt=st.sampled_from(["avro", "parquet"]),
    duplicate=st.booleans(),
    baseline_first=st.booleans(),
    carried=st.booleans(),
    rule=st.sampled_from(KEY_RULES),
    full=st.booleans(),
)
def test_columnar_path_equals_row_path(tmp_path_factory, profiles, days, fmt, duplicate,
                                       baseline_first, carried, rule, full):
    root = str(tmp_path_factory.mktemp("histories"))
    files = write_files(root, profiles, days, fmt, duplicate)
    initial = {}
    if carried:
        # A live profile carried in from a previous run, with a membership to exit.
        initial["email:p0@x"] = ProfileState(
            0, False, {"ups": {"seg-a": ["realized", 1]}}, {"email": ["p0@x"]}, {}
        )
    config = make_config(rule)
    rows = run_path(False, files, baseline_first, initial, config, full)
    columnar = run_path(True, files, baseline_first, initial, config, full)
    assert columnar == rows


def test_repeated_days_are_skipped(tmp_path):
    variant = {"segments": [("seg-a", "realized", "2024-02-01T10:00:00Z")], "ecid": "e1",
               "primary": True, "first": "Ana", "deleted": None}
    files = write_files(str(tmp_path), [([variant], [0])], 3, "avro", False)
    codec = ShuffleCodec(CONFIG, [p for p, _, _ in files])
    read = ReadBucketsFn(CONFIG, codec, 1)
    read.start_bundle()
    from transforms.columnar.bucket_replay import bucket_table
    values = [v for element in files for _, v in _split(read.process(element))["main"]]
    table = bucket_table(values)
    mask = steady_rows(table, ["identityMap", "mapped_segments", "deleted", "person"])
    assert mask.tolist() == [False, True, True]


def test_times_that_are_not_text_go_to_the_row_path():
    from transforms.columnar.projection import check_segments

    kind = pa.map_(pa.string(), pa.map_(pa.string(), pa.struct(
        [("status", pa.string()), ("lastQualificationTime", pa.float64())])))
    column = pa.array(
        [[("ups", [("seg-a", {"status": "realized", "lastQualificationTime": 1.7e12})])],
         [("ups", [("seg-a", {"status": "realized", "lastQualificationTime": None})])]],
        type=kind,
    )
    valid = np.ones(2, dtype=bool)
    check_segments(column, CONFIG, valid)
    assert valid.tolist() == [False, True]
