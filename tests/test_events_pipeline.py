"""FormatSegmentEvents as a Beam step: determinism across runs, schema, metrics."""

from __future__ import annotations

import hashlib
import json
import random

from apache_beam import Create
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from pipeline.runners import OfflineDirectRunner
from tests.support.event_schema import validate_records
from transforms.config import parse_config
from transforms.events.format import FormatSegmentEvents, format_event

CONFIG = parse_config(
    {
        "segments": [
            {"id": "seg-1", "name": "Seg one", "createdAt": 1},
            {"id": "seg-2"},
            {"id": "aud-1", "namespace": "ext"},
        ],
        "identities": {"hash": {"email": "email_lc_sha256"}},
        "attributes": ["person.name.firstName", "loyalty.tier"],
        "include_segment_names": True,
    }
)
T1, T2 = 1706659200000, 1706745600000


def _transitions() -> list[tuple[str, dict]]:
    return [
        (
            "email:ann@example.com",
            {
                "snapshot_ms": T1,
                "segments": {
                    "ups": {"seg-1": ["realized", 1583270679000], "seg-2": ["realized", T1]},
                    "ext": {"aud-1": ["realized", T1]},
                },
                "identities": {"email": ["Ann@Example.com"], "ecid": ["1"]},
                "attributes": {"person.name.firstName": "Ann", "loyalty.tier": "gold"},
            },
        ),
        (
            "email:ann@example.com",
            {
                "snapshot_ms": T2,
                "segments": {"ups": {"seg-1": ["exited", T2]}},
                "identities": {"email": ["Ann@Example.com"], "ecid": ["1"]},
                "attributes": {"person.name.firstName": "Ann"},
            },
        ),
        (
            "ecid:2",
            {
                "snapshot_ms": T2,
                "segments": {"ups": {"seg-2": ["existing", T1]}},
                "identities": {"ecid": ["2"], "email": ["  BÖB@example.com"]},
                "attributes": {"person.name.firstName": "Bøb"},
            },
        ),
        (
            "ecid:3",
            {"snapshot_ms": T2, "segments": {}, "identities": {"ecid": ["3"]}, "attributes": {}},
        ),
    ]


def _reordered(transitions: list[tuple[str, dict]], seed: int) -> list[tuple[str, dict]]:
    """The same transitions in another element order and with every dict reordered."""
    rnd = random.Random(seed)

    def shuffle(value):
        if isinstance(value, dict):
            items = [(k, shuffle(v)) for k, v in value.items()]
            rnd.shuffle(items)
            return dict(items)
        return value

    reordered = [(key, shuffle(transition)) for key, transition in transitions]
    rnd.shuffle(reordered)
    return reordered


def _expected_records() -> list[tuple[str, bytes]]:
    # format_event is pinned byte for byte by the golden tests; the partition key is
    # derived here from its definition.
    return [
        (hashlib.sha256(key.encode("utf-8")).hexdigest(), format_event(key, transition, CONFIG))
        for key, transition in _transitions()
    ]


def _matches(expected: list[tuple[str, bytes]]):
    def check(actual: list[tuple[str, bytes]]) -> None:
        events = validate_records(actual)
        if sorted(actual) != sorted(expected):
            raise BeamAssertException(f"records differ:\n{sorted(actual)}\n!=\n{sorted(expected)}")
        ids = [event["eventId"] for event in events]
        if len(set(ids)) != len(ids):
            raise BeamAssertException(f"eventIds are not unique: {ids}")
        if "email" in {ns for event in events for ns in event["identityMap"]}:
            raise BeamAssertException("a raw e-mail namespace reached the output")

    return check


def _run(transitions: list[tuple[str, dict]]):
    pipeline = test_pipeline.TestPipeline(runner=OfflineDirectRunner())
    records = (
        pipeline
        | "CreateTransitions" >> Create(transitions, reshuffle=False)
        | "Format" >> FormatSegmentEvents(CONFIG)
    ).events
    assert_that(records, _matches(_expected_records()))
    result = pipeline.run()
    result.wait_until_finish()
    return result


def _counters(result) -> dict[str, int]:
    query = result.metrics().query(MetricsFilter().with_namespace("segment_events"))
    totals: dict[str, int] = {}
    for counter in query["counters"]:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + counter.committed
    return totals


def test_two_runs_with_reordered_input_give_the_same_records_and_counters():
    first = _run(_transitions())
    second = _run(_reordered(_transitions(), seed=7))
    expected_counters = {
        "events_formatted": 4,
        "events_by_status_realized": 3,
        "events_by_status_existing": 1,
        "events_by_status_exited": 1,
    }
    assert {k: v for k, v in _counters(first).items() if v} == expected_counters
    assert {k: v for k, v in _counters(second).items() if v} == expected_counters


def test_expected_records_are_distinct_and_hash_the_right_emails():
    records = _expected_records()
    events = [json.loads(data) for _, data in records]
    bob = hashlib.sha256("böb@example.com".encode()).hexdigest()
    assert events[2]["identityMap"]["email_lc_sha256"] == [{"id": bob}]
    assert events[3] == {
        "eventId": events[3]["eventId"],
        "identityMap": {"ecid": [{"id": "3"}]},
        "segmentMembership": {},
    }
    assert len({data for _, data in records}) == len(records)


# ------------------------------------------------------- events nobody can act on

# Only hashed e-mails leave the job; a profile known by an ECID alone has no identity
# in the output namespaces.
EMAIL_ONLY = {
    "segments": [{"id": "seg-1"}],
    "identities": {"include": ["email_lc_sha256"], "hash": {"email": "email_lc_sha256"}},
}
NO_OUTPUT_IDENTITY = (
    "ecid:9",
    {
        "snapshot_ms": T1,
        "segments": {"ups": {"seg-1": ["realized", T1]}},
        "identities": {"ecid": ["9"]},
        "attributes": {},
    },
)
WITH_EMAIL = (
    "email:ann@example.com",
    {
        "snapshot_ms": T1,
        "segments": {"ups": {"seg-1": ["realized", T1]}},
        "identities": {"email": ["ann@example.com"], "ecid": ["1"]},
        "attributes": {},
    },
)


def _run_config(config, transitions):
    pipeline = test_pipeline.TestPipeline(runner=OfflineDirectRunner())
    records = (pipeline | Create(transitions, reshuffle=False) | FormatSegmentEvents(config)).events
    expected = [
        (hashlib.sha256(key.encode("utf-8")).hexdigest(), format_event(key, transition, config))
        for key, transition in transitions
        if config.send_without_identity or key != NO_OUTPUT_IDENTITY[0]
    ]

    def check(actual):
        if sorted(actual) != sorted(expected):
            raise BeamAssertException(f"records differ:\n{sorted(actual)}\n!=\n{sorted(expected)}")

    assert_that(records, check)
    result = pipeline.run()
    result.wait_until_finish()
    return {k: v for k, v in _counters(result).items() if v}


def test_a_profile_without_an_output_identity_is_excluded_and_counted():
    config = parse_config(EMAIL_ONLY)
    counters = _run_config(config, [NO_OUTPUT_IDENTITY, WITH_EMAIL])
    assert counters == {
        "events_formatted": 1,
        "events_by_status_realized": 1,
        "events_excluded_no_identity": 1,
    }


def test_send_without_identity_keeps_them_with_an_empty_identity_map():
    config = parse_config(dict(EMAIL_ONLY, send_without_identity=True))
    counters = _run_config(config, [NO_OUTPUT_IDENTITY, WITH_EMAIL])
    assert counters == {"events_formatted": 2, "events_by_status_realized": 2}
    kept = json.loads(format_event(*NO_OUTPUT_IDENTITY, config))
    assert kept["identityMap"] == {}
