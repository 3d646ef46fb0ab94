"""Entry point: ``python -m pipeline`` (docs/contract.md §8).

``main(argv)`` validates every flag and the config (:mod:`pipeline.arguments`) before a
pipeline exists, so that a mistake costs one clear line and a non-zero exit, never a
traceback; then it builds the graph with :func:`pipeline.graph.build_pipeline` and runs it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import tempfile
import traceback
import uuid
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.arguments import (
    _help_parser,
    parse_args,
    progress_interval,
)
from pipeline.backfill import run_split_backfill
from pipeline.graph import JobSettings, build_pipeline
from pipeline.options import SegmentEventsOptions
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
)
from transforms.config import ActivationConfig
from transforms.errors import SegmentEventsError
from transforms.kinesis.client import check_stream, make_kinesis_client
from transforms.metrics import METRICS_NAMESPACE
from transforms.snapshots.read import run_files
from transforms.snapshots.snapshot_time import snapshot_time_from_path

_LOGGER = logging.getLogger(__name__)
EXIT_USAGE = 2
EXIT_FAILED = 1
# Libraries whose DEBUG logs echo records or credentials: never below INFO.
_CAPPED_LOGGERS = ("apache_beam", "botocore", "boto3", "urllib3", "s3transfer")
# Where Beam logs (with a traceback) the exception of a failing step before re-raising it.


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
        baseline = run_files((), settings.baseline, settings.snapshot_time_field)
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


def one_line(err: BaseException) -> str:
    """The most specific line of a (possibly runner-wrapped) exception message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    # Runners wrap worker exceptions in their traceback text; the last line holds the
    # original exception.
    return STEP_ANNOTATION.sub("", lines[-1]) or lines[-1]
