"""Report facts: the counts a ``--report`` is made of, summed by key in the pipeline.

A fact is a ``(key, count)`` pair whose key is a tuple of plain values; the job sums
facts by key (:class:`SumReportFacts`) and writes one JSON line per key, so the report
costs one pass over the data on every runner, with no per-profile output. The steps
that know a fact count it per bundle and emit each key once per bundle.

Keys (``T``: snapshot time in epoch ms; ``ns``/``seg``: segment namespace and id):

=====================================  ==============================================
``("segment", T, ns, seg, kind)``      ``kind``: ``realized`` (entries sent),
                                       ``exited_status``, ``exited_disappearance``,
                                       ``exited_tombstone`` (exits sent, by cause),
                                       ``members`` (members after T, every profile)
``("snapshot", T, what)``              ``what``: ``records`` read, ``events`` formatted
                                       to send, ``excluded`` (no output identity)
``("guard", T, what)``                 ``tracked`` and ``absent`` of the mass-exit guard
``("identities", ns, outcome)``        ``sent`` (in formatted events), ``failed`` (in
                                       the sink's dead letters), ``excluded`` (of the
                                       profiles whose events were excluded)
``("dead_letters", stage, reason)``    dead letters of the run
``("profiles_failed",)``               events the sink dead-lettered
=====================================  ==============================================
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.io.textio import WriteToText
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

# The output tag under which DoFns emit their facts.
FACTS = "report_facts"
# Causes of an exit, as the transition steps tell them (see :func:`exit_cause`).
STATUS, DISAPPEARANCE, TOMBSTONE = "status", "disappearance", "tombstone"
# The transition key under which the batch replay tells the formatter an exit's cause
# (only with ``--report``; the event bytes never depend on it).
CAUSE = "exit_cause"
SINK_STAGE = "kinesis_sink"


def exit_cause(snapshot_ms: int, deleted_at: Mapping[int, bool]) -> str:
    """Why a batch transition at ``snapshot_ms`` exits memberships.

    Args:
        snapshot_ms: The transition's snapshot time.
        deleted_at: For each snapshot time with a record of the profile, whether that
            record is a tombstone.

    Returns:
        ``tombstone`` (a deleted record), ``status`` (a record that no longer holds the
        membership), or ``disappearance`` (no record in that snapshot).
    """
    if snapshot_ms not in deleted_at:
        return DISAPPEARANCE
    return TOMBSTONE if deleted_at[snapshot_ms] else STATUS


def count_members(facts: Counter, snapshot_ms: int, memberships: Mapping[str, Mapping]) -> None:
    """Counts the member entries of one profile's memberships after ``snapshot_ms``."""
    for namespace, by_id in memberships.items():
        for seg_id, entry in by_id.items():
            if entry[0] != "exited":
                facts[("segment", snapshot_ms, namespace, seg_id, "members")] += 1


def count_event(
    facts: Counter,
    snapshot_ms: int,
    memberships: Mapping[str, Mapping[str, str]],
    identity_map: Mapping[str, list],
    cause: str | None,
) -> None:
    """Counts one formatted event: its entries, its exits (by cause), its identities.

    ``memberships`` are the event's segment entries' statuses (``Formatted.memberships``).
    """
    facts[("snapshot", snapshot_ms, "events")] += 1
    for namespace, by_id in memberships.items():
        for seg_id, status in by_id.items():
            if status == "realized":
                facts[("segment", snapshot_ms, namespace, seg_id, "realized")] += 1
            elif status == "exited":
                kind = f"exited_{cause or STATUS}"
                facts[("segment", snapshot_ms, namespace, seg_id, kind)] += 1
    for namespace, entries in identity_map.items():
        facts[("identities", namespace, "sent")] += len(entries)


def count_excluded(facts: Counter, snapshot_ms: int, identities: Mapping[str, list]) -> None:
    """Counts one event excluded for want of an identity in the output namespaces."""
    facts[("snapshot", snapshot_ms, "excluded")] += 1
    for namespace, ids in identities.items():
        facts[("identities", namespace, "excluded")] += len(ids)


def dead_letter_facts(letter: Mapping[str, Any]) -> list[tuple[tuple, int]]:
    """The facts of one dead letter: its reason, and for the sink's, the identities lost."""
    stage, reason = str(letter.get("stage")), str(letter.get("reason"))
    facts: list[tuple[tuple, int]] = [(("dead_letters", stage, reason), 1)]
    if stage == SINK_STAGE:
        facts.append((("profiles_failed",), 1))
        try:
            identity_map = json.loads(letter.get("raw") or "").get("identityMap") or {}
        except (ValueError, AttributeError):
            identity_map = {}  # an aggregated or damaged record: its identities are unknown
        facts += [(("identities", ns, "failed"), len(ids)) for ns, ids in identity_map.items()]
    return facts


def bundle_facts(facts: Counter) -> Iterable[beam.pvalue.TaggedOutput]:
    """The facts of a bundle as tagged outputs for ``finish_bundle`` (global window)."""
    for key, count in facts.items():
        yield beam.pvalue.TaggedOutput(
            FACTS, WindowedValue((key, count), MIN_TIMESTAMP, (GlobalWindow(),))
        )
    facts.clear()


def encode_fact(fact: tuple[tuple, int]) -> str:
    """One summed fact as a JSON line ``[[key...], count]``."""
    key, count = fact
    return json.dumps([list(key), count], separators=(",", ":"))


class SumReportFacts(beam.PTransform):
    """Sums facts by key and writes them as JSON Lines under ``prefix``.

    Args:
        prefix: File prefix of the summed facts (read back by the driver).
    """

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix

    def expand(self, facts: beam.PCollection) -> beam.pvalue.PDone:
        return (
            facts
            | "SumFacts" >> beam.CombinePerKey(sum)
            | "EncodeFacts" >> beam.Map(encode_fact)
            | "WriteFacts" >> WriteToText(self._prefix, file_name_suffix=".jsonl")
        )
