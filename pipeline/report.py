"""``--report PATH``: the run's counts per snapshot and segment, as JSON and one HTML page.

The job sums the report's facts in the pipeline (:mod:`transforms.report.facts`) and
writes them under a facts prefix; after the run (after every run of a split backfill)
this module reads them back, adds the run summary, and writes ``PATH.json`` and
``PATH.html`` (:mod:`pipeline.report_page`). The facts files are then removed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipeline.report_page import render_page
from transforms.config import ActivationConfig
from transforms.events.timestamps import format_timestamp
from transforms.segments.guard import MIN_TRACKED_PROFILES

_LOGGER = logging.getLogger(__name__)
REPORT_VERSION = 1
_EXIT_KINDS = ("status", "disappearance", "tombstone")


def read_facts(prefix: str) -> Counter:
    """Sums the facts of every facts file under ``prefix`` (all runs of a backfill)."""
    facts: Counter = Counter()
    for path in _matched(prefix):
        with FileSystems.open(path) as handle:
            for line in handle.read().decode("utf-8").splitlines():
                if line.strip():
                    key, count = json.loads(line)
                    facts[tuple(key)] += count
    return facts


def remove_facts(prefix: str) -> None:
    """Deletes the facts files under ``prefix``."""
    paths = _matched(prefix)
    if paths:
        FileSystems.delete(paths)


def _matched(prefix: str) -> list[str]:
    matches = FileSystems.match([prefix + "*"])[0].metadata_list
    return sorted(m.path for m in matches)


def build_report(
    facts: Counter,
    *,
    config: ActivationConfig,
    summary: Sequence[tuple[str, Any]],
    inputs: Sequence[str],
    baseline_times: Iterable[int] = (),
    dry_run: bool = False,
    allow_mass_exit: bool = False,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (the layout is documented in docs/report.md).

    Args:
        facts: The summed facts of the run(s).
        config: The activation config (segment names, the guard's fraction).
        summary: The run summary rows ``(label, value)``.
        inputs: The input patterns.
        baseline_times: Snapshot times that were baselines (they send nothing).
        dry_run: Nothing was sent.
        allow_mass_exit: ``--allow_mass_exit`` was given.
    """
    baselines = set(baseline_times)
    times = sorted({key[1] for key in facts if key[0] in ("snapshot", "segment", "guard")})
    snapshots = [
        _snapshot_entry(facts, t, t in baselines, config.max_exit_fraction, allow_mass_exit)
        for t in times
    ]
    segments = []
    for namespace, seg_id in _segment_ids(facts, config):
        mapping = config.segment(namespace, seg_id)
        rows = []
        for t in times:
            counts = {k: facts.get(("segment", t, namespace, seg_id, k), 0) for k in _KINDS}
            exits = {kind: counts[f"exited_{kind}"] for kind in _EXIT_KINDS}
            rows.append(
                {
                    "snapshot": format_timestamp(t),
                    "baseline": t in baselines,
                    "realized": counts["realized"],
                    "exited": sum(exits.values()),
                    **{f"exited_by_{kind}": exits[kind] for kind in _EXIT_KINDS},
                    "members_after": counts["members"],
                }
            )
        segments.append(
            {
                "namespace": namespace,
                "id": seg_id,
                "name": mapping.name if mapping is not None else None,
                "snapshots": rows,
            }
        )
    events = sum(v for k, v in facts.items() if k[0] == "snapshot" and k[2] == "events")
    failed = facts.get(("profiles_failed",), 0)
    namespaces = sorted({key[1] for key in facts if key[0] == "identities"})
    identities = []
    for namespace in namespaces:
        sent = facts.get(("identities", namespace, "sent"), 0)
        lost = facts.get(("identities", namespace, "failed"), 0)
        identities.append(
            {
                "namespace": namespace,
                "activated": sent - lost,
                "failed": lost,
                "excluded": facts.get(("identities", namespace, "excluded"), 0),
            }
        )
    dead_letters = [
        {"stage": key[1], "reason": key[2], "count": count}
        for key, count in sorted(facts.items())
        if key[0] == "dead_letters"
    ]
    return {
        "report_version": REPORT_VERSION,
        "generated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dry_run": dry_run,
        "inputs": list(inputs),
        "mass_exit_guard": {
            "max_exit_fraction": config.max_exit_fraction,
            "min_tracked_profiles": MIN_TRACKED_PROFILES,
            "allow_mass_exit": allow_mass_exit,
        },
        "snapshots": snapshots,
        "segments": segments,
        "activation": {
            "profiles_activated": events - failed,
            "profiles_failed": failed,
            "identities": identities,
        },
        "dead_letters": dead_letters,
        "summary": {label: value for label, value in summary},
    }


_KINDS = ("realized", "members", *(f"exited_{kind}" for kind in _EXIT_KINDS))


def _segment_ids(facts: Counter, config: ActivationConfig) -> list[tuple[str, str]]:
    """Mapped segments in config order, then any other segment the facts name."""
    ordered = [(m.namespace, m.id) for m in config.segments or ()]
    seen = set(ordered)
    extra = sorted({(k[2], k[3]) for k in facts if k[0] == "segment"} - seen)
    return ordered + extra


def _snapshot_entry(
    facts: Counter, t: int, baseline: bool, max_fraction: float, allowed: bool
) -> dict[str, Any]:
    tracked = facts.get(("guard", t, "tracked"), 0)
    absent = facts.get(("guard", t, "absent"), 0)
    fraction = absent / tracked if tracked else 0.0
    if baseline:
        verdict = "baseline"
    elif tracked >= MIN_TRACKED_PROFILES and fraction > max_fraction:
        verdict = "mass exit allowed" if allowed else "mass exit: the run stops"
    elif tracked == 0:
        verdict = "first sight (nothing tracked before it)"
    elif tracked < MIN_TRACKED_PROFILES:
        verdict = f"not judged (fewer than {MIN_TRACKED_PROFILES} tracked profiles)"
    else:
        verdict = "ok"
    return {
        "snapshot": format_timestamp(t),
        "snapshot_ms": t,
        "baseline": baseline,
        "records": facts.get(("snapshot", t, "records"), 0),
        "events": facts.get(("snapshot", t, "events"), 0),
        "events_excluded_no_identity": facts.get(("snapshot", t, "excluded"), 0),
        "mass_exit_guard": {
            "tracked": tracked,
            "absent": absent,
            "fraction": round(fraction, 6),
            "verdict": verdict,
        },
    }


def stopping_snapshots(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The snapshots whose mass-exit verdict would stop a real run."""
    return [s for s in report["snapshots"] if s["mass_exit_guard"]["verdict"].endswith("run stops")]


def write_report(path: str, report: dict[str, Any]) -> tuple[str, str]:
    """Writes ``PATH.json`` and ``PATH.html``; returns their paths."""
    json_path, html_path = f"{path}.json", f"{path}.html"
    for target, text in (
        (json_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n"),
        (html_path, render_page(report)),
    ):
        with FileSystems.create(target) as handle:
            handle.write(text.encode("utf-8"))
    return json_path, html_path
