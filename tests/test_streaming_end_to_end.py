"""Streaming, as a user runs it: `python -m pipeline --streaming` on the DirectRunner.

The scenario (its timeline and the hand-derived expected events) is in
:mod:`tests.support.landing`.
"""

from __future__ import annotations

import pytest

from tests.support.landing import SNAPSHOTS, events_by_profile, merge, run_landing_scenario

pytestmark = pytest.mark.integration


def test_snapshots_landing_over_time_stream_their_events_in_order(tmp_path, kinesis_stream):
    client, stream = kinesis_stream
    records, lines, code = run_landing_scenario(tmp_path, client, stream)
    assert code == 0
    assert events_by_profile(records) == merge(*SNAPSHOTS, "end")
    # --output_path in streaming: the same bytes as the stream, one event per line.
    assert sorted(lines) == sorted(r["data"] for r in records)
