"""The input record JSON Schema (schemas/profile_record.schema.json) agrees with the reader.

Every record of the sample data generator (JSON Lines and Avro) validates; the schema
refuses what the reader (``transforms.snapshots.profiles.to_profile_record``) refuses,
for the same field; the documented examples validate and match the sample Avro schema.
"""

from __future__ import annotations

import copy
import glob
import io
import json
import os
import re
from pathlib import Path

import fastavro
import jsonschema
import pytest

from tools.sample_data import AVRO_SCHEMA, write_snapshots
from transforms.config import parse_config
from transforms.events.timestamps import TimestampError, parse_timestamp
from transforms.snapshots.profiles import RecordError, to_profile_record

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "schemas" / "profile_record.schema.json"
SEG = "7841ba61-23c1-4bb3-a495-00d695fe1e93"
PRIMARY = parse_config({"segments": "*"})  # profile_key "primary", the default
BY_FIELD = parse_config({"segments": "*", "profile_key": "field:crm.id"})

VALID = {
    "identityMap": {
        "email": [{"id": "John.Doe@Example.com", "primary": True}],
        "ecid": [{"id": "14575006536349286404619648085736425115"}],
    },
    "segmentMembership": {
        "ups": {SEG: {"status": "realized", "lastQualificationTime": "2020-03-03T21:24:39Z"}}
    },
    "person": {"name": {"firstName": "John"}},
    "_deleted": False,
}
MEMBERSHIP = ("segmentMembership", "ups", SEG)


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validator(schema: dict | None = None) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema or load_schema())


def general_validator() -> jsonschema.Draft202012Validator:
    """The schema's ``#/$defs/record``: the shape without the default profile key rule."""
    schema = load_schema()
    schema["allOf"] = [{"$ref": "#/$defs/record"}]
    return validator(schema)


def schema_errors(record, check=None) -> list[jsonschema.ValidationError]:
    return list((check or validator()).iter_errors(record))


def reader_error(record, config=PRIMARY) -> str | None:
    """The reader's dead-letter reason for a record, or None when it accepts it."""
    try:
        to_profile_record(record, config, 0, "snapshot=2024-01-31/part.jsonl")
    except RecordError as err:
        return str(err)
    return None


def changed(path: tuple, value=None, delete=False) -> dict:
    record = copy.deepcopy(VALID)
    node = record
    for part in path[:-1]:
        node = node[part]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return record


# ------------------------------------------------------------------- the schema


def test_schema_is_draft_2020_12_and_valid():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    # the config dependence is stated where users look first
    for word in ("profile_key", "attributes", "--snapshot_time_field", "#/$defs/record"):
        assert word in schema["description"], word


# ----------------------------------------------------------- the sample data


@pytest.fixture(scope="module")
def sample_records(tmp_path_factory) -> dict[str, list[dict]]:
    """Every record the generator writes, per format, decoded like the reader does."""
    records: dict[str, list[dict]] = {}
    for fmt in ("jsonl", "avro"):
        out = str(tmp_path_factory.mktemp(f"sample-{fmt}"))
        # Enough profiles and days for tombstones, duplicates (with phones), absences
        # and explicit exits to appear.
        write_snapshots(out, profiles=300, snapshots=4, fmt=fmt)
        decoded = []
        for path in sorted(glob.glob(os.path.join(out, "snapshot=*", f"part-*.{fmt}"))):
            if fmt == "avro":
                with open(path, "rb") as handle:
                    decoded.extend(fastavro.reader(handle))
            else:
                with open(path, encoding="utf-8") as handle:
                    decoded.extend(json.loads(line) for line in handle if line.strip())
        records[fmt] = decoded
    return records


@pytest.mark.parametrize("fmt", ["jsonl", "avro"])
def test_every_sample_record_validates(sample_records, fmt):
    records = sample_records[fmt]
    assert len(records) > 1000
    check = validator()
    problems = [
        f"{index}: {error.json_path}: {error.message}"
        for index, record in enumerate(records)
        for error in check.iter_errors(record)
    ]
    assert problems == []
    # ... and the reader takes every one of them too
    assert [reason_ for r in records if (reason_ := reader_error(r))] == []


def test_the_sample_covers_every_shape_the_schema_allows(sample_records):
    records = sample_records["jsonl"] + sample_records["avro"]
    statuses = {
        entry["status"]
        for record in records
        for by_id in record["segmentMembership"].values()
        for entry in by_id.values()
    }
    assert statuses == {"realized", "existing", "exited"}
    assert {record["_deleted"] for record in records} == {True, None}
    assert any("phone" in record["identityMap"] for record in records)
    assert any(record["segmentMembership"] == {} for record in records)


# -------------------------------------------- the schema refuses what the reader refuses


# (record, dead-letter reason fragment, path of the schema error): the same field.
SAME_REASON = [
    pytest.param(
        changed((*MEMBERSHIP, "status"), "member"),
        "unknown status 'member'",
        (*MEMBERSHIP, "status"),
        id="bad-status",
    ),
    pytest.param(
        changed((*MEMBERSHIP, "lastQualificationTime"), "yesterday"),
        "lastQualificationTime: not a timestamp",
        (*MEMBERSHIP, "lastQualificationTime"),
        id="bad-qualification-time",
    ),
    pytest.param(
        changed(("identityMap", "ecid", 0), {"ID": "1"}),
        "identityMap.ecid has an entry without a string id",
        ("identityMap", "ecid", 0),
        id="identity-without-id",
    ),
    pytest.param(
        changed(("_deleted",), "yes"),
        "_deleted is not a boolean",
        ("_deleted",),
        id="bad-tombstone-flag",
    ),
    pytest.param(
        changed(("identityMap",), delete=True),
        "no profile key: no identity is flagged primary",
        (),
        id="missing-identity-map",
    ),
    pytest.param(
        changed(("identityMap", "email", 0, "primary"), "true"),
        "no profile key: no identity is flagged primary",
        ("identityMap",),
        id="primary-not-boolean-true",
    ),
]


@pytest.mark.parametrize(("record", "reason", "where"), SAME_REASON)
def test_reader_dead_letters_are_schema_errors_at_the_same_field(record, reason, where):
    dead_letter = reader_error(record)
    assert dead_letter is not None and reason in dead_letter, dead_letter
    errors = schema_errors(record)
    assert errors, "the schema accepts a record the reader dead-letters"
    # the deepest failing location of the schema is the field the reader names
    leaves = [leaf for error in errors for leaf in _leaves(error)]
    deepest = max(leaves, key=lambda leaf: len(leaf.absolute_path))
    assert tuple(deepest.absolute_path) == where, [leaf.json_path for leaf in leaves]


def _leaves(error: jsonschema.ValidationError):
    if not error.context:
        yield error
    for sub in error.context:
        yield from _leaves(sub)


# Both verdicts on many more shapes: accepted by both, or refused by both.
AGREEMENT = [
    VALID,
    {"identityMap": {"e": [{"id": "x", "primary": True}]}},  # nothing else is needed
    changed(("segmentMembership",), None),
    changed(("segmentMembership",), {}),
    changed(("segmentMembership", "ups"), None),
    changed(("segmentMembership", "ups"), {}),
    changed((*MEMBERSHIP, "lastQualificationTime"), None),
    changed((*MEMBERSHIP, "lastQualificationTime"), delete=True),
    changed((*MEMBERSHIP, "extra"), 1),  # other keys of a membership are ignored
    changed((*MEMBERSHIP, "status"), "exited"),
    changed((*MEMBERSHIP, "status"), "existing"),
    changed((*MEMBERSHIP, "status"), "Realized"),
    changed((*MEMBERSHIP, "status"), None),
    changed((*MEMBERSHIP, "status"), delete=True),
    changed(MEMBERSHIP, "realized"),
    changed(MEMBERSHIP, None),
    changed(("segmentMembership", "ups"), [SEG]),
    changed(("segmentMembership",), []),
    changed(("_deleted",), True),
    changed(("_deleted",), None),
    changed(("_deleted",), delete=True),
    changed(("_deleted",), 1),
    changed(("_deleted",), "false"),
    changed(("identityMap", "ecid"), None),
    changed(("identityMap", "ecid"), []),
    changed(("identityMap", "ecid"), {"id": "1"}),
    changed(("identityMap", "ecid", 0), "1457"),
    changed(("identityMap", "ecid", 0, "id"), 1457),
    changed(("identityMap", "ecid", 0, "id"), ""),  # accepted: not the key here
    changed(("identityMap", "ecid", 0, "authenticatedState"), "ambiguous"),
    changed(("identityMap", "email", 0, "id"), ""),  # the primary id is empty: no key
    changed(("identityMap", "email", 0, "primary"), False),
    changed(("identityMap", "email", 0, "primary"), 1),
    changed(("identityMap", "email"), [{"id": "a"}, {"id": "b", "primary": True}]),
    changed(("identityMap",), None),
    changed(("identityMap",), {}),
    changed(("identityMap",), [{"id": "x", "primary": True}]),
    changed(("person",), None),  # attributes: any JSON
    changed(("person",), [1, "two", None]),
    [VALID],
    "{}",
    None,
]


@pytest.mark.parametrize("record", AGREEMENT, ids=range(len(AGREEMENT)))
def test_schema_and_reader_agree(record):
    accepted_by_reader = _reader_accepts(record)
    assert (schema_errors(record) == []) == accepted_by_reader, (
        reader_error(record) if isinstance(record, dict) else "not an object"
    )


def _reader_accepts(record, config=PRIMARY) -> bool:
    try:
        to_profile_record(record, config, 0, "part.jsonl")
    except RecordError:
        return False
    return True


def test_other_key_rules_use_the_general_shape():
    # profile_key "field:crm.id": no identityMap at all is fine for the reader
    record = {"crm": {"id": "C-1"}, "segmentMembership": VALID["segmentMembership"]}
    assert _reader_accepts(record, BY_FIELD)
    assert schema_errors(record, general_validator()) == []
    assert schema_errors(record) != []  # the root checks the default rule
    # the general shape still refuses what no key rule makes valid
    bad = dict(record, segmentMembership={"ups": {SEG: {"status": "member"}}})
    assert not _reader_accepts(bad, BY_FIELD)
    assert schema_errors(bad, general_validator()) != []


# -------------------------------------------------------------------- timestamps


TIMESTAMPS = [
    "2020-03-03T21:24:39Z",
    "2020-03-03T21:24:39z",
    "2020-03-03T21:24:39+0000",
    "2020-03-03T21:24:39+00:00",
    "2020-03-03T21:24:39-05:30",
    "2020-03-03T21:24:39+05",
    "2020-03-03T21:24:39.123456789Z",
    "2020-03-03T21:24:39,5Z",
    "2020-03-03 21:24:39",
    "2020-03-03T21:24",
    "2020-03-03",
    " 2020-03-03T21:24:39Z\n",
    "0001-01-01",
    "1583270679000",
    "0",
    "0001583270679000",
    "7258118400000",
    "7258118400001",
    "9999999999999",
    "72581184000000",
    1583270679000,
    1583270679000.0,
    0,
    7258118400000,
    7258118400001,
    -1,
    1.5,
    True,
    "2020-13-03T21:24:39Z",
    "2020-03-32",
    "2020-03-03T24:00:00Z",
    "2020-03-03T21:60:00Z",
    "2020-03-03T21:24:60Z",
    "2020-03-03T21:24:39+24:00",
    "2020-03-03T21:24:39+05:60",
    "2020-03-03T21:24:39.Z",
    "2020-03-03T21:24:39.1234567890Z",
    "2020-03-03T21",
    "2020-3-3",
    "20200303",  # digits: taken as epoch ms 20,200,303 (1970), like the reader
    "0000-01-01",
    "03/03/2020",
    "yesterday",
    "",
    "-1583270679000",
    "+1583270679000",
    [],
    {},
]


@pytest.mark.parametrize("value", TIMESTAMPS, ids=[repr(v) for v in TIMESTAMPS])
def test_timestamp_definition_matches_the_parser(value):
    try:
        parse_timestamp(value)
        parsed = True
    except TimestampError:
        parsed = False
    record = changed((*MEMBERSHIP, "lastQualificationTime"), value)
    assert (schema_errors(record) == []) == parsed


# ------------------------------------------------------------------ the documentation


def _json_blocks(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", text, re.S)]


def test_documented_records_validate_and_match_the_sample_avro_schema():
    readme = [b for b in _json_blocks(ROOT / "README.md") if "eventId" not in b]
    page = _json_blocks(ROOT / "docs" / "input.md")
    avro = [b for b in page if b.get("type") == "record"]
    records = readme + [b for b in page if b.get("type") != "record"]
    assert len(readme) == 1 and len(records) == 2 and avro == [AVRO_SCHEMA]
    assert readme[0] == records[1], "README and docs/input.md show different records"
    parsed = fastavro.parse_schema(AVRO_SCHEMA)
    for record in records:
        assert schema_errors(record) == []
        assert reader_error(record) is None
        # written with the documented Avro schema, it reads back unchanged
        buffer = io.BytesIO()
        fastavro.writer(buffer, parsed, [record])
        buffer.seek(0)
        assert list(fastavro.reader(buffer)) == [record]


def test_docs_link_the_schema():
    for path in (ROOT / "README.md", ROOT / "docs" / "input.md"):
        assert "schemas/profile_record.schema.json" in path.read_text(encoding="utf-8")
