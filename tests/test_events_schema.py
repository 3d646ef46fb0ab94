"""The shipped event JSON Schema: valid events pass, malformed ones are rejected."""

from __future__ import annotations

import copy
import hashlib
import json

import jsonschema
import pytest

from tests.support.event_schema import SCHEMA_PATH, load_schema, schema_errors, validate_event

VALID = {
    "eventId": hashlib.sha256(b"x").hexdigest(),
    "identityMap": {
        "ecid": [{"id": "14575006536349286404619648085736425115"}],
        "email_lc_sha256": [{"id": hashlib.sha256(b"john.doe@example.com").hexdigest()}],
    },
    "person": {"name": {"firstName": "John"}},
    "segmentMembership": {
        "ups": {
            "7841ba61-23c1-4bb3-a495-00d695fe1e93": {
                "createdAt": 1648553325000,
                "lastQualificationTime": "2020-03-03T21:24:39Z",
                "mappingCreatedAt": 1649856570000,
                "mappingUpdatedAt": 1649856570000,
                "name": "High propensity to convert",
                "status": "exited",
                "updatedAt": 1648553330000,
            }
        }
    },
}
SEGMENT = ("segmentMembership", "ups", "7841ba61-23c1-4bb3-a495-00d695fe1e93")


def _set(event: dict, path: tuple, value) -> dict:
    event = copy.deepcopy(event)
    node = event
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return event


def _without(event: dict, path: tuple) -> dict:
    event = copy.deepcopy(event)
    node = event
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return event


def test_schema_is_draft_2020_12_and_valid():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert SCHEMA_PATH.name == "segment_event.schema.json"


@pytest.mark.parametrize(
    "event",
    [
        VALID,
        _without(VALID, ("eventId",)),
        {"identityMap": {}, "segmentMembership": {}},
        _set(VALID, (*SEGMENT, "status"), "realized"),
        _set(VALID, (*SEGMENT, "status"), "existing"),
        _set(VALID, (*SEGMENT, "lastQualificationTime"), "2024-02-29T23:59:59Z"),
        _without(_without(VALID, (*SEGMENT, "name")), (*SEGMENT, "createdAt")),
    ],
)
def test_valid_events_pass(event):
    assert schema_errors(event) == []


@pytest.mark.parametrize(
    ("event", "why"),
    [
        (_set(VALID, (*SEGMENT, "status"), "member"), "status outside the emitted ones"),
        (_set(VALID, (*SEGMENT, "status"), "Realized"), "status is case-sensitive"),
        (_without(VALID, (*SEGMENT, "status")), "status missing"),
        (_without(VALID, (*SEGMENT, "lastQualificationTime")), "time missing"),
        (_set(VALID, (*SEGMENT, "lastQualificationTime"), "2020-03-03T21:24:39+00:00"), "offset"),
        (_set(VALID, (*SEGMENT, "lastQualificationTime"), "2020-03-03T21:24:39.000Z"), "millis"),
        (_set(VALID, (*SEGMENT, "lastQualificationTime"), "2020-03-03 21:24:39Z"), "space"),
        (_set(VALID, (*SEGMENT, "lastQualificationTime"), "2020-13-03T21:24:39Z"), "month 13"),
        (_set(VALID, (*SEGMENT, "lastQualificationTime"), "2020-03-03T24:00:00Z"), "hour 24"),
        (_set(VALID, (*SEGMENT, "lastQualificationTime"), "２０２０-03-03T21:24:39Z"), "digits"),
        (_set(VALID, (*SEGMENT, "lastQualificationTime"), 1583270679000), "epoch ms"),
        (_set(VALID, (*SEGMENT, "createdAt"), "1648553325000"), "timestamp as string"),
        (_set(VALID, (*SEGMENT, "createdAt"), -1), "negative timestamp"),
        (_set(VALID, (*SEGMENT, "name"), None), "null name"),
        (_set(VALID, (*SEGMENT, "extra"), 1), "extra membership property"),
        (_set(VALID, ("segmentMembership", "ups"), {}), "empty segment namespace"),
        (_set(VALID, ("identityMap", "ecid", 0, "primary"), True), "extra identity property"),
        (_set(VALID, ("identityMap", "ecid", 0), {"ID": "1"}), "identity without id"),
        (_set(VALID, ("identityMap", "ecid", 0, "id"), 1457), "non-string id"),
        (_set(VALID, ("identityMap", "ecid", 0, "id"), ""), "empty id"),
        (_set(VALID, ("identityMap", "ecid", 0, "id"), "  "), "blank id"),
        (_set(VALID, ("identityMap", "ecid"), []), "empty namespace"),
        (_set(VALID, ("identityMap", "ecid"), [{"id": "1"}, {"id": "1"}]), "duplicate ids"),
        (_set(VALID, ("identityMap", "ecid"), {"id": "1"}), "namespace not a list"),
        (_set(VALID, ("eventId",), "ABC"), "short eventId"),
        (_set(VALID, ("eventId",), hashlib.sha256(b"x").hexdigest().upper()), "upper-case hex"),
        (_set(VALID, ("eventId",), None), "null eventId"),
        (_without(VALID, ("identityMap",)), "identityMap missing"),
        (_without(VALID, ("segmentMembership",)), "segmentMembership missing"),
        ([VALID], "not an object"),
    ],
)
def test_malformed_events_are_rejected(event, why):
    assert schema_errors(event), why


def test_helper_rejects_non_canonical_bytes():
    canonical = json.dumps(VALID, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    assert validate_event(canonical.encode()) == VALID
    with pytest.raises(AssertionError, match="compact"):
        validate_event(json.dumps(VALID, sort_keys=True).encode())  # spaces
    with pytest.raises(AssertionError, match="compact"):
        unsorted = dict(reversed(list(VALID.items())))
        validate_event(json.dumps(unsorted, ensure_ascii=False, separators=(",", ":")).encode())
    with pytest.raises(AssertionError, match="compact"):
        escaped = {"identityMap": {}, "segmentMembership": {}, "é": 1}
        validate_event(json.dumps(escaped, separators=(",", ":"), sort_keys=True).encode())
    with pytest.raises(UnicodeDecodeError):
        validate_event(b'{"identityMap":{},"segmentMembership":{},"x":"\xff"}')
    with pytest.raises(AssertionError, match="schema"):
        validate_event(b'{"identityMap":{},"segmentMembership":[]}')
