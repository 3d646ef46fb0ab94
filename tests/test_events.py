"""The exact event payload (docs/contract.md §5): golden bytes, eventId, partition key, conversions.

Expected bytes are spelled out here by hand, key order included; digests are computed
with hashlib from the documented definitions, never copied from the implementation.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import hashlib
import itertools
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.event_schema import validate_event
from transforms.config import ActivationConfig, parse_config
from transforms.events.format import (
    EventFormatError,
    EventFormatter,
    FormatSegmentEvents,
    event_id_for,
    format_event,
    partition_key_for,
)
from transforms.events.timestamps import parse_timestamp


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def utc_ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp()) * 1000


KEY = "email:John.Doe@Example.com"
T = utc_ms(2024, 1, 31)
QUALIFIED = utc_ms(2020, 3, 3, 21, 24, 39)
SEG = "7841ba61-23c1-4bb3-a495-00d695fe1e93"
SEGMENTS = [
    {
        "id": SEG,
        "namespace": "ups",
        "name": "High propensity to convert",
        "createdAt": 1648553325000,
        "updatedAt": 1648553330000,
        "mappingCreatedAt": 1649856570000,
        "mappingUpdatedAt": 1649856570001,
    },
    {"id": "aud-9", "namespace": "ext", "name": "Clients fidèles ✓", "createdAt": 1600000000000},
]
ATTRIBUTES = [
    "person.name.firstName",
    "person.name.lastName",
    "personalEmail.address",
    "loyalty.tier",  # configured but missing in the profile: absent from the event
]
HASH = {"email": "email_lc_sha256", "phone": "phone_sha256"}
TRANSITION = {
    "snapshot_ms": T,
    "segments": {"ups": {SEG: ["realized", QUALIFIED]}, "ext": {"aud-9": ["exited", T]}},
    "identities": {
        "email": ["John.Doe@Example.com ", "john.doe@example.com"],
        "ecid": ["1457"],
        "phone": ["+1 (555) 010-9999"],
        "crm": [""],
    },
    "attributes": {
        "person.name.firstName": "Zoë",
        "person.name.lastName": "Ødegård",
        "personalEmail.address": "john.doe@example.com",
    },
}


def make_config(**overrides) -> ActivationConfig:
    raw = {"segments": SEGMENTS}
    raw.update(overrides)
    return parse_config(raw)


def with_event_id(body: str, profile_key: str = KEY, snapshot_ms: int = T) -> str:
    """Adds the eventId as documented: SHA-256 of '[key,snapshot_ms,payload]'."""
    event_id = sha(f"[{json.dumps(profile_key, ensure_ascii=False)},{snapshot_ms},{body}]")
    return '{"eventId":"' + event_id + '",' + body[1:]


# --- golden payloads: every option combination ----------------------------------------


def _segment_fragment(names: bool, stamps: bool) -> str:
    seg = []
    if stamps:
        seg.append('"createdAt":1648553325000')
    seg.append('"lastQualificationTime":"2020-03-03T21:24:39Z"')
    if stamps:
        seg += ['"mappingCreatedAt":1649856570000', '"mappingUpdatedAt":1649856570001']
    if names:
        seg.append('"name":"High propensity to convert"')
    seg.append('"status":"realized"')
    if stamps:
        seg.append('"updatedAt":1648553330000')
    aud = []
    if stamps:
        aud.append('"createdAt":1600000000000')  # the only timestamp aud-9 has
    aud.append('"lastQualificationTime":"2024-01-31T00:00:00Z"')
    if names:
        aud.append('"name":"Clients fidèles ✓"')
    aud.append('"status":"exited"')
    return (
        '"segmentMembership":{"ext":{"aud-9":{' + ",".join(aud) + "}},"
        '"ups":{"' + SEG + '":{' + ",".join(seg) + "}}}"
    )


def _identity_fragment(include: bool, hashed: bool) -> str:
    ecid = '"ecid":[{"id":"1457"}]'
    if hashed:
        email = '"email_lc_sha256":[{"id":"' + sha("john.doe@example.com") + '"}]'
        phone = '"phone_sha256":[{"id":"' + sha("+15550109999") + '"}]'
        parts = [ecid, email] if include else [ecid, email, phone]
    else:
        email = '"email":[{"id":"John.Doe@Example.com "},{"id":"john.doe@example.com"}]'
        phone = '"phone":[{"id":"+1 (555) 010-9999"}]'
        parts = [ecid, phone] if include else [ecid, email, phone]
    return '"identityMap":{' + ",".join(parts) + "}"


_ATTRIBUTE_FRAGMENT = (
    '"person":{"name":{"firstName":"Zoë","lastName":"Ødegård"}},'
    '"personalEmail":{"address":"john.doe@example.com"}'
)

COMBINATIONS = list(itertools.product([False, True], repeat=6))


@pytest.mark.parametrize(
    ("names", "stamps", "event_id", "include", "hashed", "attributes"),
    COMBINATIONS,
    ids=[
        "-".join(
            f"{n}={'on' if v else 'off'}"
            for n, v in zip(
                ("names", "stamps", "id", "include", "hash", "attrs"), combo, strict=True
            )
        )
        for combo in COMBINATIONS
    ],
)
def test_golden_payload(names, stamps, event_id, include, hashed, attributes):
    identities = {}
    if hashed:
        identities["hash"] = HASH
    if include:
        identities["include"] = ["email_lc_sha256", "ecid"] if hashed else ["ecid", "phone"]
    config = make_config(
        include_segment_names=names,
        include_segment_timestamps=stamps,
        event_id=event_id,
        identities=identities,
        attributes=ATTRIBUTES if attributes else [],
    )
    # Top-level keys in sorted order: eventId, identityMap, person, personalEmail,
    # segmentMembership.
    parts = [_identity_fragment(include, hashed)]
    if attributes:
        parts.append(_ATTRIBUTE_FRAGMENT)
    parts.append(_segment_fragment(names, stamps))
    body = "{" + ",".join(parts) + "}"
    expected = with_event_id(body) if event_id else body

    data = format_event(KEY, TRANSITION, config)

    assert data == expected.encode("utf-8")
    validate_event(data)


def test_golden_spec_example():
    """The config of docs/contract.md §3 and an exit like the event of docs/contract.md §5, spelled out whole."""
    config = parse_config(
        {
            "segments": [
                {
                    "id": SEG,
                    "namespace": "ups",
                    "name": "High propensity to convert",
                    "createdAt": 1648553325000,
                    "updatedAt": 1648553330000,
                    "mappingCreatedAt": 1649856570000,
                    "mappingUpdatedAt": 1649856570000,
                }
            ],
            "profile_key": "primary",
            "identities": {
                "include": ["email_lc_sha256", "ecid"],
                "hash": {"email": "email_lc_sha256", "phone": "phone_sha256"},
            },
            "attributes": ["person.name.firstName", "personalEmail.address"],
            "triggers": {"segments": True, "attributes": False, "identities": False},
            "include_segment_names": False,
            "include_segment_timestamps": False,
            "event_id": True,
            "absent_profile_ttl": None,
            "max_exit_fraction": 0.5,
        }
    )
    transition = {
        "snapshot_ms": T,
        "segments": {"ups": {SEG: ["exited", QUALIFIED]}},
        "identities": {
            "email": ["John.Doe@Example.com "],
            "ecid": ["14575006536349286404619648085736425115"],
        },
        "attributes": {
            "person.name.firstName": "John",
            "personalEmail.address": "john.doe@example.com",
        },
    }
    body = (
        '{"identityMap":{"ecid":[{"id":"14575006536349286404619648085736425115"}],'
        '"email_lc_sha256":[{"id":"' + sha("john.doe@example.com") + '"}]},'
        '"person":{"name":{"firstName":"John"}},'
        '"personalEmail":{"address":"john.doe@example.com"},'
        '"segmentMembership":{"ups":{"' + SEG + '":'
        '{"lastQualificationTime":"2020-03-03T21:24:39Z","status":"exited"}}}}'
    )
    key = "email:John.Doe@Example.com "
    data = format_event(key, transition, config)
    assert data == with_event_id(body, key).encode("utf-8")
    event = validate_event(data)
    assert "email" not in event["identityMap"]


def test_event_without_memberships_or_identities_keeps_the_shape():
    config = make_config(attributes=["person.name.firstName"], event_id=False)
    transition = {
        "snapshot_ms": T,
        "segments": {},
        "identities": {},
        "attributes": {"person.name.firstName": "Jo"},
    }
    data = format_event(KEY, transition, config)
    assert data == b'{"identityMap":{},"person":{"name":{"firstName":"Jo"}},"segmentMembership":{}}'
    validate_event(data)


def test_non_ascii_survives_as_utf8_not_escapes():
    config = make_config(attributes=["person.name.firstName"], event_id=False)
    transition = dict(TRANSITION, attributes={"person.name.firstName": "李雷 😀 \u2028"})
    data = format_event(KEY, transition, config)
    assert '"firstName":"李雷 😀 \u2028"'.encode() in data
    assert b"\\u" not in data
    assert validate_event(data)["person"]["name"]["firstName"] == "李雷 😀 \u2028"


def test_control_characters_are_escaped_so_one_event_is_one_line():
    config = make_config(attributes=["note"], event_id=False)
    data = format_event(KEY, dict(TRANSITION, attributes={"note": "a\nb\r\t\x00"}), config)
    assert b'"note":"a\\nb\\r\\t\\u0000"' in data
    assert b"\n" not in data


# --- segments -------------------------------------------------------------------------


def test_unmapped_segments_are_never_sent():
    config = make_config(segments=[{"id": SEG}], event_id=False)
    data = format_event(KEY, TRANSITION, config)
    event = validate_event(data)
    assert event["segmentMembership"] == {
        "ups": {SEG: {"lastQualificationTime": "2020-03-03T21:24:39Z", "status": "realized"}}
    }


def test_wildcard_mapping_has_no_names_or_timestamps():
    config = make_config(
        segments="*", include_segment_names=True, include_segment_timestamps=True, event_id=False
    )
    event = validate_event(format_event(KEY, TRANSITION, config))
    assert event["segmentMembership"]["ext"]["aud-9"] == {
        "lastQualificationTime": "2024-01-31T00:00:00Z",
        "status": "exited",
    }


def test_existing_status_is_carried():
    config = make_config(event_id=False)
    transition = dict(TRANSITION, segments={"ups": {SEG: ["existing", QUALIFIED]}})
    event = validate_event(format_event(KEY, transition, config))
    assert event["segmentMembership"]["ups"][SEG]["status"] == "existing"


def test_missing_qualification_time_is_the_snapshot_time():
    config = make_config(event_id=False)
    transition = dict(TRANSITION, segments={"ups": {SEG: ["realized", None]}})
    event = validate_event(format_event(KEY, transition, config))
    assert event["segmentMembership"]["ups"][SEG]["lastQualificationTime"] == (
        "2024-01-31T00:00:00Z"
    )


@pytest.mark.parametrize(
    "form",
    [
        "2020-03-03T21:24:39Z",
        "2020-03-03T21:24:39z",
        "2020-03-03T21:24:39+0000",
        "2020-03-03T21:24:39+00:00",
        "2020-03-03T21:24:39-00:00",
        "2020-03-03T23:24:39+02:00",
        "2020-03-04T03:09:39+0545",
        "2020-03-03T16:24:39-05:00",
        "2020-03-03T16:24:39-0500",
        "2020-03-03T21:24:39.999Z",
        "2020-03-03T21:24:39,5+00:00",
        "2020-03-03T21:24:39.123456789+00:00",
        "2020-03-03T23:24:39.001+02:00",
        1583270679000,
        1583270679999,
        "1583270679000",
    ],
)
def test_every_timestamp_form_formats_to_utc_seconds(form):
    config = make_config(event_id=False)
    # Through the reader's parser into the transition (the pipeline's path) ...
    transition = dict(TRANSITION, segments={"ups": {SEG: ["realized", parse_timestamp(form)]}})
    event = validate_event(format_event(KEY, transition, config))
    assert event["segmentMembership"]["ups"][SEG]["lastQualificationTime"] == (
        "2020-03-03T21:24:39Z"
    )
    # ... and given raw: the formatter normalises it the same way.
    transition = dict(TRANSITION, segments={"ups": {SEG: ["realized", form]}})
    event = validate_event(format_event(KEY, transition, config))
    assert event["segmentMembership"]["ups"][SEG]["lastQualificationTime"] == (
        "2020-03-03T21:24:39Z"
    )


@pytest.mark.parametrize(
    ("epoch_ms", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (999, "1970-01-01T00:00:00Z"),
        (utc_ms(2024, 2, 29, 23, 59, 59) + 999, "2024-02-29T23:59:59Z"),
        (utc_ms(2199, 12, 31, 23, 59, 59), "2199-12-31T23:59:59Z"),
    ],
)
def test_qualification_time_edges(epoch_ms, text):
    transition = dict(TRANSITION, segments={"ups": {SEG: ["exited", epoch_ms]}})
    event = validate_event(format_event(KEY, transition, make_config(event_id=False)))
    assert event["segmentMembership"]["ups"][SEG]["lastQualificationTime"] == text


# --- attributes -----------------------------------------------------------------------


def test_only_configured_attributes_leave_the_job():
    config = make_config(attributes=["person.name.firstName"], event_id=False)
    transition = dict(
        TRANSITION,
        attributes={"person.name.firstName": "Jo", "person.name.lastName": "Secret", "x": 1},
    )
    event = validate_event(format_event(KEY, transition, config))
    assert event["person"] == {"name": {"firstName": "Jo"}}
    assert "x" not in event


def test_none_attribute_is_absent():
    config = make_config(attributes=["a.b", "c"], event_id=False)
    event = validate_event(
        format_event(KEY, dict(TRANSITION, attributes={"a.b": None, "c": 0}), config)
    )
    assert "a" not in event
    assert event["c"] == 0


def test_nested_attribute_values_are_kept_whole_and_sorted():
    config = make_config(attributes=["person.name", "tags", "score", "vip"], event_id=False)
    transition = dict(
        TRANSITION,
        attributes={
            "person.name": {"lastName": "Doe", "firstName": "John"},
            "tags": ["b", "a", {"z": 1, "y": None}],
            "score": 0.25,
            "vip": False,
        },
    )
    data = format_event(KEY, transition, config)
    assert b'"person":{"name":{"firstName":"John","lastName":"Doe"}}' in data
    assert b'"score":0.25,' in data
    assert b'"tags":["b","a",{"y":null,"z":1}]' in data
    assert b'"vip":false}' in data
    validate_event(data)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (dt.date(1990, 5, 17), b'"1990-05-17"'),
        (dt.datetime(2024, 1, 31, 6, 0, 0), b'"2024-01-31T06:00:00Z"'),
        (
            dt.datetime(2024, 1, 31, 7, 0, 0, 500, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            b'"2024-01-31T06:00:00.000500Z"',
        ),
        (dt.time(6, 30), b'"06:30:00"'),
        (decimal.Decimal("12.50"), b"12.5"),
        (decimal.Decimal("100"), b"100"),
        (decimal.Decimal("NaN"), b"null"),
        (
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            b'"12345678-1234-5678-1234-567812345678"',
        ),
        (b"\x00\xffab", b'"AP9hYg=="'),
        (float("nan"), b"null"),
        (float("inf"), b"null"),
        ([1.5, float("-inf")], b"[1.5,null]"),
    ],
)
def test_reader_value_types_become_json(value, encoded):
    config = make_config(attributes=["v"], event_id=False)
    data = format_event(KEY, dict(TRANSITION, attributes={"v": value}), config)
    assert b'{"identityMap"' in data
    assert data.endswith(b',"v":' + encoded + b"}")
    validate_event(data)


def test_unencodable_attribute_names_the_path_not_the_value():
    config = make_config(attributes=["odd.value"])
    with pytest.raises(EventFormatError, match="'odd.value'.*set"):
        format_event(KEY, dict(TRANSITION, attributes={"odd.value": {"secret-1"}}), config)


def test_conflicting_paths_from_a_hand_built_config_are_refused():
    for attributes in (("a", "a.b"), ("a.b.c", "a")):
        config = ActivationConfig(segments=None, attributes=attributes)
        with pytest.raises(EventFormatError, match="conflict"):
            format_event(KEY, dict(TRANSITION, attributes={"a": {"c": 1}, "a.b": 2}), config)


def test_lone_surrogate_is_refused():
    config = make_config(attributes=["v"])
    with pytest.raises(EventFormatError, match="not valid Unicode"):
        format_event(KEY, dict(TRANSITION, attributes={"v": "bad \ud800"}), config)


# --- malformed transitions -------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"segments": {"ups": {SEG: ["member", QUALIFIED]}}}, "unknown status"),
        ({"segments": {"ups": {SEG: ["realized"]}}}, "expected"),
        ({"segments": {"ups": {SEG: ["realized", "yesterday"]}}}, "lastQualificationTime"),
        ({"snapshot_ms": "2024-01-31"}, "snapshot_ms"),
        ({"snapshot_ms": None}, "snapshot_ms"),
        ({"identities": {"ecid": [123]}}, "ecid"),
        ({"identities": ["ecid"]}, "identities is not an object"),
        ({"segments": [SEG]}, "segments is not an object"),
        ({"segments": {"ups": [SEG]}}, "segments.ups is not an object"),
        ({"attributes": "John"}, "attributes is not an object"),
    ],
)
def test_malformed_transition_is_an_error_without_pii(change, message):
    transition = copy.deepcopy(TRANSITION)
    transition.update(change)
    with pytest.raises(EventFormatError, match=message) as err:
        format_event(KEY, transition, make_config())
    assert "John" not in str(err.value)
    assert "1457" not in str(err.value)


# --- eventId ----------------------------------------------------------------------------


def test_event_id_is_sha256_of_key_snapshot_and_payload():
    data = format_event(KEY, TRANSITION, make_config(attributes=ATTRIBUTES))
    event = json.loads(data)
    event_id = event.pop("eventId")
    payload = json.dumps(event, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    canonical = json.dumps(
        [KEY, T, event], ensure_ascii=False, separators=(",", ":"), sort_keys=True
    )
    assert canonical == f'["{KEY}",{T},{payload}]'
    assert event_id == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert event_id_for(KEY, T, payload.encode("utf-8")) == event_id


def test_event_id_false_gives_the_hashed_payload():
    with_id = format_event(KEY, TRANSITION, make_config())
    without = format_event(KEY, TRANSITION, make_config(event_id=False))
    assert b"eventId" not in without
    event = json.loads(with_id)
    assert event.pop("eventId") == event_id_for(KEY, T, without)
    assert event == json.loads(without)


def test_event_id_differs_per_profile_and_snapshot():
    config = make_config()

    def event_id(key, snapshot_ms):
        return json.loads(format_event(key, dict(TRANSITION, snapshot_ms=snapshot_ms), config))[
            "eventId"
        ]

    ids = {
        event_id(KEY, T),
        event_id("email:other@example.com", T),
        event_id(KEY, T + 86_400_000),
        event_id("ecid:1", T),
        event_id("ecid:1", T + 1),
    }
    assert len(ids) == 5
    # Frozen: a change of the id's recipe would make consumers see every event as new
    # (and break their de-duplication across a replay). Change only on purpose.
    assert event_id(KEY, T) == "0f1b0157400715ba85355cb47f38965482ffd8aba063929d800c5b55e9ce1620"


def test_event_id_key_encoding_is_unambiguous():
    # The key is a JSON string inside the array: '"a",1' cannot pass for another key.
    assert event_id_for('a",1', 2, b"{}") == sha('["a\\",1",2,{}]')
    assert event_id_for("é", 2, b"{}") == sha('["é",2,{}]')


def _shuffled(value, rnd):
    if isinstance(value, dict):
        items = [(k, _shuffled(v, rnd)) for k, v in value.items()]
        rnd.shuffle(items)
        return dict(items)
    return value  # lists keep their order: identity order is input order


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False))
def test_bytes_and_event_id_ignore_dict_order(rnd):
    config = make_config(
        attributes=ATTRIBUTES,
        identities={"hash": HASH},
        include_segment_names=True,
        include_segment_timestamps=True,
    )
    shuffled_segments = list(config.segments)
    rnd.shuffle(shuffled_segments)
    shuffled_config = ActivationConfig(
        segments=tuple(shuffled_segments),
        identities_hash=config.identities_hash,
        attributes=tuple(rnd.sample(config.attributes, len(config.attributes))),
        include_segment_names=True,
        include_segment_timestamps=True,
    )
    expected = format_event(KEY, TRANSITION, config)
    assert format_event(KEY, _shuffled(copy.deepcopy(TRANSITION), rnd), config) == expected
    assert format_event(KEY, _shuffled(copy.deepcopy(TRANSITION), rnd), shuffled_config) == expected


def test_formatter_reuse_gives_the_same_bytes():
    config = make_config()
    formatter = EventFormatter(config)
    first = formatter.format(KEY, TRANSITION)
    assert (
        formatter.format(KEY, copy.deepcopy(TRANSITION))
        == first
        == format_event(KEY, TRANSITION, config)
    )
    data, statuses = formatter.format_with_statuses(KEY, TRANSITION)
    assert data == first
    assert sorted(statuses) == ["exited", "realized"]


def test_formatting_does_not_mutate_the_transition():
    transition = copy.deepcopy(TRANSITION)
    format_event(KEY, transition, make_config(attributes=ATTRIBUTES, identities={"hash": HASH}))
    assert transition == TRANSITION


# --- partition key ----------------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, "ecid:14575006536349286404619648085736425115", "é:李", ""])
def test_partition_key_is_sha256_hex_of_the_utf8_profile_key(key):
    assert partition_key_for(key) == hashlib.sha256(key.encode("utf-8")).hexdigest()
    assert len(partition_key_for(key)) == 64


def test_formatted_elements_are_keyed_by_the_hashed_partition_key():
    # What reaches the sink: (partition key, event bytes). The partition key is the
    # hash, never the profile key itself (which is PII, and which Kinesis would log).
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    config = make_config()
    expected = [
        (hashlib.sha256(KEY.encode("utf-8")).hexdigest(), format_event(KEY, TRANSITION, config))
    ]
    with TestPipeline() as pipeline:
        formatted = (
            pipeline | beam.Create([(KEY, TRANSITION)]) | FormatSegmentEvents(config)
        ).events
        assert_that(formatted, equal_to(expected))


def test_each_mapping_timestamp_reaches_the_event_under_its_own_name():
    # Distinct values per field: a swapped or dropped field changes the event.
    stamps = {"createdAt": 1, "updatedAt": 2, "mappingCreatedAt": 3, "mappingUpdatedAt": 4}
    config = make_config(
        segments=[dict({"id": SEG, "namespace": "ups", "name": "N"}, **stamps)],
        include_segment_names=True,
        include_segment_timestamps=True,
    )
    event = json.loads(format_event(KEY, TRANSITION, config))
    segment = event["segmentMembership"]["ups"][SEG]
    assert {name: segment[name] for name in stamps} == stamps
    assert segment["name"] == "N"


def test_a_superscript_digit_is_a_bad_timestamp_not_a_crash():
    # "²".isdigit() is true but int("²") raises a plain ValueError, which used to stop
    # the pipeline instead of dead-lettering the record.
    from transforms.events.timestamps import TimestampError, parse_timestamp

    with pytest.raises(TimestampError):
        parse_timestamp("²")


def _model_event(key: str, transition: dict, config: ActivationConfig) -> bytes:
    """The event as one dict encoded whole by json.dumps (the plain definition of §5)."""
    mappings = {(m.namespace, m.id): m for m in config.segments or ()}
    memberships: dict = {}
    for namespace, by_id in transition["segments"].items():
        for seg_id, (status, qualified) in by_id.items():
            if not config.is_mapped(namespace, seg_id):
                continue
            stamp = transition["snapshot_ms"] if qualified is None else qualified
            item = {
                "status": status,
                "lastQualificationTime": dt.datetime.fromtimestamp(stamp // 1000, dt.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
            }
            mapping = mappings.get((namespace, seg_id))
            if mapping is not None and config.include_segment_names and mapping.name:
                item["name"] = mapping.name
            if mapping is not None and config.include_segment_timestamps:
                item.update(mapping.timestamps)
            memberships.setdefault(namespace, {})[seg_id] = item
    payload: dict = {}
    for path in config.attributes:
        if transition["attributes"].get(path) is not None:
            *parents, leaf = path.split(".")
            node = payload
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = transition["attributes"][path]
    payload["segmentMembership"] = memberships
    payload["identityMap"] = {
        ns: [{"id": i} for i in dict.fromkeys(ids)]
        for ns, ids in sorted(transition["identities"].items())
    }

    def encode(value: dict) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()

    if config.event_id:
        payload["eventId"] = event_id_for(key, transition["snapshot_ms"], encode(payload))
    return encode(payload)


# Names and ids that could fool a template: quotes, the template's own marker and key,
# backslashes, non-ASCII, control characters.
_HOSTILE = st.sampled_from(
    ["a", 'b"c', "LQT", '"lastQualificationTime":"LQT"', "x\\y", "Zoë", "tab\there", "ß", "_"]
)


_ENTRY = st.tuples(
    st.sampled_from(["realized", "existing", "exited"]),
    st.one_of(st.none(), st.integers(0, 7_258_118_400_000)),
)


@st.composite
def _mapped_and_segments(draw):
    pairs = st.tuples(st.sampled_from(["ups", 'n"s', "é"]), _HOSTILE)
    mapped = draw(st.lists(pairs, min_size=1, max_size=8, unique=True))
    # Mostly mapped segments (several per namespace), a few unmapped ones.
    chosen = draw(st.lists(st.sampled_from(mapped), unique=True)) + draw(
        st.lists(st.tuples(st.just("other"), _HOSTILE), max_size=2, unique=True)
    )
    return mapped, {pair: draw(_ENTRY) for pair in chosen}


@settings(max_examples=200, deadline=None)
@given(
    _mapped_and_segments(),
    st.dictionaries(st.sampled_from(["a.b", "c", "person.name", "z.y.x"]), _HOSTILE, max_size=3),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_bytes_equal_the_whole_dict_encoding(mapped_segs, attrs, names, stamps, event_id):
    mapped, segs = mapped_segs
    config = parse_config(
        {
            "segments": [
                {"namespace": ns, "id": seg_id, "name": f'{seg_id} "n"', "createdAt": 5}
                for ns, seg_id in dict.fromkeys(mapped)
            ],
            "attributes": ["a.b", "c", "person.name", "z.y.x"],
            "include_segment_names": names,
            "include_segment_timestamps": stamps,
            "event_id": event_id,
            "send_without_identity": True,
        }
    )
    segments: dict = {}
    for (ns, seg_id), (status, qualified) in segs.items():
        segments.setdefault(ns, {})[seg_id] = [status, qualified]
    transition = {
        "snapshot_ms": T,
        "segments": segments,
        "identities": {"ecid": ['1"2', "3"], "crm": ["Zoë"]},
        "attributes": attrs,
    }
    assert format_event(KEY, transition, config) == _model_event(KEY, transition, config)
