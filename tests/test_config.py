"""Config validation (docs/contract.md §3): every key, its type, and a message that says what to fix."""

from __future__ import annotations

import json
import os

import pytest

from transforms.config import (
    ActivationConfig,
    ConfigError,
    SegmentMapping,
    load_config,
    parse_config,
)

SPEC_EXAMPLE = {
    "segments": [
        {
            "id": "7841ba61-23c1-4bb3-a495-00d695fe1e93",
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
MINIMAL = {"segments": [{"id": "seg-1"}]}


def with_(**changes) -> dict:
    raw = dict(MINIMAL)
    raw.update(changes)
    return raw


# --- valid configs ---------------------------------------------------------------------


def test_spec_example_parses_completely():
    config = parse_config(SPEC_EXAMPLE)
    assert config == ActivationConfig(
        segments=(
            SegmentMapping(
                id="7841ba61-23c1-4bb3-a495-00d695fe1e93",
                namespace="ups",
                name="High propensity to convert",
                timestamps=(
                    ("createdAt", 1648553325000),
                    ("updatedAt", 1648553330000),
                    ("mappingCreatedAt", 1649856570000),
                    ("mappingUpdatedAt", 1649856570000),
                ),
            ),
        ),
        profile_key="primary",
        identities_include=("email_lc_sha256", "ecid"),
        identities_hash=(("email", "email_lc_sha256"), ("phone", "phone_sha256")),
        attributes=("person.name.firstName", "personalEmail.address"),
        trigger_segments=True,
        trigger_attributes=False,
        trigger_identities=False,
        include_segment_names=False,
        include_segment_timestamps=False,
        event_id=True,
        absent_profile_ttl_seconds=None,
        max_exit_fraction=0.5,
    )
    assert config.hash_map == {"email": "email_lc_sha256", "phone": "phone_sha256"}
    assert config.is_mapped("ups", "7841ba61-23c1-4bb3-a495-00d695fe1e93")
    assert not config.is_mapped("ext", "7841ba61-23c1-4bb3-a495-00d695fe1e93")


def test_defaults():
    config = parse_config(MINIMAL)
    assert config.segments == (SegmentMapping("seg-1", "ups"),)
    assert config.profile_key == "primary"
    assert config.identities_include is None
    assert config.identities_hash == ()
    assert config.attributes == ()
    assert (config.trigger_segments, config.trigger_attributes, config.trigger_identities) == (
        True,
        False,
        False,
    )
    assert not config.include_segment_names
    assert not config.include_segment_timestamps
    assert config.event_id
    assert not config.send_without_identity
    assert config.absent_profile_ttl_seconds is None
    assert config.max_exit_fraction == 0.5
    assert parse_config(with_(send_without_identity=True)).send_without_identity


def test_wildcard_maps_every_segment():
    config = parse_config({"segments": "*"})
    assert config.segments is None
    assert config.is_mapped("anything", "at-all")
    assert config.segment("ups", "x") is None


def test_segment_lookup_and_namespace():
    config = parse_config(
        {"segments": [{"id": "a", "name": "A", "createdAt": 5}, {"id": "a", "namespace": "ext"}]}
    )
    assert config.segment("ups", "a") == SegmentMapping("a", "ups", "A", (("createdAt", 5),))
    assert config.segment("ext", "a") == SegmentMapping("a", "ext")
    assert config.segment("ups", "b") is None


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("primary", "primary"), ("ecid", "ecid"), (" field:crm.id ", "field:crm.id")],
)
def test_profile_key_rules(rule, expected):
    assert parse_config(with_(profile_key=rule)).profile_key == expected


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (3600, 3600),
        ("45", 45),
        ("45s", 45),
        ("90m", 5400),
        ("12h", 43200),
        ("30d", 2_592_000),
        (" 7 d ", 604_800),
    ],
)
def test_absent_profile_ttl_forms(value, seconds):
    assert parse_config(with_(absent_profile_ttl=value)).absent_profile_ttl_seconds == seconds


@pytest.mark.parametrize("fraction", [0, 1, 0.25, 1.0])
def test_max_exit_fraction_bounds(fraction):
    assert parse_config(with_(max_exit_fraction=fraction)).max_exit_fraction == fraction


def test_identities_include_null_means_all_and_duplicates_collapse():
    assert parse_config(with_(identities={"include": None})).identities_include is None
    assert parse_config(with_(identities={"include": []})).identities_include == ()
    config = parse_config(with_(identities={"include": ["ecid", "crm", "ecid"]}))
    assert config.identities_include == ("ecid", "crm")


def test_include_may_name_a_hashed_target_or_any_raw_namespace():
    config = parse_config(
        with_(
            identities={"include": ["phone_sha256", "Phone_raw"], "hash": {"phone": "phone_sha256"}}
        )
    )
    assert config.identities_include == ("phone_sha256", "Phone_raw")


def test_attributes_may_share_a_parent():
    config = parse_config(with_(attributes=["person.name.firstName", "person.name.lastName"]))
    assert config.attributes == ("person.name.firstName", "person.name.lastName")


def test_triggers_partial_object_keeps_defaults():
    config = parse_config(with_(triggers={"attributes": True}))
    assert (config.trigger_segments, config.trigger_attributes, config.trigger_identities) == (
        True,
        True,
        False,
    )


def test_config_is_hashable_and_picklable():
    import pickle

    config = parse_config(SPEC_EXAMPLE)
    assert pickle.loads(pickle.dumps(config)) == config
    assert hash(config) == hash(parse_config(SPEC_EXAMPLE))
    assert pickle.loads(pickle.dumps(config)).is_mapped(
        "ups", "7841ba61-23c1-4bb3-a495-00d695fe1e93"
    )


# --- invalid configs: one case per key and problem -------------------------------------

INVALID = [
    # top level
    ([], ["config must be a JSON object", "got a list"]),
    ("segments", ["config must be a JSON object", "got a string"]),
    (with_(segmets=[]), ["unknown key 'segmets'", "allowed keys", "segments"]),
    ({}, ['"segments" is required']),
    # segments
    (with_(segments=None), ['"segments"', 'a list of segment mappings or "*"', "got null"]),
    (with_(segments="all"), ['"segments"', 'or "*"', 'got a string "all"']),
    (with_(segments={"id": "x"}), ['"segments"', "got an object"]),
    (with_(segments=[]), ['"segments" is empty']),
    (with_(segments=["seg-1"]), ['"segments[0]"', "an object with at least an id", "got a string"]),
    (with_(segments=[{"id": "a", "nme": "x"}]), ["unknown key segments[0].'nme'"]),
    (with_(segments=[{"name": "x"}]), ['"segments[0].id"', "a non-empty string", "got null"]),
    (with_(segments=[{"id": ""}]), ['"segments[0].id"', "a non-empty string"]),
    (with_(segments=[{"id": 7}]), ['"segments[0].id"', "got a number 7"]),
    (with_(segments=[{"id": "a", "namespace": ""}]), ['"segments[0].namespace"', "non-empty"]),
    (with_(segments=[{"id": "a", "namespace": 1}]), ['"segments[0].namespace"', "got a number"]),
    (with_(segments=[{"id": "a", "name": 5}]), ['"segments[0].name"', "a string", "got a number"]),
    (with_(segments=[{"id": "a"}, {"id": "a", "namespace": "ups"}]), ["ups/a is mapped twice"]),
    # profile_key
    (with_(profile_key=1), ['"profile_key"', '"primary", a namespace name or "field:', "number"]),
    (with_(profile_key=" "), ['"profile_key"', '"primary"']),
    (with_(profile_key="field:"), ['"profile_key"', "followed by a dotted path"]),
    (with_(profile_key="field:a..b"), ['"profile_key"', "followed by a dotted path"]),
    (with_(profile_key="field:.a"), ['"profile_key"', "followed by a dotted path"]),
    # identities
    (with_(identities=[]), ['"identities"', '"include" and/or "hash"', "got a list"]),
    (with_(identities=None), ['"identities"', "got null"]),
    (with_(identities={"exclude": []}), ["unknown key identities.'exclude'"]),
    (with_(identities={"include": "ecid"}), ['"identities.include"', "a list of namespace"]),
    (with_(identities={"include": [1]}), ['"identities.include"', "a list of namespace"]),
    (with_(identities={"include": [""]}), ['"identities.include"', "a list of namespace"]),
    (
        with_(identities={"include": ["email"], "hash": {"email": "email_lc_sha256"}}),
        ['"identities.include"', "'email' is hashed into 'email_lc_sha256'", "include"],
    ),
    (
        with_(identities={"include": ["Phone"], "hash": {"phone": "phone_sha256"}}),
        ['"identities.include"', "'Phone' is hashed into 'phone_sha256'"],
    ),
    (with_(identities={"hash": ["email"]}), ['"identities.hash"', "source namespace -> hashed"]),
    (with_(identities={"hash": {"email": 1}}), ['"identities.hash"', "got an object"]),
    (with_(identities={"hash": {"email": ""}}), ['"identities.hash"', "hashed namespace"]),
    (with_(identities={"hash": {"ecid": "ecid_sha"}}), ["cannot hash namespace 'ecid'", "email"]),
    (with_(identities={"hash": {"Email": "e"}}), ["cannot hash namespace 'Email'"]),
    (
        with_(identities={"hash": {"email": "Email"}}),
        ['"identities.hash.email"', "must not be a raw namespace name"],
    ),
    (
        with_(identities={"hash": {"phone": "email"}}),
        ['"identities.hash.phone"', "must not be a raw namespace name"],
    ),
    (
        with_(identities={"hash": {"email": "h", "phone": "h"}}),
        ['"identities.hash"', "same namespace"],
    ),
    # attributes
    (with_(attributes="person.name"), ['"attributes"', "a list of dotted", "got a string"]),
    (with_(attributes=None), ['"attributes"', "got null"]),
    (with_(attributes=[1]), ['"attributes"', "a list of dotted attribute paths"]),
    (with_(attributes=[" "]), ['"attributes"', "a list of dotted attribute paths"]),
    (with_(attributes=["a..b"]), ['"attributes"', "'a..b' is not a dotted path"]),
    (with_(attributes=[".a"]), ['"attributes"', "'.a' is not a dotted path"]),
    (with_(attributes=["a."]), ['"attributes"', "'a.' is not a dotted path"]),
    (with_(attributes=["identityMap.email"]), ['"attributes"', "reserved"]),
    (with_(attributes=["segmentMembership"]), ['"attributes"', "reserved"]),
    (with_(attributes=["eventId"]), ['"attributes"', "reserved"]),
    (with_(attributes=["_deleted"]), ['"attributes"', "reserved"]),
    (with_(attributes=["a.b", "a.b"]), ['"attributes"', "'a.b' is listed twice"]),
    (with_(attributes=["person", "person.name"]), ['"attributes"', "'person' and 'person.name'"]),
    (with_(attributes=["a.b.c", "x", "a.b"]), ['"attributes"', "'a.b' and 'a.b.c' conflict"]),
    # triggers
    (with_(triggers=True), ['"triggers"', "an object of booleans", "got a boolean true"]),
    (with_(triggers={"segment": True}), ["unknown key triggers.'segment'"]),
    (with_(triggers={"segments": "yes"}), ['"triggers.segments"', "true or false", '"yes"']),
    (with_(triggers={"attributes": 1}), ['"triggers.attributes"', "true or false", "number 1"]),
    (with_(triggers={"identities": None}), ['"triggers.identities"', "true or false", "null"]),
    (with_(triggers={"segments": False}), ['"triggers"', "every trigger is off"]),
    # flags
    (with_(include_segment_names="true"), ['"include_segment_names"', "true or false"]),
    (with_(include_segment_timestamps=1), ['"include_segment_timestamps"', "true or false"]),
    (with_(event_id=None), ['"event_id"', "true or false", "got null"]),
    (with_(send_without_identity="yes"), ['"send_without_identity"', "true or false"]),
    # absent_profile_ttl
    (with_(absent_profile_ttl=0), ['"absent_profile_ttl"', "positive", '"30d"']),
    (with_(absent_profile_ttl=-5), ['"absent_profile_ttl"', "got -5"]),
    (with_(absent_profile_ttl=1.5), ['"absent_profile_ttl"', "got 1.5"]),
    (with_(absent_profile_ttl=True), ['"absent_profile_ttl"', "got True"]),
    (with_(absent_profile_ttl="30x"), ['"absent_profile_ttl"', "'30x'"]),
    (with_(absent_profile_ttl="0d"), ['"absent_profile_ttl"', "'0d'"]),
    (with_(absent_profile_ttl=""), ['"absent_profile_ttl"', "''"]),
    (with_(absent_profile_ttl=[30]), ['"absent_profile_ttl"']),
    # max_exit_fraction
    (with_(max_exit_fraction=1.5), ['"max_exit_fraction"', "between 0 and 1", "1.5"]),
    (with_(max_exit_fraction=-0.1), ['"max_exit_fraction"', "between 0 and 1"]),
    (with_(max_exit_fraction="0.5"), ['"max_exit_fraction"', 'got a string "0.5"']),
    (with_(max_exit_fraction=True), ['"max_exit_fraction"', "got a boolean"]),
    (with_(max_exit_fraction=None), ['"max_exit_fraction"', "got null"]),
    (with_(max_exit_fraction=float("nan")), ['"max_exit_fraction"', "between 0 and 1"]),
]


@pytest.mark.parametrize(("raw", "fragments"), INVALID)
def test_invalid_config_names_key_and_expectation(raw, fragments):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_every_top_level_key_has_an_invalid_case():
    covered = set()
    for raw, _ in INVALID:
        if isinstance(raw, dict):
            covered |= {k for k, v in raw.items() if k != "segments" or v != MINIMAL["segments"]}
    assert covered >= set(SPEC_EXAMPLE)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- load_config ----------------------------------------------------------------------


def test_load_config_reads_a_file(tmp_path):
    path = tmp_path / "activation.json"
    path.write_text(json.dumps(SPEC_EXAMPLE), encoding="utf-8")
    assert load_config(str(path)) == parse_config(SPEC_EXAMPLE)


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.json"):
        load_config(str(tmp_path / "nope.json"))


def test_load_config_invalid_json_gives_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "segments": "*",\n  "event_id": tru\n}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.json is not valid JSON: .* line 3 column 15"):
        load_config(str(path))


def test_load_config_rejects_duplicate_keys(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{"segments": "*", "event_id": true, "event_id": false}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"dup.json: key 'event_id' appears twice"):
        load_config(str(path))


def test_load_config_not_utf8(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"segments": [{"id": "café"}]}'.encode("latin-1"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(path))


def test_load_config_unreadable_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path))  # a directory


def test_load_config_validation_error_names_the_file(tmp_path):
    path = tmp_path / "activation.json"
    path.write_text('{"segments": []}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"activation.json: \"segments\" is empty"):
        load_config(str(path))


def test_load_config_accepts_utf8_names(tmp_path):
    path = tmp_path / "activation.json"
    path.write_text(json.dumps({"segments": [{"id": "s", "name": "Clients fidèles ✓"}]}), "utf-8")
    assert load_config(os.fspath(path)).segments[0].name == "Clients fidèles ✓"
