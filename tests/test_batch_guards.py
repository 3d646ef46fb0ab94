"""The batch guards applied alone (transforms/segments/batch_guards.py)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.config import parse_config
from transforms.segments.batch_guards import BadRecordsGuard, MassExitGuard
from transforms.segments.guard import BadRecordsError, MassExitError

T1, T2 = 1_700_000_000_000, 1_700_086_400_000
CONFIG = parse_config({"segments": "*", "max_exit_fraction": 0.5})


def unknown(snapshot_ms):
    return {"stage": "read", "reason": "no_profile_key", "error": "x", "file": "f",
            "raw": "{}", "profile_state": "unknown", "snapshot_ms": snapshot_ms}


def kept():
    return {"stage": "read", "reason": "invalid_record", "error": "x", "file": "f",
            "raw": "{}", "profile_state": "kept"}


def test_bad_records_guard_names_the_incomplete_snapshots():
    with TestPipeline() as p:
        letters = p | beam.Create([unknown(T1), unknown(T1), kept(), unknown(T2)])
        assert_that(letters | BadRecordsGuard(3), equal_to([frozenset({T1, T2})]))


def test_bad_records_guard_fails_the_run_past_the_limit():
    with pytest.raises(Exception, match="could not be read") as failure:
        with TestPipeline() as p:
            _ = p | beam.Create([unknown(T1), unknown(T2)]) | BadRecordsGuard(1)
    assert isinstance(failure.value, BadRecordsError) or "BadRecordsError" in repr(failure.value)


class _Counts(beam.DoFn):
    """Each element is one profile's (tracked before T2, absent from T2)."""

    def process(self, element, snapshots):
        del snapshots
        tracked, absent = element
        yield (T2, (tracked, absent))


def _guard(p, groups, **flags):
    snapshots = beam.pvalue.AsSingleton(p | "Times" >> beam.Create([{T1: False, T2: False}]))
    return p | beam.Create(groups) | MassExitGuard(_Counts(), snapshots, CONFIG, **flags)


def test_mass_exit_guard_passes_a_normal_day_and_counts_it():
    with TestPipeline() as p:
        counts, verdict = _guard(p, [(1, 0)] * 300 + [(1, 1)] * 10,
                                 allow_mass_exit=False, dry_run=False)
        assert_that(counts, equal_to([{T2: [310, 10]}]), label="Counts")
        assert_that(verdict, equal_to([True]), label="Verdict")


def test_mass_exit_guard_stops_a_mass_exit_unless_dry_run():
    with pytest.raises(Exception, match="mass exit guard") as failure:
        with TestPipeline() as p:
            _guard(p, [(1, 1)] * 300, allow_mass_exit=False, dry_run=False)
    assert isinstance(failure.value, MassExitError) or "MassExitError" in repr(failure.value)
    with TestPipeline() as p:
        counts, verdict = _guard(p, [(1, 1)] * 300, allow_mass_exit=False, dry_run=True)
        assert_that(verdict, equal_to([True]))
