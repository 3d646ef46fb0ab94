"""ReadSnapshots: every input format, snapshot time resolution, profile keys, dead letters."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import tempfile

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.runners import OfflineDirectRunner
from tests.support.dead_letter_schema import validate_dead_letters
from tools.sample_data import AVRO_SCHEMA
from transforms.config import parse_config
from transforms.snapshots.profiles import RecordError, resolve_profile_key, to_profile_record
from transforms.snapshots.read import InputError, ReadSnapshots, match_snapshot_files
from transforms.snapshots.snapshot_time import SnapshotTimeError, require_snapshot_time

SEG = "7841ba61-23c1-4bb3-a495-00d695fe1e93"
CONFIG = parse_config(
    {"segments": [{"id": SEG}], "attributes": ["person.name.firstName"], "profile_key": "primary"}
)
JAN31 = 1706659200000  # 2024-01-31T00:00:00Z


def profile(email: str, status: str = "realized", when="2020-03-03T21:24:39Z", **extra) -> dict:
    record = {
        "identityMap": {"email": [{"id": email, "primary": True}], "ecid": [{"id": "e-" + email}]},
        "segmentMembership": {"ups": {SEG: {"status": status, "lastQualificationTime": when}}},
        "person": {"name": {"firstName": "Zoë"}},
    }
    record.update(extra)
    return record


def read(inputs, config=CONFIG, field=None, baseline=()):
    """Runs ReadSnapshots; returns (records, dead letters) as lists.

    Every dead letter is checked against schemas/dead_letter.schema.json.
    """
    out = tempfile.NamedTemporaryFile(suffix=".pickle", delete=False).name

    class Collect(beam.DoFn):
        def __init__(self, name):
            self.name = name

        def process(self, element):
            yield self.name, element

    with beam.Pipeline(runner=OfflineDirectRunner()) as pipeline:
        result = pipeline | ReadSnapshots(inputs, config, baseline, field)
        both = (
            result.records | "TagRecords" >> beam.ParDo(Collect("records")),
            result.dead_letters | "TagDead" >> beam.ParDo(Collect("dead")),
        ) | beam.Flatten()
        collected = both | beam.combiners.ToList()
        # DoFns are pickled, so the result travels through a file, not a closure.
        collected | beam.Map(_dump, out)
    with open(out, "rb") as handle:
        collected = pickle.load(handle)
    os.unlink(out)
    records = [e for name, e in collected if name == "records"]
    dead = validate_dead_letters(e for name, e in collected if name == "dead")
    return records, dead


def _dump(items, path):
    with open(path, "wb") as handle:
        pickle.dump(items, handle)


def write_jsonl(path, records, opener=open):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with opener(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(record if isinstance(record, str) else json.dumps(record))
            handle.write("\n")


@pytest.mark.parametrize("name", ["p.json", "p.jsonl", "p.jsonl.gz", "p.json.gz"])
def test_reads_json_lines_plain_and_gzip(tmp_path, name):
    path = str(tmp_path / "snapshot=2024-01-31" / name)
    write_jsonl(
        path, [profile("a@x.com"), profile("b@x.com")], gzip.open if name.endswith(".gz") else open
    )
    records, dead = read([path])
    assert dead == []
    assert sorted(key for key, _ in records) == ["email:a@x.com", "email:b@x.com"]
    key, record = sorted(records)[0]
    assert record == {
        "snapshot_ms": JAN31,
        "baseline": False,
        "deleted": False,
        "segments": {"ups": {SEG: ["realized", 1583270679000]}},
        "identities": {"email": ["a@x.com"], "ecid": ["e-a@x.com"]},
        "attributes": {"person.name.firstName": "Zoë"},
        "file": path,
    }


def test_reads_avro(tmp_path):
    path = tmp_path / "profiles_20240131.avro"
    avro_record = profile("a@x.com")
    avro_record["identityMap"]["email"][0]["authenticatedState"] = None
    avro_record["identityMap"]["ecid"][0].update(primary=None, authenticatedState=None)
    avro_record["personalEmail"] = None
    avro_record["person"]["name"]["lastName"] = None
    with open(path, "wb") as handle:
        fastavro.writer(handle, fastavro.parse_schema(AVRO_SCHEMA), [avro_record])
    records, dead = read([str(path)])
    assert dead == []
    assert [(k, r["snapshot_ms"], r["segments"]) for k, r in records] == [
        ("email:a@x.com", JAN31, {"ups": {SEG: ["realized", 1583270679000]}})
    ]


def test_reads_parquet_maps_as_json_shape(tmp_path):
    identity = pa.struct([("id", pa.string()), ("primary", pa.bool_())])
    membership = pa.struct([("status", pa.string()), ("lastQualificationTime", pa.string())])
    schema = pa.schema(
        [
            ("identityMap", pa.map_(pa.string(), pa.list_(identity))),
            ("segmentMembership", pa.map_(pa.string(), pa.map_(pa.string(), membership))),
        ]
    )
    table = pa.Table.from_pylist(
        [
            {
                "identityMap": [("email", [{"id": "p@x.com", "primary": True}])],
                "segmentMembership": [
                    (
                        "ups",
                        [(SEG, {"status": "existing", "lastQualificationTime": "1583270679000"})],
                    )
                ],
            }
        ],
        schema=schema,
    )
    path = tmp_path / "snapshot=2024-01-31" / "part-0.parquet"
    path.parent.mkdir()
    pq.write_table(table, path)
    records, dead = read([str(path)])
    assert dead == []
    assert [(k, r["segments"]) for k, r in records] == [
        ("email:p@x.com", {"ups": {SEG: ["existing", 1583270679000]}})
    ]


def test_malformed_records_go_to_dead_letter_and_good_ones_survive(tmp_path):
    path = str(tmp_path / "snapshot=2024-01-31" / "part.jsonl")
    os.makedirs(os.path.dirname(path))
    lines = [
        json.dumps(profile("good@x.com")).encode(),
        b"{not json",
        b'{"identityMap": {"email": [{"id": "caf\xe9", "primary": true}]}}',  # not UTF-8
        json.dumps([1, 2]).encode(),
        json.dumps({"identityMap": {"ecid": [{"id": "1"}]}}).encode(),  # no primary
        json.dumps(profile("s@x.com", status="qualified")).encode(),
        json.dumps(profile("t@x.com", when="yesterday")).encode(),
        json.dumps({"identityMap": {"email": {"id": "x"}}}).encode(),  # map, not list
        json.dumps(profile("d@x.com", _deleted="yes")).encode(),
    ]
    with open(path, "wb") as handle:
        handle.write(b"\n".join(lines) + b"\n")
    records, dead = read([path])
    assert [k for k, r in records if not r.get("keep")] == ["email:good@x.com"]
    # A bad record that names its profile proves the profile is in the snapshot: it
    # becomes a keep record (the profile keeps its state), never an absence.
    kept = sorted((k, r["snapshot_ms"]) for k, r in records if r.get("keep"))
    assert kept == [(f"email:{n}@x.com", 1706659200000) for n in ("d", "s", "t")]
    assert sorted(d["raw"] for d in dead if d.get("profile_state") == "kept") == sorted(
        lines[i].decode() for i in (5, 6, 8)
    )
    assert len(dead) == len(lines) - 1
    assert all(d["file"] == path and d["stage"] == "read" and d["raw"] for d in dead)
    # The reason is a stable code; the error, the message saying what is wrong.
    by_raw = {d["raw"]: (d["reason"], d["error"]) for d in dead}
    expected = [
        ("{not json", "invalid_json", "not valid JSON"),
        (lines[2].decode("utf-8", "replace"), "invalid_utf8", "not valid UTF-8"),
        ("[1, 2]", "invalid_record", "not an object"),
        (lines[4].decode(), "no_profile_key", "no identity is flagged primary"),
        (lines[5].decode(), "invalid_record", "unknown status 'qualified'"),
        (lines[6].decode(), "invalid_record", "lastQualificationTime"),
        (lines[7].decode(), "invalid_record", "identityMap.email is not a list"),
        (lines[8].decode(), "invalid_record", "_deleted is not a boolean"),
    ]
    for raw, reason, fragment in expected:
        assert by_raw[raw][0] == reason, (raw, by_raw[raw])
        assert fragment in by_raw[raw][1], (raw, by_raw[raw])


def test_snapshot_time_field_takes_precedence_and_bad_values_dead_letter(tmp_path):
    path = str(tmp_path / "snapshot=2024-01-31" / "part.jsonl")
    write_jsonl(
        path,
        [
            profile("a@x.com", exportedAt="2024-02-01T06:00:00+02:00"),
            profile("b@x.com"),  # no field: falls back to the path
            profile("c@x.com", exportedAt="soon"),
        ],
    )
    records, dead = read([path], field="exportedAt")
    times = {k: r["snapshot_ms"] for k, r in records}
    assert times == {"email:a@x.com": 1706760000000, "email:b@x.com": JAN31}
    assert [(d["reason"], d["error"]) for d in dead] == [
        ("no_snapshot_time", "snapshot time field 'exportedAt': not a timestamp: 'soon'")
    ]


def test_field_without_value_in_undated_file_is_a_dead_letter(tmp_path):
    path = str(tmp_path / "part.jsonl")
    write_jsonl(path, [profile("a@x.com")])
    records, dead = read([path], field="exportedAt")
    assert records == []
    assert dead[0]["reason"] == "no_snapshot_time"
    assert "no snapshot time" in dead[0]["error"]


def test_baseline_records_are_flagged(tmp_path):
    today = str(tmp_path / "snapshot=2024-01-31" / "part.jsonl")
    yesterday = str(tmp_path / "snapshot=2024-01-30" / "part.jsonl")
    write_jsonl(today, [profile("a@x.com")])
    write_jsonl(yesterday, [profile("a@x.com")])
    records, _ = read([today], baseline=[yesterday])
    assert sorted((r["snapshot_ms"], r["baseline"]) for _, r in records) == [
        (JAN31 - 86400000, True),
        (JAN31, False),
    ]


@pytest.mark.parametrize(
    "path, expected",
    [
        ("s3://b/snapshot=2024-01-31/part-0003.avro", JAN31),
        ("x/snapshot=2024-01-31T06:00:00Z/part.avro", JAN31 + 6 * 3600000),
        ("x/snapshot=2024-01-31T06:00:00+01:00/part.avro", JAN31 + 5 * 3600000),
        ("x/profiles-2024-01-31.jsonl", JAN31),
        ("x/profiles_20240131.avro", JAN31),
        ("x/profiles_20240131T060000Z.avro", JAN31 + 6 * 3600000),
        ("x/profiles_2024-01-31T06:00:00Z.json", JAN31 + 6 * 3600000),
        # the snapshot= segment wins over a file-name date
        ("x/snapshot=2024-01-31/export-2023-12-01.avro", JAN31),
    ],
)
def test_snapshot_time_from_path(path, expected):
    assert require_snapshot_time(path) == expected


@pytest.mark.parametrize("path", ["x/part-0001.avro", "x/2024-13-45.avro", "x/v20240131999.avro"])
def test_unresolvable_snapshot_time_names_the_file(path):
    with pytest.raises(SnapshotTimeError, match=path.replace(".", r"\.")):
        require_snapshot_time(path)


def test_malformed_snapshot_segment_is_an_error():
    with pytest.raises(SnapshotTimeError, match="snapshot=last-week"):
        require_snapshot_time("x/snapshot=last-week/part.avro")


def test_match_errors_name_pattern_and_file(tmp_path):
    with pytest.raises(InputError, match="no file matches"):
        match_snapshot_files([str(tmp_path / "*.avro")], False, None)
    undated = tmp_path / "part-1.jsonl"
    undated.write_text("{}\n")
    with pytest.raises(SnapshotTimeError, match="part-1.jsonl"):
        match_snapshot_files([str(undated)], False, None)
    odd = tmp_path / "snapshot=2024-01-31"
    odd.mkdir()
    (odd / "part.csv").write_text("a,b\n")
    (odd / "_SUCCESS").write_text("")
    with pytest.raises(InputError, match=r"part\.csv: unknown file format"):
        match_snapshot_files([str(odd / "*")], False, None)


def test_markers_are_skipped(tmp_path):
    folder = tmp_path / "snapshot=2024-01-31"
    folder.mkdir()
    (folder / "_SUCCESS").write_text("")
    (folder / "p.jsonl").write_text("{}\n")
    assert [f.path for f in match_snapshot_files([str(folder / "*")], False, None)] == [
        str(folder / "p.jsonl")
    ]


@pytest.mark.parametrize(
    "rule, record, expected",
    [
        (
            "primary",
            {"identityMap": {"ecid": [{"id": "1"}], "email": [{"id": "e", "primary": True}]}},
            "email:e",
        ),
        ("ecid", {"identityMap": {"ecid": [{"id": "1"}, {"id": "2"}]}}, "1"),
        ("field:crm.id", {"crm": {"id": "C-9"}}, "C-9"),
        ("field:crm.id", {"crm": {"id": 42}}, "42"),
    ],
)
def test_profile_key_rules(rule, record, expected):
    assert resolve_profile_key(record, rule) == expected


@pytest.mark.parametrize(
    "rule, record, message",
    [
        ("primary", {"identityMap": {"ecid": [{"id": "1"}]}}, "flagged primary"),
        ("primary", {}, "flagged primary"),
        ("ecid", {"identityMap": {"email": [{"id": "1"}]}}, "namespace 'ecid'"),
        ("field:crm.id", {"crm": {}}, "crm.id"),
        ("field:crm.id", {"crm": {"id": ""}}, "crm.id"),
        ("field:crm.id", {"crm": {"id": {"nested": 1}}}, "crm.id"),
    ],
)
def test_unresolvable_profile_keys(rule, record, message):
    with pytest.raises(RecordError, match=message) as caught:
        resolve_profile_key(record, rule)
    assert caught.value.code == "no_profile_key"


def test_only_mapped_segments_are_kept_but_all_are_validated():
    record = profile("a@x.com")
    record["segmentMembership"]["ups"]["other"] = {"status": "realized"}
    _, internal = to_profile_record(record, CONFIG, JAN31, "f")
    assert internal["segments"] == {"ups": {SEG: ["realized", 1583270679000]}}
    record["segmentMembership"]["ups"]["other"] = {"status": "gone"}
    with pytest.raises(RecordError, match="unknown status 'gone'"):
        to_profile_record(record, CONFIG, JAN31, "f")
