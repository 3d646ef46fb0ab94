"""Entry point: ``python -m pipeline`` (docs/contract.md §8).

``run(argv)`` validates every flag and the config before a pipeline exists, so that a
mistake costs one clear line and a non-zero exit, never a traceback; then it builds the
graph with :func:`pipeline.graph.build_pipeline` and runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import re
import sys
import tempfile
import traceback
import uuid
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline.backfill import run_split_backfill
from pipeline.graph import JobSettings, build_pipeline
from pipeline.options import FlinkForwardedOptions, SegmentEventsOptions
from pipeline.outputs import (
    prepare_output_folders,
    remove_temp_folders,
    restrict_output_files,
    temp_folders,
)
from pipeline.report import build_report, read_facts, remove_facts, stopping_snapshots, write_report
from pipeline.runners import LOCAL_RUNNER_NAMES, OfflineDirectRunner
from pipeline.summary import print_summary, summary_rows
from transforms import progress
from transforms.beam_internals import (
    BEAM_STEP_FAILURE_LOGGER,
    STEP_ANNOTATION,
    all_options_classes,
)
from transforms.config import ActivationConfig, load_config
from transforms.errors import SegmentEventsError
from transforms.events.timestamps import format_timestamp
from transforms.kinesis.client import check_stream, make_kinesis_client
from transforms.metrics import METRICS_NAMESPACE
from transforms.snapshots.read import match_snapshot_files
from transforms.snapshots.snapshot_time import snapshot_time_from_path
from transforms.snapshots.watch import DEFAULT_WATCH_INTERVAL_SECONDS

_LOGGER = logging.getLogger(__name__)
# Beam has flags for S3 keys; secrets must come from the AWS default chain instead.
_SECRET_FLAGS = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token")
EXIT_USAGE = 2
EXIT_FAILED = 1
# Libraries whose DEBUG logs echo records or credentials: never below INFO.
_CAPPED_LOGGERS = ("apache_beam", "botocore", "boto3", "urllib3", "s3transfer")
# Where Beam logs (with a traceback) the exception of a failing step before re-raising it.


DEFAULT_PROGRESS_INTERVAL_S = 10.0


class UsageError(SegmentEventsError, ValueError):
    """A flag is missing or invalid; the message says what to fix."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["aws-credentials"]:  # boto3's credential_process on Dataflow workers
        from pipeline.aws_credentials import main as aws_credentials_main

        return aws_credentials_main(argv[1:])
    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    if "-h" in argv or "--help" in argv:
        _help_parser().print_help()
        return 0
    try:
        settings, config, options = parse_args(argv)
    except SegmentEventsError as err:
        # Found before anything ran (a flag, the config, the input files; transforms/errors.py).
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    progress.configure(
        progress_interval(options.view_as(SegmentEventsOptions)), per_snapshot=settings.streaming
    )
    try:
        return _run(settings, config, options)
    finally:
        progress.configure(None)  # the embedding process gets its environment back


def _run(settings: JobSettings, config: ActivationConfig, options: PipelineOptions) -> int:
    """Preflight, the run(s), the summary and the report; returns the exit code."""
    if settings.kinesis_stream and not options.view_as(SegmentEventsOptions).skip_stream_check:
        try:
            preflight_stream(settings)
        except SegmentEventsError as err:  # StreamCheckError: still before anything ran
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
        # Not only the family: a runner may wrap a step's error in its own exception.
        _LOGGER.debug("pipeline failed", exc_info=True)
        print(f"error: the pipeline failed: {one_line(err)}", file=sys.stderr)
        report = write_failure_report()
        if report:
            print(f"  the full traceback is in {report}", file=sys.stderr)
        if settings.report_facts_prefix:
            remove_facts(settings.report_facts_prefix)
        return EXIT_FAILED
    runner_name = options.view_as(StandardOptions).runner
    rows = summary_rows(
        counters, complete=not (settings.streaming and runner_name in LOCAL_RUNNER_NAMES)
    )
    print_summary(rows)
    if settings.report_path:
        return finish_report(settings, config, rows)
    return 0


def finish_report(
    settings: JobSettings, config: ActivationConfig, rows: list[tuple[str, object]]
) -> int:
    """Turns the run's facts into ``PATH.json`` and ``PATH.html``; returns the exit code."""
    prefix = settings.report_facts_prefix or ""
    try:
        facts = read_facts(prefix)
        baseline = match_snapshot_files(settings.baseline, True, settings.snapshot_time_field)
        baseline_times = {snapshot_time_from_path(f.path) for f in baseline} - {None}
        report = build_report(
            facts,
            config=config,
            summary=rows,
            inputs=settings.inputs,
            baseline_times=baseline_times,  # type: ignore[arg-type]
            dry_run=settings.dry_run,
            allow_mass_exit=settings.allow_mass_exit,
        )
        json_path, html_path = write_report(settings.report_path or "", report)
    except (OSError, ValueError) as err:
        print(f"error: the report could not be written: {one_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        remove_facts(prefix)
    restrict_output_files([settings.report_path])
    print(f"report: {html_path} (data: {json_path})")
    if settings.dry_run:
        print("dry run: nothing was sent")
        for snapshot in stopping_snapshots(report):
            guard = snapshot["mass_exit_guard"]
            print(
                f"warning: a real run would stop at the mass-exit guard: snapshot "
                f"{snapshot['snapshot']} is missing {guard['absent']} of the "
                f"{guard['tracked']} profiles tracked before it",
                file=sys.stderr,
            )
    return 0


def progress_interval(opts: SegmentEventsOptions) -> float | None:
    """Seconds between progress lines: the flag, else 10 on a terminal; none if quiet."""
    if opts.quiet:
        return None
    if opts.progress_interval is not None:
        return opts.progress_interval if opts.progress_interval > 0 else None
    return DEFAULT_PROGRESS_INTERVAL_S if sys.stderr.isatty() else None


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


_STREAM_ARN = re.compile(
    r"arn:aws[a-z-]*:kinesis:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):stream/[a-zA-Z0-9_.-]{1,128}"
)


def _resolve_stream_arn(opts: SegmentEventsOptions) -> None:
    """Makes ``--kinesis_stream_arn`` the run's stream, with the ARN's region.

    The job names its stream by one string from here on: PutRecords, ListShards and
    DescribeStreamSummary take the ARN where they take the name.
    """
    arn = opts.kinesis_stream_arn
    if not arn:
        return
    if opts.kinesis_stream:
        raise UsageError("give --kinesis_stream or --kinesis_stream_arn, not both")
    match = _STREAM_ARN.fullmatch(arn)
    if match is None:
        raise UsageError(
            "--kinesis_stream_arn must look like arn:aws:kinesis:REGION:ACCOUNT:stream/NAME"
        )
    if opts.kinesis_region and opts.kinesis_region != match["region"]:
        raise UsageError(
            f"--kinesis_region {opts.kinesis_region} differs from the region of "
            f"--kinesis_stream_arn ({match['region']})"
        )
    opts.kinesis_region = match["region"]
    opts.kinesis_stream = arn


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
        SnapshotTimeError: A file's snapshot time cannot be resolved.
    """
    unknown, known = _unknown_flags(argv)
    if unknown:
        guess = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.75)
        hint = f"; did you mean {guess[0]}?" if guess else " (see --help)"
        raise UsageError(f"unknown flag {unknown[0]}{hint}")
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
    _resolve_stream_arn(opts)
    if not opts.kinesis_stream and not opts.output_path and not opts.report:
        raise UsageError(
            "no output: give --kinesis_stream (with --kinesis_region) and/or --output_path "
            "(or only --report for a dry run)"
        )
    if opts.report and streaming:
        raise UsageError(
            "--report applies to batch runs (a streaming run logs one line per snapshot "
            "with its event count instead)"
        )
    region = opts.kinesis_region or (default_region() if opts.kinesis_stream else None)
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
    if streaming and all_options.get("checkpointing_interval") is not None:
        _finish_bundles_before_checkpoints(options)
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
        batch_path=opts.batch_path,
        report_path=absolute_path(opts.report),
        report_facts_prefix=(
            f"{absolute_path(opts.report)}.facts-{uuid.uuid4().hex[:12]}" if opts.report else None
        ),
    )
    if not streaming and not opts.overwrite:
        _refuse_existing_outputs(settings)
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


def _refuse_existing_outputs(settings: JobSettings) -> None:
    """Refuses to start a batch run whose output files exist (unless ``--overwrite``).

    Beam's text sink names its files ``PREFIX-00000-of-0000N.jsonl`` whatever the day, so
    a daily run with yesterday's ``--output_path`` would replace yesterday's events.
    """
    checks = [
        ("--output_path", settings.output_path),
        ("--dead_letter_path", settings.dead_letter_path),
    ]
    if settings.report_path:
        checks += [
            ("--report", f"{settings.report_path}.json"),
            ("--report", f"{settings.report_path}.html"),
        ]
    for flag, prefix in checks:
        if prefix is None:
            continue
        found = existing_files(prefix)
        if found:
            raise UsageError(
                f"{flag} {prefix}: {len(found)} file(s) exist already (e.g. {found[0]}); "
                "use a new prefix (for example with the date in it), or --overwrite to "
                "replace them. Nothing was run"
            )


def existing_files(prefix: str) -> list[str]:
    """Files whose path starts with ``prefix`` (local paths and URLs)."""
    try:
        matches = FileSystems.match([prefix + "*"])[0].metadata_list
    except Exception:  # noqa: BLE001 - an unreadable or missing folder holds no files
        return []
    return sorted(m.path for m in matches if not _is_temp(m.path, prefix))


def _is_temp(path: str, prefix: str) -> bool:
    return path[len(prefix) :].startswith(".facts-")


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


def _finish_bundles_before_checkpoints(options: PipelineOptions) -> None:
    """Checkpointed streaming on Flink: bundles finish before a barrier, not inside it.

    By default Beam's Flink runner finishes an open bundle *during* a checkpoint and
    buffers that bundle's output in the checkpoint, to be emitted when the step next
    starts a bundle or receives a watermark. A step that never does again keeps it
    forever: the watch's first step gets one element (the impulse) and one watermark;
    when the first checkpoint came while that first bundle was open, the watch never
    got its element and never polled (docs/operations/flink.md). Finishing the bundle
    before the barrier emits the output at once. ``--no_finish_bundle_before_checkpointing``
    keeps Beam's default, with a warning.
    """
    forwarded = options.view_as(FlinkForwardedOptions)
    if forwarded.finish_bundle_before_checkpointing is None:
        forwarded.finish_bundle_before_checkpointing = True
    elif not forwarded.finish_bundle_before_checkpointing:
        _LOGGER.warning(
            "--no_finish_bundle_before_checkpointing: on Flink, a step's output buffered "
            "in a checkpoint waits for that step's next element or watermark; the watch "
            "can then wait forever for its first poll (see docs/operations/flink.md)"
        )


def run_job(
    settings: JobSettings, config: ActivationConfig, options: PipelineOptions
) -> dict[str, int]:
    """Builds and runs the pipeline; returns the job's counters by name."""
    if settings.report_facts_prefix:
        # One facts prefix per run: the runs of a split backfill all add to the report.
        settings = dataclasses.replace(
            settings, report_facts_prefix=f"{settings.report_facts_prefix}-{uuid.uuid4().hex[:8]}"
        )
    prefixes = (settings.output_path, settings.dead_letter_path, settings.report_facts_prefix)
    prepare_output_folders(prefixes)
    staged_before = temp_folders(prefixes)
    runner_name = options.view_as(StandardOptions).runner
    runner = OfflineDirectRunner() if runner_name in LOCAL_RUNNER_NAMES else None
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_pipeline(pipeline, settings, config)
    progress.reset()
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except BaseException:
        # Beam's file sinks stage whole output files in beam-temp-* folders and leave
        # them when the run fails: they hold events (PII).
        remove_temp_folders(prefixes, staged_before)
        raise
    finally:
        progress.stop()
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


def _unknown_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Flags that neither this job nor any Beam options class knows, and the known ones.

    The known flags are listed with this job's first, so that a typo's closest match
    prefers them.
    """
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
    ours = [f for action in _help_parser()._actions for f in action.option_strings]
    known = ours + [f for f in parser._option_string_actions if f not in ours]
    return [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")], known


def _watch_interval(flag: float | None, streaming: bool) -> float | None:
    """``--watch_interval``, defaulting to 60 seconds in streaming; ``None`` in batch."""
    if not streaming:
        return None
    return flag if flag is not None else DEFAULT_WATCH_INTERVAL_SECONDS


def default_region() -> str | None:
    """The region of the AWS default chain (AWS_REGION, AWS_DEFAULT_REGION, profile)."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        import boto3

        return boto3.session.Session().region_name
    except Exception:  # noqa: BLE001 - no usable AWS config is simply "no region"
        return None


def one_line(err: BaseException) -> str:
    """The most specific line of a (possibly runner-wrapped) exception message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    # Runners wrap worker exceptions in their traceback text; the last line holds the
    # original exception.
    return STEP_ANNOTATION.sub("", lines[-1]) or lines[-1]
