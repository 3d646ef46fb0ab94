"""The command line's flags: parsing and checking them into the run's settings.

``python -m pipeline`` (:mod:`pipeline.main`) calls :func:`parse_args`; everything here
happens before anything runs, and a wrong flag, config or input is a :class:`UsageError`
(or another error of the family), one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
import uuid
from collections.abc import Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline.graph import JobSettings
from pipeline.options import FlinkForwardedOptions, SegmentEventsOptions
from transforms.beam_internals import (
    all_options_classes,
)
from transforms.config import ActivationConfig, load_config
from transforms.errors import SegmentEventsError
from transforms.events.timestamps import format_timestamp
from transforms.snapshots.read import run_files
from transforms.snapshots.snapshot_time import snapshot_time_from_path
from transforms.snapshots.watch import DEFAULT_WATCH_INTERVAL_SECONDS

_LOGGER = logging.getLogger(__name__)

# Beam has flags for S3 keys; secrets must come from the AWS default chain instead.
_SECRET_FLAGS = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token")
DEFAULT_PROGRESS_INTERVAL_S = 10.0


class UsageError(SegmentEventsError, ValueError):
    """A flag is missing or invalid; the message says what to fix."""


def progress_interval(opts: SegmentEventsOptions) -> float | None:
    """Seconds between progress lines: the flag, else 10 on a terminal; none if quiet."""
    if opts.quiet:
        return None
    if opts.progress_interval is not None:
        return opts.progress_interval if opts.progress_interval > 0 else None
    return DEFAULT_PROGRESS_INTERVAL_S if sys.stderr.isatty() else None


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
    files = run_files(
        () if streaming else settings.inputs, settings.baseline, settings.snapshot_time_field
    )
    inputs = [f for f in files if not f.baseline]
    baseline = [f for f in files if f.baseline]
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
