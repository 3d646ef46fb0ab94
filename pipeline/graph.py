"""Construction of the job graph, callable from tests without the command line."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.io.textio import WriteToText

from transforms.columnar.columnar_transitions import (
    ComputeTransitionsColumnar,
    bucket_count,
    input_bytes,
    unsupported_reason,
)
from transforms.config import ActivationConfig
from transforms.events.format import FormatSegmentEvents
from transforms.files import WriteFilePerBundle
from transforms.kinesis.sink import WriteToKinesisStream
from transforms.report.facts import SumReportFacts, dead_letter_facts
from transforms.segments.batch_guards import TransitionsResult
from transforms.segments.carried_state import WriteCarriedStates
from transforms.segments.codecs import ShuffleCodec
from transforms.segments.transitions import ComputeBatchTransitions, ComputeStreamingTransitions
from transforms.snapshots.read import ReadEncodedSnapshots, SnapshotFile, run_files
from transforms.snapshots.watch import DEFAULT_WATCH_INTERVAL_SECONDS, WatchSnapshots

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSettings:
    """The validated, non-Beam settings of one run (see ``pipeline.options``).

    Attributes mirror the command-line flags of docs/contract.md §8.
    """

    inputs: tuple[str, ...]
    baseline: tuple[str, ...] = ()
    snapshot_time_field: str | None = None
    kinesis_stream: str | None = None
    kinesis_region: str | None = None
    kinesis_endpoint_url: str | None = None
    kinesis_role_arn: str | None = None
    kinesis_max_records_per_second: float | None = None
    kinesis_aggregate: bool = False
    kinesis_max_record_bytes: int = 1_048_576
    output_path: str | None = None
    dead_letter_path: str | None = None
    allow_mass_exit: bool = False
    max_bad_records: int = 0
    streaming: bool = False
    watch_interval: float | None = None
    max_watch_seconds: float | None = None
    snapshots_per_run: int | None = None
    # --batch_path: "columnar" (Arrow buckets; steady rows skip Python) or "rows".
    batch_path: str = "columnar"
    # --report PATH; the run writes its summed facts under report_facts_prefix (set per
    # run by pipeline.main), and the driver turns them into PATH.json and PATH.html.
    report_path: str | None = None
    report_facts_prefix: str | None = None
    # One run of a split backfill (set by pipeline.backfill, not by flags): its matched
    # files, the states carried in from the previous run and where to write the states
    # for the next run.
    files: tuple[SnapshotFile, ...] | None = None
    seed_state_pattern: str | None = None
    state_output_prefix: str | None = None

    @property
    def dry_run(self) -> bool:
        """A batch run with neither a stream nor an event file: it only writes a report."""
        return not self.streaming and not self.kinesis_stream and not self.output_path

    # Tests inject a client factory for the sink; never set from the command line.
    kinesis_client_factory: Callable[[], Any] | None = field(default=None, compare=False)


class JobOutputs(NamedTuple):
    """The main PCollections of a built job, for tests to assert on.

    Attributes:
        transitions: ``(profile key, transition)``.
        events: ``(partition key, event bytes)``.
        dead_letters: Every stage's dead letters.
    """

    transitions: beam.PCollection
    events: beam.PCollection
    dead_letters: beam.PCollection


class _Replayed(NamedTuple):
    """Where a path's read and transitions meet the shared outputs."""

    read_dead_letters: beam.PCollection
    snapshot_counts: beam.PCollection | None  # batch: (snapshot ms, baseline, records)
    result: TransitionsResult


def build_pipeline(
    pipeline: beam.Pipeline, settings: JobSettings, config: ActivationConfig
) -> JobOutputs:
    """Adds the whole job to a pipeline: read and replay (one of three paths), format,
    then the event files, the stream, the report and the dead letters.

    Args:
        pipeline: The pipeline to add the steps to.
        settings: The validated job settings.
        config: The validated activation config.
    """
    replayed = _read_and_replay(pipeline, settings, config)
    transitions = replayed.result
    if settings.state_output_prefix:
        _ = transitions.states | "WriteCarriedStates" >> WriteCarriedStates(
            settings.state_output_prefix
        )
    formatted = transitions.transitions | "FormatEvents" >> FormatSegmentEvents(
        config, report_facts=settings.report_facts_prefix is not None
    )
    if settings.output_path:
        _write_event_files(formatted.events, settings)
    dead_letters = [replayed.read_dead_letters, transitions.dead_letters]
    if settings.kinesis_stream:
        dead_letters.append(formatted.events | "WriteToKinesis" >> _kinesis_sink(settings))
    all_dead_letters = dead_letters | "FlattenDeadLetters" >> beam.Flatten()
    if settings.report_facts_prefix:
        _write_report_facts(settings, replayed, formatted.facts, all_dead_letters)
    if settings.dead_letter_path:
        _write_dead_letters(all_dead_letters, settings)
    return JobOutputs(transitions.transitions, formatted.events, all_dead_letters)


def _read_and_replay(pipeline, settings: JobSettings, config: ActivationConfig) -> _Replayed:
    """The read and the transitions of the run's path: streaming (a watch of the
    landing folder), or batch on the columnar path or the row path."""
    if settings.streaming:
        watched = pipeline | "WatchSnapshots" >> WatchSnapshots(
            settings.inputs,
            config,
            settings.baseline,
            settings.watch_interval or DEFAULT_WATCH_INTERVAL_SECONDS,
            settings.max_watch_seconds,
        )
        result = watched.records | "ComputeTransitions" >> ComputeStreamingTransitions(
            config,
            allow_mass_exit=settings.allow_mass_exit,
            read_dead_letters=watched.dead_letters,
            landed_snapshots=watched.landed,
        )
        return _Replayed(watched.dead_letters, None, result)
    files = settings.files
    if files is None:
        files = run_files(settings.inputs, settings.baseline, settings.snapshot_time_field)
    batch = {
        "allow_mass_exit": settings.allow_mass_exit,
        "carry_states": settings.state_output_prefix is not None,
        "max_bad_records": settings.max_bad_records,
        "report": settings.report_facts_prefix is not None,
        "dry_run": settings.dry_run,
    }
    if settings.batch_path == "columnar":
        reason = unsupported_reason(files, settings.snapshot_time_field)
        if reason is None:
            columnar = pipeline | "ComputeTransitions" >> ComputeTransitionsColumnar(
                files,
                config,
                buckets=bucket_count(input_bytes(files)),
                carried_states=settings.seed_state_pattern,
                **batch,
            )
            return _Replayed(
                columnar.read_dead_letters, columnar.snapshot_counts, columnar.result
            )
        _LOGGER.info("The batch runs on the row path: %s", reason)
    # The read step encodes each record for the transitions' shuffle as it parses it,
    # with the run's files and mapped segments as small ints.
    codec = ShuffleCodec(config, [f.path for f in files])
    read = pipeline | "ReadSnapshots" >> ReadEncodedSnapshots(
        settings.inputs,
        config,
        settings.baseline,
        settings.snapshot_time_field,
        files=files,
        carried_states=settings.seed_state_pattern,
        codec=codec,
    )
    result = read.records | "ComputeTransitions" >> ComputeBatchTransitions(
        config,
        read_dead_letters=read.dead_letters,
        codec=codec,
        snapshot_counts=read.snapshot_counts,
        **batch,
    )
    return _Replayed(read.dead_letters, read.snapshot_counts, result)


def _write_event_files(events: beam.PCollection, settings: JobSettings) -> None:
    _ = (
        events
        | "SelectEventBytes" >> beam.Map(lambda event: event[1])
        | "WriteEventFiles"
        >> (
            WriteFilePerBundle(settings.output_path)
            if settings.streaming
            else WriteToText(
                settings.output_path, file_name_suffix=".jsonl", coder=coders.BytesCoder()
            )
        )
    )


def _kinesis_sink(settings: JobSettings) -> WriteToKinesisStream:
    return WriteToKinesisStream(
        stream_name=settings.kinesis_stream,
        region=settings.kinesis_region,
        endpoint_url=settings.kinesis_endpoint_url,
        role_arn=settings.kinesis_role_arn,
        max_records_per_second=settings.kinesis_max_records_per_second,
        aggregate=settings.kinesis_aggregate,
        max_record_bytes=settings.kinesis_max_record_bytes,
        dead_letter=settings.dead_letter_path is not None,
        client_factory=settings.kinesis_client_factory,
    )


def _write_report_facts(settings, replayed: _Replayed, format_facts, all_dead_letters) -> None:
    facts = [
        replayed.result.report_facts,
        format_facts,
        replayed.snapshot_counts | "CountSnapshotRecords" >> beam.Map(_record_fact),
        all_dead_letters | "CountDeadLetters" >> beam.FlatMap(dead_letter_facts),
    ]
    _ = (
        facts
        | "MergeReportFacts" >> beam.Flatten()
        | "WriteReportFacts" >> SumReportFacts(settings.report_facts_prefix)
    )


def _write_dead_letters(all_dead_letters: beam.PCollection, settings: JobSettings) -> None:
    _ = (
        all_dead_letters
        | "EncodeDeadLetters" >> beam.Map(encode_dead_letter)
        | "WriteDeadLetterFiles"
        >> (
            WriteFilePerBundle(settings.dead_letter_path)
            if settings.streaming
            else WriteToText(
                settings.dead_letter_path, file_name_suffix=".jsonl", skip_if_empty=True
            )
        )
    )


def _record_fact(element: tuple[int, bool, int]) -> tuple[tuple, int]:
    snapshot_ms, _, records = element
    return ("snapshot", snapshot_ms, "records"), records


def encode_dead_letter(record: dict) -> str:
    """One dead-letter line: JSON with sorted keys (also used by ``replay``)."""
    return json.dumps(record, ensure_ascii=False, sort_keys=True, default=str)
