"""Progress lines for long runs, printed by the process that does the work.

The driver asks for progress with :func:`configure` (``--progress_interval``, or a
terminal on standard error). That sets :data:`ENV` too, so the local runner's worker
processes (``--direct_running_mode=multi_processing``), which inherit the driver's
environment, print their own lines; workers on a cluster do not have it and stay
silent (their figures are in the run summary). Counting is one dict update per call
on the hot path, and nothing at all when progress is off.

A line, every interval, when something moved::

    progress 40 s: 912,345 records read; 120,000 of 300,000 profiles; 80,123 events;
    80,000 sent to Kinesis (12 throttled); 2,050 events/s; about 1 min 28 s left

In streaming (``per_snapshot``), also one line per snapshot whose events moved in the
interval (usually one per snapshot: a snapshot's transitions come in one burst)::

    snapshot 2024-01-02T00:00:00Z: 131 events
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time

ENV = "SEGMENT_EVENTS_PROGRESS_INTERVAL"
_NAMES = ("records_read", "profiles_total", "profiles", "events", "records_sent", "throttled")
# The Beam counters (namespace segment_events) that the lines show, by their name here.
# "profiles_total" is not a counter: the mass-exit guard's pass counts it with add().
SHOWN = {
    "records_read": "records_read",
    "profiles_processed": "profiles",
    "events_formatted": "events",
    "kinesis_records_sent": "records_sent",
    "kinesis_throttled_records": "throttled",
}

_counts: dict[str, int] = dict.fromkeys(_NAMES, 0)
_interval: float | None = None
_per_snapshot = False
_by_snapshot: dict[int, int] = {}
_lock = threading.Lock()
_thread: threading.Thread | None = None
_stop = threading.Event()


def configure(interval: float | None, per_snapshot: bool = False) -> None:
    """Turns progress lines on (every ``interval`` seconds) or off (``None``).

    Args:
        interval: Seconds between lines; ``None`` or 0: no lines.
        per_snapshot: Also a line per snapshot with its event count (streaming).
    """
    global _interval, _per_snapshot
    _interval = interval if interval and interval > 0 else None
    _per_snapshot = per_snapshot and _interval is not None
    if _interval is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = f"{_interval!r};{int(_per_snapshot)}"
    reset()


def reset() -> None:
    """Zeroes the counts (each run of a split backfill starts from zero)."""
    for name in _NAMES:
        _counts[name] = 0
    _by_snapshot.clear()


def _from_environment() -> None:
    global _interval, _per_snapshot
    value = os.environ.get(ENV)
    try:
        interval, _, per_snapshot = (value or "").partition(";")
        _interval = float(interval) if interval else None
        _per_snapshot = per_snapshot == "1"
    except ValueError:
        _interval = None


def add(name: str, n: int = 1) -> None:
    """Counts ``n`` more of ``name`` (one of ``_NAMES``) that is not a Beam counter;
    starts the printer on first use."""
    if _interval is None:
        return
    _counts[name] += n
    if _thread is None:
        _start()


def count(counter: str, n: int = 1, snapshot_ms: int | None = None) -> None:
    """Counts ``n`` more of a Beam counter the lines show (see :data:`SHOWN`); called
    by :class:`transforms.metrics.StepCounts`, not by DoFns."""
    if _interval is None:
        return
    name = SHOWN.get(counter)
    if name is None:
        return
    _counts[name] += n
    if snapshot_ms is not None and _per_snapshot:
        _by_snapshot[snapshot_ms] = _by_snapshot.get(snapshot_ms, 0) + n
    if _thread is None:
        _start()


def note(message: str) -> None:
    """Prints one event line (a landed folder, a processed snapshot) when progress is on."""
    if _interval is not None:
        print(message, file=sys.stderr, flush=True)


def enabled() -> bool:
    return _interval is not None


def _start() -> None:
    global _thread
    with _lock:
        if _thread is not None:
            return
        _stop.clear()
        _thread = threading.Thread(target=_run, name="progress", daemon=True)
        _thread.start()


def stop() -> None:
    """Stops the printer (the driver, after a run); counting goes on if still enabled."""
    global _thread
    _stop.set()
    thread, _thread = _thread, None
    if thread is not None:
        thread.join(timeout=5)


def _run() -> None:
    started = time.monotonic()
    last = dict(_counts)
    last_snapshots: dict[int, int] = {}
    last_time = started
    stopped = False
    while not stopped:
        stopped = _stop.wait(_interval or 10)
        now = time.monotonic()
        current = dict(_counts)
        snapshots = dict(_by_snapshot)
        if current != last and not stopped:
            print(format_line(current, last, now - last_time, now - started), file=sys.stderr)
        # On stop too: a snapshot's last events must not go unreported.
        for snapshot_ms in sorted(snapshots):
            if snapshots[snapshot_ms] != last_snapshots.get(snapshot_ms):
                count = snapshots[snapshot_ms]
                print(f"snapshot {_iso(snapshot_ms)}: {count:,} events", file=sys.stderr)
        sys.stderr.flush()
        last, last_snapshots, last_time = current, snapshots, now


def format_line(current: dict, last: dict, window_s: float, elapsed_s: float) -> str:
    """One progress line from the counts now and one interval ago."""
    parts = [f"{current['records_read']:,} records read"]
    total, done = current["profiles_total"], current["profiles"]
    if done:
        parts.append(f"{done:,} of {total:,} profiles" if total else f"{done:,} profiles")
    parts.append(f"{current['events']:,} events")
    if current["records_sent"] or current["throttled"]:
        parts.append(
            f"{current['records_sent']:,} sent to Kinesis ({current['throttled']:,} throttled)"
        )
    moving = "events" if current["events"] > last["events"] else "records_read"
    rate = (current[moving] - last[moving]) / window_s if window_s > 0 else 0.0
    parts.append(f"{rate:,.0f} {'events' if moving == 'events' else 'records'}/s")
    profile_rate = (done - last["profiles"]) / window_s if window_s > 0 else 0.0
    if total and done and profile_rate > 0 and total > done:
        parts.append(f"about {_duration((total - done) / profile_rate)} left")
    return f"progress {elapsed_s:.0f} s: " + "; ".join(parts)


def _iso(epoch_ms: int) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch_ms / 1000, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


_from_environment()
