"""ComputeStreamingTransitions: TestStream runs with explicit watermarks."""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing import test_pipeline, test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from pipeline.runners import OfflineDirectRunner
from tests.support.dead_letter_schema import validate_dead_letter
from transforms.config import parse_config
from transforms.segments.transitions import ComputeStreamingTransitions

DAY = 86_400_000
HOUR = 3_600_000
T1, T2, T3, T4, T5 = (1706659200000 + i * DAY for i in range(5))  # 2024-01-31 .. 2024-02-04
IDS = {"email": ["p@example.com"]}


def config(ttl=None, fraction=0.5):
    return parse_config(
        {
            "segments": [{"id": "a"}, {"id": "b"}],
            "absent_profile_ttl": ttl,
            "max_exit_fraction": fraction,
        }
    )


def rec(snapshot_ms, segments=None, **flags):
    return {
        "snapshot_ms": snapshot_ms,
        "baseline": False,
        "deleted": flags.get("deleted", False),
        "segments": {"ups": segments} if segments else {},
        "identities": flags.get("identities", IDS),
        "attributes": {},
        "file": flags.get("file", f"s={snapshot_ms}/part-0.json"),
    }


def ev(snapshot_ms, segments, identities=IDS):
    return {
        "snapshot_ms": snapshot_ms,
        "segments": {"ups": segments},
        "identities": identities,
        "attributes": {},
    }


def arrive(*pairs):
    """Elements stamped with their snapshot time, as the streaming reader emits them."""
    return [TimestampedValue((key, record), record["snapshot_ms"] / 1000) for key, record in pairs]


def watermark(ms):
    return Timestamp(micros=ms * 1000)


def run_stream(stream, cfg, expected, dead=(), allow_mass_exit=False):
    """Runs the stream; asserts transitions (non-empty) and dead letters as (reason, file).

    Every dead letter is also checked against schemas/dead_letter.schema.json.

    Streams advance the watermark past their last timers before it goes to infinity:
    the BundleBasedDirectRunner's user timers do not hold the watermark, so outputs of
    timers that only fire at infinity can miss the end-of-window assertion.
    """
    assert expected, "a test must expect some transitions"
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    pipeline = test_pipeline.TestPipeline(runner=OfflineDirectRunner(), options=options)
    result = (
        pipeline
        | stream
        | ComputeStreamingTransitions(cfg, allow_mass_exit=allow_mass_exit)
    )
    assert_that(result.transitions, equal_to(expected), label="transitions")
    letters = result.dead_letters | beam.Map(_checked, ("stage", "reason", "file"))
    assert_that(letters, equal_to(list(dead)), label="dead letters")
    # No metric assertions here: the BundleBasedDirectRunner (TestStream) drops most
    # user counters of streaming runs; the batch tests check the metrics.
    pipeline.run().wait_until_finish()


def _checked(letter: dict, fields: tuple[str, ...]) -> tuple:
    """A dead letter's ``fields``, once it is checked against the schema."""
    validate_dead_letter(letter)
    return tuple(letter[field] for field in fields)


def test_state_carries_across_snapshots_arriving_out_of_order():
    stream = (
        test_stream.TestStream()
        # T2's file lands before T1's: both are buffered until the watermark passes them
        .add_elements(arrive(("p1", rec(T2, {"a": ["existing", 10], "b": ["realized", 20]}))))
        .add_elements(
            arrive(
                ("p1", rec(T1, {"a": ["realized", 10]})), ("p2", rec(T1, {"b": ["realized", 5]}))
            )
        )
        .advance_watermark_to(watermark(T2 + HOUR))
        .add_elements(
            arrive(("p1", rec(T3, {"b": ["exited", 30]})), ("p2", rec(T3, {"b": ["existing", 5]})))
        )
        .advance_watermark_to(watermark(T3 + HOUR))
        .advance_watermark_to_infinity()
    )
    run_stream(
        stream,
        config(),
        expected=[
            ("p1", ev(T1, {"a": ["realized", 10]})),
            ("p1", ev(T2, {"b": ["realized", 20]})),
            ("p1", ev(T3, {"a": ["exited", T3], "b": ["exited", 30]})),
            ("p2", ev(T1, {"b": ["realized", 5]})),
        ],
    )


def test_absent_profile_ttl_exits_at_last_seen_plus_ttl():
    stream = (
        test_stream.TestStream()
        .add_elements(
            arrive(("p1", rec(T1, {"a": ["realized", 1]})), ("p2", rec(T1, {"b": ["realized", 2]})))
        )
        .advance_watermark_to(watermark(T1 + HOUR))
        # p2 is seen exactly at its deadline (T1 + 2 days): it stays
        .add_elements(arrive(("p2", rec(T3, {"b": ["realized", 2]}))))
        .advance_watermark_to(watermark(T4 + HOUR))
        # p1 expired at T3 and comes back at T5: a re-entry
        .add_elements(arrive(("p1", rec(T5, {"a": ["realized", None]}))))
        .advance_watermark_to(watermark(T5 + HOUR))
        # past every deadline (T5 + 2 days) before the stream ends
        .advance_watermark_to(watermark(T5 + 3 * DAY))
        .advance_watermark_to_infinity()
    )
    run_stream(
        stream,
        config(ttl="2d"),
        expected=[
            ("p1", ev(T1, {"a": ["realized", 1]})),
            ("p1", ev(T3, {"a": ["exited", T3]})),
            ("p1", ev(T5, {"a": ["realized", T5]})),
            ("p2", ev(T1, {"b": ["realized", 2]})),
            ("p2", ev(T5, {"b": ["exited", T5]})),
            ("p1", ev(T5 + 2 * DAY, {"a": ["exited", T5 + 2 * DAY]})),
        ],
    )


def test_late_and_redelivered_records():
    late_file = "late/part-9.json"
    stream = (
        test_stream.TestStream()
        .add_elements(arrive(("p1", rec(T1, {"a": ["realized", 1]}))))
        .add_elements(arrive(("p1", rec(T2, {"a": ["realized", 1], "b": ["realized", 2]}))))
        .advance_watermark_to(watermark(T2 + HOUR))
        # the same T2 record again (another delivery of the file): ignored silently
        .add_elements(
            arrive(("p1", rec(T2, {"a": ["realized", 1], "b": ["realized", 2]}, file="again.json")))
        )
        # an older snapshot, and different content for the processed T2: late
        .add_elements(
            arrive(("p1", rec(T1, {}, file=late_file)), ("p1", rec(T2, {}, file=late_file)))
        )
        .advance_watermark_to(watermark(T3 - HOUR))
        .add_elements(arrive(("p1", rec(T3, {"a": ["realized", 1], "b": ["realized", 2]}))))
        .advance_watermark_to_infinity()
    )
    # the identical re-delivery is not in the dead letter: only the two late records
    run_stream(
        stream,
        config(),
        expected=[
            ("p1", ev(T1, {"a": ["realized", 1]})),
            ("p1", ev(T2, {"b": ["realized", 2]})),
        ],
        dead=[("transitions", "late_snapshot", late_file)] * 2,
    )


def test_tombstone_exits_with_last_known_identities():
    stream = (
        test_stream.TestStream()
        .add_elements(arrive(("p1", rec(T1, {"a": ["realized", 1]}))))
        .advance_watermark_to(watermark(T1 + HOUR))
        .add_elements(arrive(("p1", rec(T2, {}, deleted=True, identities={}))))
        .advance_watermark_to(watermark(T2 + HOUR))
        .advance_watermark_to_infinity()
    )
    run_stream(
        stream,
        config(ttl="1d"),
        expected=[("p1", ev(T1, {"a": ["realized", 1]})), ("p1", ev(T2, {"a": ["exited", T2]}))],
    )


def truncated_stream(tracked=150, kept=40):
    """``tracked`` profiles at T1; only ``kept`` of them at T2; for a TTL of 1 day.

    The watermark then passes T3: the ``kept`` profiles expire too (at T3), but 40
    tracked profiles are below the guard's minimum of 100.
    """
    first = arrive(*[(f"p{i}", rec(T1, {"a": ["realized", 1]})) for i in range(tracked)])
    second = arrive(*[(f"p{i}", rec(T2, {"a": ["realized", 1]})) for i in range(kept)])
    return (
        test_stream.TestStream()
        .add_elements(first)
        .advance_watermark_to(watermark(T1 + HOUR))
        .add_elements(second)
        .advance_watermark_to(watermark(T2 + HOUR))
        .advance_watermark_to(watermark(T3 + HOUR))
        .advance_watermark_to_infinity()
    )


def test_mass_exit_is_held_in_streaming(caplog):
    entries = [(f"p{i}", ev(T1, {"a": ["realized", 1]})) for i in range(150)]
    entries += [(f"p{i}", ev(T3, {"a": ["exited", T3]})) for i in range(40)]
    with caplog.at_level(logging.WARNING, logger="transforms.segments.hold"):
        run_stream(
            truncated_stream(),
            config(ttl="1d"),
            expected=entries,
            dead=[("transitions", "mass_exit_held", "")] * 110,
        )
    warnings = [r.getMessage() for r in caplog.records if "mass exit held" in r.getMessage()]
    assert warnings and "2024-01-31T00:00:00Z" in warnings[0] and "110 of the 150" in warnings[0]


def test_mass_exit_allowed_in_streaming():
    expected = [(f"p{i}", ev(T1, {"a": ["realized", 1]})) for i in range(150)]
    expected += [(f"p{i}", ev(T2, {"a": ["exited", T2]})) for i in range(40, 150)]
    expected += [(f"p{i}", ev(T3, {"a": ["exited", T3]})) for i in range(40)]
    run_stream(truncated_stream(), config(ttl="1d"), expected=expected, allow_mass_exit=True)


# ------------------------------------------- the hold: sharded exits, proven absences


def test_decide_withholds_unproven_and_mass_exits():
    from transforms.segments.hold import INCOMPLETE_SNAPSHOT, MASS_EXIT_HELD, SEND, decide

    assert decide(150, 110, None, False, 0.5, False) == (MASS_EXIT_HELD, True)
    assert decide(150, 110, None, False, 0.5, True) == (SEND, True)
    assert decide(150, 10, None, False, 0.5, False) == (SEND, False)
    assert decide(50, 50, None, False, 0.5, False) == (SEND, False)  # under 100 tracked
    assert decide(150, 10, None, True, 0.5, True) == (INCOMPLETE_SNAPSHOT, False)
    # A withholding verdict stays for exits decided later.
    assert decide(150, 11, MASS_EXIT_HELD, False, 0.5, False) == (MASS_EXIT_HELD, True)
    assert decide(150, 11, INCOMPLETE_SNAPSHOT, False, 0.5, False)[0] == INCOMPLETE_SNAPSHOT


def test_the_exits_of_one_snapshot_are_spread_over_many_keys():
    from transforms.segments.tags import EXIT_SHARDS, exit_shard

    shards = [exit_shard(f"email:p{i}@example.com") for i in range(2000)]
    assert len(set(shards)) == EXIT_SHARDS
    assert max(shards.count(s) for s in set(shards)) < 2000 / EXIT_SHARDS * 2
    assert exit_shard("ecid:1") == 33  # crc32: the same in every process (no hash seed)


def _unknown_letter(snapshot_ms):
    return {
        "stage": "read",
        "reason": "invalid_json",
        "error": "line 1: not JSON",
        "file": f"s={snapshot_ms}/part-0.json",
        "raw": "{broken",
        "profile_state": "unknown",
        "snapshot_ms": snapshot_ms,
    }


def _run_with_letters(stream, cfg, expected, dead):
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    pipeline = test_pipeline.TestPipeline(runner=OfflineDirectRunner(), options=options)
    both = pipeline | stream | beam.Partition(lambda e, _n: 0 if isinstance(e, tuple) else 1, 2)
    result = both[0] | ComputeStreamingTransitions(cfg, read_dead_letters=both[1])
    assert_that(result.transitions, equal_to(expected), label="transitions")
    letters = result.dead_letters | beam.Map(_checked, ("stage", "reason"))
    assert_that(letters, equal_to(list(dead)), label="dead letters")
    pipeline.run().wait_until_finish()


def _two_profiles_unseen_after_t1(letter_at):
    events = arrive(
        ("p1", rec(T1, {"a": ["realized", 1]})), ("p2", rec(T1, {"a": ["realized", 1]}))
    )
    stream = test_stream.TestStream().add_elements(events)
    stream = stream.advance_watermark_to(watermark(T1 + HOUR))
    stream = stream.add_elements(arrive(("p3", rec(T2, {"b": ["realized", 1]}))))
    if letter_at is not None:
        stream = stream.add_elements(
            [TimestampedValue(_unknown_letter(letter_at), letter_at / 1000)]
        )
    return (
        stream.advance_watermark_to(watermark(T2 + HOUR))
        .advance_watermark_to(watermark(T4 + HOUR))
        .advance_watermark_to_infinity()
    )


def test_an_incomplete_snapshot_within_the_ttl_withholds_the_ttl_exits():
    # p1 and p2 are unseen after T1; T2 had a line that names no profile: either may be
    # that line, so their TTL exits (at T1 + 2 days) are not proven.
    entries = [("p1", ev(T1, {"a": ["realized", 1]})), ("p2", ev(T1, {"a": ["realized", 1]}))]
    entries += [("p3", ev(T2, {"b": ["realized", 1]}))]
    p3_exit = [("p3", ev(T4, {"b": ["exited", T4]}))]
    _run_with_letters(
        _two_profiles_unseen_after_t1(letter_at=T2),
        config(ttl="2d"),
        expected=entries + p3_exit,
        dead=[("transitions", "incomplete_snapshot")] * 2,
    )


def test_without_an_incomplete_snapshot_the_ttl_exits_are_sent():
    expected = [("p1", ev(T1, {"a": ["realized", 1]})), ("p2", ev(T1, {"a": ["realized", 1]}))]
    expected += [("p3", ev(T2, {"b": ["realized", 1]}))]
    expected += [("p1", ev(T3, {"a": ["exited", T3]})), ("p2", ev(T3, {"a": ["exited", T3]}))]
    expected += [("p3", ev(T4, {"b": ["exited", T4]}))]
    _run_with_letters(_two_profiles_unseen_after_t1(None), config(ttl="2d"), expected, dead=[])


def test_a_damaged_record_of_a_known_profile_keeps_it_alive_in_streaming():
    # p1's record at T2 was damaged but named p1: the read step turns it into a "keep"
    # record. p1 is present at T2 (no TTL exit at T1 + 1 day); p2, really absent, exits.
    from transforms.snapshots.profiles import keep_record

    stream = (
        test_stream.TestStream()
        .add_elements(
            arrive(("p1", rec(T1, {"a": ["realized", 1]})), ("p2", rec(T1, {"a": ["realized", 1]})))
        )
        .advance_watermark_to(watermark(T1 + HOUR))
        .add_elements(arrive(("p1", keep_record(T2, "s=T2/part-0.json"))))
        .advance_watermark_to(watermark(T2 + HOUR))
        .add_elements(arrive(("p1", rec(T3, {"a": ["realized", 1]}))))
        .advance_watermark_to(watermark(T3 + HOUR))
        .advance_watermark_to(watermark(T4 + 2 * HOUR))
        .advance_watermark_to_infinity()
    )
    run_stream(
        stream,
        config(ttl="1d"),
        expected=[
            ("p1", ev(T1, {"a": ["realized", 1]})),
            ("p2", ev(T1, {"a": ["realized", 1]})),
            ("p2", ev(T2, {"a": ["exited", T2]})),
            ("p1", ev(T4, {"a": ["exited", T4]})),
        ],
    )


# ----------------------------------------------- a stop is not an absence (drain)


def _run_with_landed(stream, cfg, expected):
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    pipeline = test_pipeline.TestPipeline(runner=OfflineDirectRunner(), options=options)
    both = pipeline | stream | beam.Partition(lambda e, _n: 0 if isinstance(e, tuple) else 1, 2)
    result = both[0] | ComputeStreamingTransitions(cfg, landed_snapshots=both[1])
    assert_that(result.transitions, equal_to(expected), label="transitions")
    pipeline.run().wait_until_finish()


def _landed(snapshot_ms):
    return TimestampedValue(snapshot_ms, snapshot_ms / 1000)


def test_a_drain_sends_no_ttl_exit_that_no_snapshot_proved():
    # p1 and p2 at T1; p2 again at T2; then the job stops (the watermark jumps to the
    # end of time). p1's deadline T1 + 1 day = T2 was reached by a landed snapshot (T2):
    # its exit is proven. p2's deadline T3 was passed by the drain only: no exit.
    stream = (
        test_stream.TestStream()
        .add_elements(
            arrive(("p1", rec(T1, {"a": ["realized", 1]})), ("p2", rec(T1, {"b": ["realized", 2]})))
        )
        .add_elements([_landed(T1)])
        .advance_watermark_to(watermark(T1 + HOUR))
        .add_elements(arrive(("p2", rec(T2, {"b": ["realized", 2]}))))
        .add_elements([_landed(T2)])
        .advance_watermark_to(watermark(T2 + HOUR))
        .advance_watermark_to(watermark(T4))  # the drain: no snapshot after T2
        .advance_watermark_to_infinity()
    )
    _run_with_landed(
        stream,
        config(ttl="1d"),
        expected=[
            ("p1", ev(T1, {"a": ["realized", 1]})),
            ("p2", ev(T1, {"b": ["realized", 2]})),
            ("p1", ev(T2, {"a": ["exited", T2]})),
        ],
    )


def test_a_later_snapshot_proves_the_ttl_exit():
    # The same, but a snapshot at T3 (p2's deadline) lands: p2 exits at T3.
    stream = (
        test_stream.TestStream()
        .add_elements(
            arrive(("p1", rec(T1, {"a": ["realized", 1]})), ("p2", rec(T1, {"b": ["realized", 2]})))
        )
        .add_elements([_landed(T1)])
        .advance_watermark_to(watermark(T1 + HOUR))
        .add_elements(arrive(("p2", rec(T2, {"b": ["realized", 2]}))))
        .add_elements([_landed(T2)])
        .advance_watermark_to(watermark(T2 + HOUR))
        .add_elements(arrive(("p3", rec(T3, {"a": ["realized", 3]}))))
        .add_elements([_landed(T3)])
        .advance_watermark_to(watermark(T3 + HOUR))
        .advance_watermark_to(watermark(T3 + 2 * HOUR))
        .advance_watermark_to_infinity()
    )
    _run_with_landed(
        stream,
        config(ttl="1d"),
        expected=[
            ("p1", ev(T1, {"a": ["realized", 1]})),
            ("p2", ev(T1, {"b": ["realized", 2]})),
            ("p1", ev(T2, {"a": ["exited", T2]})),
            ("p3", ev(T3, {"a": ["realized", 3]})),
            ("p2", ev(T3, {"b": ["exited", T3]})),
        ],
    )
