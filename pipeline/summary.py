"""The run summary: the job's counters in one vocabulary, each figure once."""

from __future__ import annotations

# The headline of the run summary: always shown, zero when a counter never moved.
_HEADLINE = (
    ("records read", "records_read"),
    ("profiles", "profiles_processed"),
    ("events", "events_formatted"),
    ("events excluded (no identity in the output namespaces)", "events_excluded_no_identity"),
    ("segment entries (realized)", "events_by_status_realized"),
    ("segment exits (exited)", "events_by_status_exited"),
    ("current memberships (existing)", "events_by_status_existing"),
    ("dead letters (input)", "records_dead_lettered"),
    ("dead letters (sink)", "kinesis_dead_lettered"),
    ("records sent to Kinesis", "kinesis_records_sent"),
    ("PutRecords requests", "kinesis_requests"),
    ("retries", "kinesis_retries"),
    ("throttled records", "kinesis_throttled_records"),
)


# Counted by the read steps, which every runner reports (zero when never moved).
_READ_SIDE = frozenset(("records_read", "records_dead_lettered"))


def summary_rows(counters: dict[str, int], complete: bool = True) -> list[tuple[str, object]]:
    """The run summary (Beam counters of the job) as ``(label, value)`` rows.

    Args:
        counters: The job's counters by name.
        complete: Whether the runner reports the counters of every step. The local
            streaming runner (Beam's BundleBasedDirectRunner) drops those of the steps
            that run from event-time timers (the transitions and everything after them):
            such a figure is shown as not reported, never as 0.
    """
    if not counters:
        return []
    missing = "not reported by this runner (see the event files or the stream)"
    shown = {metric for _, metric in _HEADLINE}
    rows: list[tuple[str, object]] = [
        (label, counters.get(metric, 0 if complete or metric in _READ_SIDE else missing))
        for label, metric in _HEADLINE
    ]
    rows += [(_label(name), counters[name]) for name in sorted(counters) if name not in shown]
    return rows


def print_summary(rows: list[tuple[str, object]]) -> None:
    """Prints the run summary rows to standard output."""
    print("Run summary:")
    if not rows:
        print("  (the runner reported no metrics)")
        return
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")


# Every other counter of the job, in words (shown after the headline when it moved).
_LABELS = {
    "absence_exits_withheld": "disappearance exits withheld (incomplete snapshot)",
    "dead_letters_state_kept": "bad records whose profile kept its state",
    "duplicate_records_merged": "duplicate records merged",
    "late_records": "late records (not applied)",
    "mass_exit_held": "exits held by the mass-exit guard",
    "profiles_absent_exits": "profiles exited by absence",
    "profiles_deleted": "profiles deleted (tombstones)",
    "profiles_kept_on_bad_record": "profiles kept on a bad record",
    "records_skipped_steady": "records equal to the day before (not parsed)",
    "records_skipped_quiet": "records of profiles unchanged since the baseline (not parsed)",
    "reread_records_ignored": "re-read records ignored",
    "snapshot_files_landed": "snapshot files landed",
    "trigger_events": "events from attribute or identity changes",
    "ttl_exits_not_proven_at_stop": "TTL exits not proven when the run stopped",
    "ttl_exits_unproven": "TTL exits withheld (incomplete snapshot)",
    "watch_files_skipped": "files skipped by the watch",
    "kinesis_bytes_sent": "bytes sent to Kinesis",
    "kinesis_user_records_sent": "events sent in aggregated records",
    "kinesis_wrong_shard_resent": "events re-sent after a reshard (aggregate in the wrong shard)",
}


def _label(name: str) -> str:
    return _LABELS.get(name, name.replace("_", " "))
