"""The soak at full size (``bench/soak.py``): only with ``pytest -m soak`` (~15 minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.soak]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_soak_half_a_million_events_through_faults(tmp_path):
    figures_path = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "bench/soak.py", "--json", str(figures_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    print(result.stdout)
    assert figures_path.exists(), result.stderr
    figures = json.loads(figures_path.read_text())
    assert figures["events_expected"] >= 500_000
    assert figures["exit_code"] == 0, figures.get("stderr_tail")
    # Nothing lost: every event on the stream, or dead-lettered with its error.
    assert figures["lost"] == 0 and figures["unexpected"] == 0
    assert figures["events_delivered"] + figures["dead_lettered"] >= figures["events_expected"]
    # Order per profile kept; duplicates only as byte-identical repeats of an eventId.
    assert figures["problems"] == {}
    # The faults really happened.
    assert figures["throttled_records"] >= 0.2 * figures["events_expected"]
    assert figures["injected"].get("http_500", 0) > 0
    assert figures["injected"].get("reset", 0) > 0
    assert figures["injected"].get("reset_after_forward", 0) > 0
    # Memory flat while sending: bounded buffers, whatever the number of events.
    assert figures["rss_growth_mib_last_3_quarters"] <= 64, figures["rss_mib_samples"]
    assert result.returncode == 0
