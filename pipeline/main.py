"""Entry point: ``python -m pipeline`` (docs/contract.md §8).

``run(argv)`` validates every flag and the config before a pipeline exists, so that a
mistake costs one clear line and a non-zero exit, never a traceback; then it builds the
graph with :func:`pipeline.graph.build_pipeline` and runs it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline.backfill import run_split_backfill
from pipeline.graph import JobSettings, build_pipeline
from pipeline.options import SegmentEventsOptions
from pipeline.outputs import (
    prepare_output_folders,
    remove_temp_folders,
    restrict_output_files,
    temp_folders,
)
from pipeline.runners import LOCAL_RUNNER_NAMES, OfflineDirectRunner
from transforms.beam_internals import (
    BEAM_STEP_FAILURE_LOGGER,
    STEP_ANNOTATION,
    all_options_classes,
)
from transforms.config import ActivationConfig, ConfigError, load_config
from transforms.events.timestamps import format_timestamp
from transforms.kinesis.client import StreamCheckError, check_stream, make_kinesis_client
from transforms.metrics import METRICS_NAMESPACE
from transforms.snapshots.read import InputError, match_snapshot_files
from transforms.snapshots.snapshot_time import SnapshotTimeError, snapshot_time_from_path
from transforms.snapshots.watch import DEFAULT_WATCH_INTERVAL_SECONDS

_LOGGER = logging.getLogger(__name__)
# Beam has flags for S3 keys; secrets must come from the AWS default chain instead.
_SECRET_FLAGS = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token")
EXIT_USAGE = 2
EXIT_FAILED = 1
# Libraries whose DEBUG logs echo records or credentials: never below INFO.
_CAPPED_LOGGERS = ("apache_beam", "botocore", "boto3", "urllib3", "s3transfer")
# Where Beam logs (with a traceback) the exception of a failing step before re-raising it.


# Checkpoints every second starved the watch's polling on Beam 2.50's Flink job server
# (no snapshot read), every 2 s slowed it to ~20 s per snapshot; 10 s did not.
MIN_STREAMING_CHECKPOINT_MS = 10_000


class UsageError(ValueError):
    """A flag is missing or invalid; the message says what to fix."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    if "-h" in argv or "--help" in argv:
        _help_parser().print_help()
        return 0
    try:
        settings, config, options = parse_args(argv)
    except (UsageError, ConfigError, InputError, SnapshotTimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if settings.kinesis_stream and not options.view_as(SegmentEventsOptions).skip_stream_check:
        try:
            preflight_stream(settings)
        except StreamCheckError as err:
            print(f"error: {err}; nothing was run", file=sys.stderr)
            return EXIT_USAGE
    try:
        if settings.snapshots_per_run:
            counters = run_split_backfill(settings, config, options, run_job)
        else:
            counters = run_job(settings, config, options)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # noqa: BLE001 - the one place that turns failures into a line
        _LOGGER.debug("pipeline failed", exc_info=True)
        print(f"error: the pipeline failed: {_one_line(err)}", file=sys.stderr)
        report = write_failure_report()
        if report:
            print(f"  the full traceback is in {report}", file=sys.stderr)
        return EXIT_FAILED
    runner_name = options.view_as(StandardOptions).runner
    print_summary(counters, complete=not (settings.streaming and runner_name in LOCAL_RUNNER_NAMES))
    return 0


def preflight_stream(settings: JobSettings) -> None:
    """Describes the output stream from the submitting machine before anything runs."""
    client = make_kinesis_client(
        settings.kinesis_region,
        settings.kinesis_endpoint_url,
        settings.kinesis_role_arn,
        max_pool_connections=1,
        connect_timeout=5.0,
        read_timeout=15.0,
    )
    check_stream(client, settings.kinesis_stream)


def write_failure_report() -> str | None:
    """Writes the traceback being handled to an owner-only file; returns its path.

    A multi-hour run that fails must not have to be repeated to see why. The file is
    created with mode 0600 (``mkstemp``) in the temp folder (``TMPDIR``): an
    exception's text may quote input, so it is kept out of shared logs.
    """
    try:
        handle, path = tempfile.mkstemp(prefix="segment-events-failure-", suffix=".txt")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(traceback.format_exc())
        return path
    except OSError:
        return None


def configure_logging(level_name: str) -> None:
    """Sets the log level (``LOG_LEVEL``) without letting libraries leak data into logs.

    The job's own loggers follow ``level_name``. Libraries whose DEBUG output echoes data
    or secrets (Beam logs every element it processes, i.e. profile keys and identities;
    botocore logs request headers, i.e. access key ids and session tokens) never go
    below INFO. Beam's log of a failing step's traceback is dropped: :func:`main` reports
    the failure as one line and logs the traceback at DEBUG itself.

    Args:
        level_name: A logging level name; unknown names mean WARNING.
    """
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    level = level_name.upper()
    level = level if level in logging.getLevelNamesMapping() else "WARNING"
    logging.getLogger().setLevel(level)
    capped = max(logging.getLevelNamesMapping()[level], logging.INFO)
    for name in _CAPPED_LOGGERS:
        logging.getLogger(name).setLevel(capped)
    step_logger = logging.getLogger(BEAM_STEP_FAILURE_LOGGER)
    if not any(isinstance(f, _DropStepFailureTraceback) for f in step_logger.filters):
        step_logger.addFilter(_DropStepFailureTraceback())


class _DropStepFailureTraceback(logging.Filter):
    """Drops Beam's ``[while running 'step']`` traceback log (the failure is re-raised)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and "[while running " in record.getMessage())


def parse_args(argv: Sequence[str]) -> tuple[JobSettings, ActivationConfig, PipelineOptions]:
    """Validates the command line and the config file.

    Args:
        argv: The arguments, without the program name.

    Returns:
        The job settings, the config and the Beam options (all other flags).

    Raises:
        UsageError: A flag is missing, unknown or invalid.
        ConfigError: The config is invalid.
        InputError: An input pattern or file cannot be used.
    """
    unknown = _unknown_flags(argv)
    if unknown:
        raise UsageError(f"unknown flag {unknown[0]} (see --help)")
    options = PipelineOptions(list(argv))
    all_options = options.get_all_options(drop_default=True)
    for secret in _SECRET_FLAGS:
        if all_options.get(secret):
            raise UsageError(
                f"--{secret}: credentials are never flags; use the AWS default credential "
                "chain (environment, profile, instance or task role, web identity)"
            )
    opts = options.view_as(SegmentEventsOptions)
    streaming = options.view_as(StandardOptions).streaming
    if options.view_as(DirectOptions).direct_running_mode == "multi_threading":
        # Measured with Beam 2.77: a GroupByKey on the FnApiRunner in this mode lost
        # values of some keys at 100k records, which shows up as false exits.
        raise UsageError(
            "--direct_running_mode=multi_threading loses grouped records in Beam 2.77; "
            "use --direct_running_mode=multi_processing (or in_memory, the default)"
        )
    if not opts.config:
        raise UsageError("--config is required: the destination config JSON (docs/contract.md §3)")
    if not opts.input:
        raise UsageError("--input is required: a glob of snapshot files")
    if not opts.kinesis_stream and not opts.output_path:
        raise UsageError(
            "no output: give --kinesis_stream (with --kinesis_region) and/or --output_path"
        )
    region = opts.kinesis_region or (_default_region() if opts.kinesis_stream else None)
    if opts.kinesis_stream and not region:
        raise UsageError("--kinesis_region is required with --kinesis_stream (or set AWS_REGION)")
    if opts.kinesis_max_records_per_second is not None and opts.kinesis_max_records_per_second <= 0:
        raise UsageError("--kinesis_max_records_per_second must be a positive number")
    if not 1 <= opts.kinesis_max_record_bytes <= 10 * 1024 * 1024:
        raise UsageError("--kinesis_max_record_bytes must be between 1 and 10485760")
    if opts.kinesis_aggregate and not opts.kinesis_stream:
        raise UsageError("--kinesis_aggregate needs --kinesis_stream")
    if opts.max_bad_records < 0:
        raise UsageError("--max_bad_records must be 0 or more")
    if opts.max_bad_records and streaming:
        raise UsageError(
            "--max_bad_records applies to batch runs; a streaming run goes on past "
            "unreadable records and withholds the TTL exits they leave unproven (dead "
            "letter reason incomplete_snapshot)"
        )
    if opts.watch_interval is not None and not streaming:
        raise UsageError("--watch_interval only applies with --streaming")
    if opts.watch_interval is not None and opts.watch_interval <= 0:
        raise UsageError("--watch_interval must be a positive number of seconds")
    if opts.max_watch_seconds is not None and not streaming:
        raise UsageError("--max_watch_seconds only applies with --streaming")
    if opts.max_watch_seconds is not None and opts.max_watch_seconds <= 0:
        raise UsageError("--max_watch_seconds must be a positive number of seconds")
    if streaming and opts.snapshot_time_field is not None:
        raise UsageError(
            "--snapshot_time_field cannot be used with --streaming: the watermark follows "
            "the time of each landed snapshot folder, so it must come from the path "
            "(a snapshot=<date> folder or a dated file name)"
        )
    if opts.snapshot_time_field is not None and not opts.snapshot_time_field.strip():
        raise UsageError("--snapshot_time_field must not be empty")
    if opts.snapshots_per_run is not None:
        if streaming:
            raise UsageError("--snapshots_per_run only applies to batch runs")
        if opts.snapshots_per_run < 1:
            raise UsageError("--snapshots_per_run must be at least 1")
        if opts.snapshot_time_field is not None:
            raise UsageError(
                "--snapshots_per_run cannot be used with --snapshot_time_field: runs are "
                "planned from the snapshot times in the file paths"
            )
    interval = all_options.get("checkpointing_interval")
    if streaming and interval is not None and interval < MIN_STREAMING_CHECKPOINT_MS:
        _LOGGER.warning(
            "--checkpointing_interval %d: on Beam 2.50's Flink job server, checkpoints more "
            "often than every %d ms were measured to starve the watch of new snapshots "
            "(see docs/operations/flink.md)",
            interval,
            MIN_STREAMING_CHECKPOINT_MS,
        )
    config = load_config(opts.config)
    settings = JobSettings(
        inputs=tuple(absolute_path(p) for p in opts.input),
        baseline=tuple(absolute_path(p) for p in opts.baseline or ()),
        snapshot_time_field=opts.snapshot_time_field,
        kinesis_stream=opts.kinesis_stream,
        kinesis_region=region,
        kinesis_endpoint_url=opts.kinesis_endpoint_url,
        kinesis_role_arn=opts.kinesis_role_arn,
        kinesis_max_records_per_second=opts.kinesis_max_records_per_second,
        kinesis_aggregate=opts.kinesis_aggregate,
        kinesis_max_record_bytes=opts.kinesis_max_record_bytes,
        output_path=absolute_path(opts.output_path),
        dead_letter_path=absolute_path(opts.dead_letter_path),
        allow_mass_exit=opts.allow_mass_exit,
        max_bad_records=opts.max_bad_records,
        streaming=streaming,
        watch_interval=_watch_interval(opts.watch_interval, streaming),
        max_watch_seconds=opts.max_watch_seconds,
        snapshots_per_run=opts.snapshots_per_run,
    )
    # Match now, so that a wrong pattern or an undated file fails before anything runs.
    # A streaming run watches for snapshots that have not landed yet: nothing to match.
    inputs = (
        []
        if streaming
        else match_snapshot_files(settings.inputs, False, settings.snapshot_time_field)
    )
    baseline = match_snapshot_files(settings.baseline, True, settings.snapshot_time_field)
    _check_baseline_is_older(inputs, baseline)
    if inputs and not baseline and not settings.snapshots_per_run:
        input_times = {snapshot_time_from_path(f.path) for f in inputs}
        if len(input_times) == 1 and None not in input_times:
            _LOGGER.warning(
                "one snapshot and no --baseline: every profile is seen for the first time, "
                "so every current membership is sent as an entry (realized). For a daily "
                "run, pass the previous snapshot as --baseline"
            )
    return settings, config, options


def _check_baseline_is_older(inputs, baseline) -> None:
    """Refuses a baseline that is not older than every input snapshot (path times).

    A baseline seeds what profiles were before the run. One at or after an input
    snapshot would replay history backwards (swapped ``--input`` and ``--baseline``):
    entries and exits computed against the future. Files whose time comes only from
    ``--snapshot_time_field`` cannot be checked before reading, and are not.
    """

    def times(files):
        found = (snapshot_time_from_path(f.path) for f in files)
        return [t for t in found if t is not None]

    baseline_times, input_times = times(baseline), times(inputs)
    if baseline_times and input_times and max(baseline_times) >= min(input_times):
        raise UsageError(
            f"--baseline holds a snapshot of {format_timestamp(max(baseline_times))}, not "
            f"older than the first --input snapshot ({format_timestamp(min(input_times))}); "
            "a baseline is the state before the input (were --input and --baseline "
            "swapped?). Nothing was run"
        )


def absolute_path(path: str | None) -> str | None:
    """A local path or glob made absolute against the submitter's working directory.

    Workers on a cluster (Flink TaskManagers, SDK worker pools, Dataflow VMs) do not share
    the submitting process's working directory, so a relative path would name another
    folder there, or none. Beam's local filesystem also matches nothing for a relative
    glob whose first segment is a wildcard (``snapshot=*/part-*.avro``), while the same
    glob made absolute matches. URLs (``s3://``, ``gs://``...) are left as they are.
    """
    if path is None or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def run_job(
    settings: JobSettings, config: ActivationConfig, options: PipelineOptions
) -> dict[str, int]:
    """Builds and runs the pipeline; returns the job's counters by name."""
    prefixes = (settings.output_path, settings.dead_letter_path)
    prepare_output_folders(prefixes)
    staged_before = temp_folders(prefixes)
    runner_name = options.view_as(StandardOptions).runner
    runner = OfflineDirectRunner() if runner_name in LOCAL_RUNNER_NAMES else None
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_pipeline(pipeline, settings, config)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except BaseException:
        # Beam's file sinks stage whole output files in beam-temp-* folders and leave
        # them when the run fails: they hold events (PII).
        remove_temp_folders(prefixes, staged_before)
        raise
    finally:
        restrict_output_files(prefixes)
    return job_counters(result)


def job_counters(result) -> dict[str, int]:
    """Sums the job's counters (namespace ``segment_events``) over all steps."""
    totals: dict[str, int] = {}
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except (NotImplementedError, AttributeError):
        return totals
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (value or 0)
    return totals


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


def print_summary(counters: dict[str, int], complete: bool = True) -> None:
    """Prints the run summary (Beam counters of the job) to standard output.

    Args:
        counters: The job's counters by name.
        complete: Whether the runner reports the counters of every step. The local
            streaming runner (Beam's BundleBasedDirectRunner) drops those of the steps
            that run from event-time timers (the transitions and everything after them):
            such a figure is shown as not reported, never as 0.
    """
    print("Run summary:")
    if not counters:
        print("  (the runner reported no metrics)")
        return
    missing = "not reported by this runner (see the event files or the stream)"
    shown = {metric for _, metric in _HEADLINE}
    rows = [
        (label, counters.get(metric, 0 if complete or metric in _READ_SIDE else missing))
        for label, metric in _HEADLINE
    ]
    rows += [(name, counters[name]) for name in sorted(counters) if name not in shown]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")


def _help_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Reads profile snapshots, computes segment entry/exit transitions and "
        "writes them as JSON events to Amazon Kinesis and/or JSON Lines files.",
        epilog="Any Beam option is accepted too (--runner, --flink_master, --project, ...). "
        "AWS credentials come from boto3's default chain, never from flags.",
    )
    SegmentEventsOptions._add_argparse_args(parser)
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="Beam streaming mode: watch --input for new snapshots. Default: off (batch).",
    )
    parser.add_argument(
        "--runner",
        help="Beam runner. Default: the local DirectRunner engines (no download).",
    )
    return parser


def _unknown_flags(argv: Sequence[str]) -> list[str]:
    """Flags that neither this job nor any Beam options class knows."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for cls in all_options_classes():
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:
            continue  # the same flag declared by two classes
    try:
        _, unknown = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as err:
        # e.g. a Beam flag with a choice that is not one of its choices.
        raise UsageError(str(err)) from None
    return [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")]


def _watch_interval(flag: float | None, streaming: bool) -> float | None:
    """``--watch_interval``, defaulting to 60 seconds in streaming; ``None`` in batch."""
    if not streaming:
        return None
    return flag if flag is not None else DEFAULT_WATCH_INTERVAL_SECONDS


def _default_region() -> str | None:
    """The region of the AWS default chain (AWS_REGION, AWS_DEFAULT_REGION, profile)."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        import boto3

        return boto3.session.Session().region_name
    except Exception:  # noqa: BLE001 - no usable AWS config is simply "no region"
        return None


def _one_line(err: BaseException) -> str:
    """The most specific line of a (possibly runner-wrapped) exception message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    # Runners wrap worker exceptions in their traceback text; the last line holds the
    # original exception.
    return STEP_ANNOTATION.sub("", lines[-1]) or lines[-1]
