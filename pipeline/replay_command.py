"""``python -m pipeline replay``: send the Kinesis sink's dead letters again (docs/replay.md).

::

    python -m pipeline replay --dead_letter_path PREFIX --kinesis_stream NAME \\
        --kinesis_region REGION [--kinesis_endpoint_url URL] [--new_dead_letter_path PREFIX2] \\
        [--kinesis_role_arn ARN] [--kinesis_max_records_per_second N] [--kinesis_aggregate] \\
        [--kinesis_max_record_bytes N] [--skip_stream_check] [any Beam option]

Before anything is sent, on the submitting machine: the flags are checked, the dead-letter
files under PREFIX are listed and every letter is read once. Letters that are not the
sink's (stages ``read`` and ``transitions``) need the input fixed and the job run again,
not a replay: if there is any, the whole replay is refused (one ``error:`` line with the
count by reason, exit 2, nothing sent). Then a small Beam pipeline reads the files again,
puts each partition key's letters back in the order the sink gave them up, and sends the
event bytes unchanged through :class:`transforms.kinesis.sink.WriteToKinesisStream`.
What fails again is written under a new prefix (never over existing files).

Exit codes: 0 every letter delivered; 1 some were dead-lettered again (one ``error:``
line naming the new prefix) or the pipeline failed; 2 a usage error or a refusal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.textio import WriteToText
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline.arguments import absolute_path, default_region
from pipeline.graph import encode_dead_letter
from pipeline.main import (
    EXIT_FAILED,
    EXIT_USAGE,
    configure_logging,
    job_counters,
    one_line,
    write_failure_report,
)
from pipeline.options import SegmentEventsOptions
from pipeline.outputs import (
    prepare_output_folders,
    remove_temp_folders,
    restrict_output_files,
    temp_folders,
)
from pipeline.runners import LOCAL_RUNNER_NAMES, OfflineDirectRunner
from transforms.beam_internals import all_options_classes
from transforms.errors import SegmentEventsError
from transforms.kinesis.batching import DEFAULT_MAX_RECORD_BYTES
from transforms.kinesis.client import check_stream, make_kinesis_client
from transforms.kinesis.dead_letter_files import (
    LetterScan,
    ReadSinkDeadLetters,
    any_file_under,
    dead_letter_pattern,
    describe_counts,
    match_dead_letter_files,
    read_lines,
    scan_dead_letters,
)
from transforms.kinesis.sink import WriteToKinesisStream

_LOGGER = logging.getLogger(__name__)
_SECRET_FLAGS = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token")
# The flags of the job itself that mean nothing to a replay.
_JOB_ONLY_HINT = "replay takes only the flags in 'python -m pipeline replay --help'"


class ReplayUsageError(SegmentEventsError, ValueError):
    """A flag is missing or invalid, or the input cannot be replayed; one line."""


@dataclass(frozen=True)
class ReplaySettings:
    """The validated settings of one replay."""

    dead_letter_path: str
    new_dead_letter_path: str
    kinesis_stream: str
    kinesis_region: str
    kinesis_endpoint_url: str | None = None
    kinesis_role_arn: str | None = None
    kinesis_max_records_per_second: float | None = None
    kinesis_aggregate: bool = False
    kinesis_max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    skip_stream_check: bool = False


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did."""

    letters: int
    dead_again: int
    counters: dict[str, int]

    @property
    def resent(self) -> int:
        """Letters acknowledged by Kinesis (each one was either that or dead-lettered)."""
        return self.letters - self.dead_again


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``python -m pipeline replay``; returns the process exit code."""
    argv = list(sys.argv[2:] if argv is None else argv)
    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    if "-h" in argv or "--help" in argv:
        _parser().print_help()
        return 0
    try:
        settings, options = parse_args(argv)
        scan = check_inputs(settings)
    except SegmentEventsError as err:  # ReplayUsageError, DeadLetterFileError: nothing sent
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BeamIOError as err:
        print(f"error: cannot read the dead letters: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    if scan.letters == 0:
        print(f"Nothing to replay: the files under {settings.dead_letter_path} hold no letters.")
        return 0
    if scan.over_limit:
        print(
            f"warning: {scan.over_limit} dead letters are larger than --kinesis_max_record_bytes "
            f"({settings.kinesis_max_record_bytes}); they will be dead-lettered again",
            file=sys.stderr,
        )
    if not settings.skip_stream_check:
        try:
            preflight_stream(settings)
        except SegmentEventsError as err:  # StreamCheckError
            print(f"error: {err}; nothing was sent", file=sys.stderr)
            return EXIT_USAGE
    try:
        result = run_replay(settings, scan, options)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # noqa: BLE001 - the one place that turns failures into a line
        _LOGGER.debug("replay failed", exc_info=True)
        print(f"error: the replay failed: {one_line(err)}", file=sys.stderr)
        report = write_failure_report()
        if report:
            print(f"  the full traceback is in {report}", file=sys.stderr)
        return EXIT_FAILED
    print_summary(result, settings)
    if result.dead_again:
        print(
            f"error: {result.dead_again} of {result.letters} records were dead-lettered again, "
            f"in {dead_letter_pattern(settings.new_dead_letter_path)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def parse_args(argv: Sequence[str]) -> tuple[ReplaySettings, PipelineOptions]:
    """Validates the replay's flags; every other flag must be a Beam option.

    Raises:
        ReplayUsageError: A flag is missing, unknown or invalid.
    """
    args, rest = _parser().parse_known_args(list(argv))
    _check_beam_flags(rest)
    options = PipelineOptions(rest)
    all_options = options.get_all_options(drop_default=True)
    for secret in _SECRET_FLAGS:
        if all_options.get(secret):
            raise ReplayUsageError(
                f"--{secret}: credentials are never flags; use the AWS default credential chain"
            )
    if options.view_as(StandardOptions).streaming:
        raise ReplayUsageError("--streaming: a replay is a batch run over files")
    if options.view_as(DirectOptions).direct_running_mode == "multi_threading":
        raise ReplayUsageError(
            "--direct_running_mode=multi_threading loses grouped records in Beam 2.77; "
            "use --direct_running_mode=multi_processing (or in_memory, the default)"
        )
    if not args.dead_letter_path:
        raise ReplayUsageError(
            "--dead_letter_path is required: the prefix the job wrote its dead letters to"
        )
    if not args.kinesis_stream:
        raise ReplayUsageError("--kinesis_stream is required: the stream to send to")
    region = args.kinesis_region or default_region()
    if not region:
        raise ReplayUsageError("--kinesis_region is required (or set AWS_REGION)")
    if args.kinesis_max_records_per_second is not None and args.kinesis_max_records_per_second <= 0:
        raise ReplayUsageError("--kinesis_max_records_per_second must be a positive number")
    if not 1 <= args.kinesis_max_record_bytes <= 10 * 1024 * 1024:
        raise ReplayUsageError("--kinesis_max_record_bytes must be between 1 and 10485760")
    source = absolute_path(args.dead_letter_path)
    target = absolute_path(args.new_dead_letter_path) if args.new_dead_letter_path else None
    if target is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        target = f"{source}-replay-{stamp}"
    if target == source:
        raise ReplayUsageError(
            "--new_dead_letter_path must differ from --dead_letter_path (the letters that "
            "fail again must not mix with, or overwrite, the ones being replayed)"
        )
    settings = ReplaySettings(
        dead_letter_path=source,
        new_dead_letter_path=target,
        kinesis_stream=args.kinesis_stream,
        kinesis_region=region,
        kinesis_endpoint_url=args.kinesis_endpoint_url,
        kinesis_role_arn=args.kinesis_role_arn,
        kinesis_max_records_per_second=args.kinesis_max_records_per_second,
        kinesis_aggregate=args.kinesis_aggregate,
        kinesis_max_record_bytes=args.kinesis_max_record_bytes,
        skip_stream_check=args.skip_stream_check,
    )
    return settings, options


def check_inputs(settings: ReplaySettings) -> LetterScan:
    """Lists and reads the dead letters, and checks the new prefix; sends nothing.

    Raises:
        ReplayUsageError: No dead-letter files, files already under the new prefix, or
            letters that are not the sink's (the replay is refused).
        DeadLetterFileError: A line is not a dead letter.
    """
    files = match_dead_letter_files(settings.dead_letter_path)
    if not files:
        raise ReplayUsageError(
            f"no dead-letter files match {dead_letter_pattern(settings.dead_letter_path)} "
            "(--dead_letter_path is the prefix given to the job, e.g. out/dead-letters)"
        )
    existing = any_file_under(settings.new_dead_letter_path)
    if existing:
        raise ReplayUsageError(
            f"--new_dead_letter_path {settings.new_dead_letter_path}: files exist there "
            f"already ({existing[0]}); give a new prefix. Nothing was sent"
        )
    scan = scan_dead_letters(files, settings.kinesis_max_record_bytes)
    if scan.not_replayable:
        refused = sum(scan.not_replayable.values())
        raise ReplayUsageError(
            f"{refused} of {scan.letters} dead letters are not from the Kinesis sink "
            f"({describe_counts(scan.not_replayable)}): they are input the job could not use "
            "and need a fixed input and a re-run of the job, not a replay; keep only the "
            "kinesis_sink lines under a new prefix to replay those (docs/replay.md). "
            "Nothing was sent"
        )
    return scan


def preflight_stream(settings: ReplaySettings) -> None:
    """Describes the stream from the submitting machine, as the job does."""
    client = make_kinesis_client(
        settings.kinesis_region,
        settings.kinesis_endpoint_url,
        settings.kinesis_role_arn,
        max_pool_connections=1,
        connect_timeout=5.0,
        read_timeout=15.0,
    )
    check_stream(client, settings.kinesis_stream)


def build_replay(pipeline: beam.Pipeline, settings: ReplaySettings, files: Sequence[str]) -> None:
    """Adds the replay to a pipeline: files -> sink -> new dead-letter files."""
    dead_letters = (
        pipeline
        | "ReadSinkDeadLetters" >> ReadSinkDeadLetters(files)
        | "WriteToKinesis"
        >> WriteToKinesisStream(
            stream_name=settings.kinesis_stream,
            region=settings.kinesis_region,
            endpoint_url=settings.kinesis_endpoint_url,
            role_arn=settings.kinesis_role_arn,
            max_records_per_second=settings.kinesis_max_records_per_second,
            aggregate=settings.kinesis_aggregate,
            max_record_bytes=settings.kinesis_max_record_bytes,
            dead_letter=True,
        )
    )
    _ = (
        dead_letters
        | "EncodeDeadLetters" >> beam.Map(encode_dead_letter)
        | "WriteDeadLetterFiles"
        >> WriteToText(settings.new_dead_letter_path, file_name_suffix=".jsonl", skip_if_empty=True)
    )


def run_replay(
    settings: ReplaySettings, scan: LetterScan, options: PipelineOptions
) -> ReplayResult:
    """Runs the replay pipeline; counts what was dead-lettered again from its files."""
    prefixes = (settings.new_dead_letter_path,)
    prepare_output_folders(prefixes)
    staged_before = temp_folders(prefixes)
    runner_name = options.view_as(StandardOptions).runner
    runner = OfflineDirectRunner() if runner_name in LOCAL_RUNNER_NAMES else None
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_replay(pipeline, settings, scan.files)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except BaseException:
        remove_temp_folders(prefixes, staged_before)
        raise
    finally:
        restrict_output_files(prefixes)
    dead_again = sum(
        1
        for path in match_dead_letter_files(settings.new_dead_letter_path)
        for _ in read_lines(path)
    )
    return ReplayResult(scan.letters, dead_again, job_counters(result))


def print_summary(result: ReplayResult, settings: ReplaySettings) -> None:
    """Prints the replay summary to standard output."""
    rows = [
        ("dead letters read", result.letters),
        ("records re-sent", result.resent),
        ("dead-lettered again", result.dead_again),
    ]
    for label, name in (
        ("PutRecords requests", "kinesis_requests"),
        ("retries", "kinesis_retries"),
        ("throttled records", "kinesis_throttled_records"),
    ):
        if name in result.counters:
            rows.append((label, result.counters[name]))
    width = max(len(label) for label, _ in rows)
    print("Replay summary:")
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")
    if result.dead_again:
        print(f"  new dead letters: {dead_letter_pattern(settings.new_dead_letter_path)}")


def _check_beam_flags(rest: Sequence[str]) -> None:
    """Refuses the job's own flags and anything that is not a Beam option."""
    job_flags = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    SegmentEventsOptions._add_argparse_args(job_flags)
    beam_flags = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for cls in all_options_classes():
        if cls is SegmentEventsOptions:
            continue
        try:
            cls._add_argparse_args(beam_flags)
        except argparse.ArgumentError:
            continue  # the same flag declared by two classes
    known_job = {opt for action in job_flags._actions for opt in action.option_strings}
    for arg in rest:
        flag = arg.split("=", 1)[0]
        if flag in known_job:
            raise ReplayUsageError(f"{flag} does not apply to a replay ({_JOB_ONLY_HINT})")
    try:
        _, unknown = beam_flags.parse_known_args(list(rest))
    except argparse.ArgumentError as err:
        raise ReplayUsageError(str(err)) from None
    flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")]
    if flags:
        raise ReplayUsageError(f"unknown flag {flags[0]} ({_JOB_ONLY_HINT})")
    if unknown:
        raise ReplayUsageError(f"unexpected argument {unknown[0]!r} ({_JOB_ONLY_HINT})")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one :class:`ReplayUsageError` line, not an exit."""

    def error(self, message: str):
        raise ReplayUsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m pipeline replay",
        description="Sends the Kinesis sink's dead letters (retries_exhausted, blocked_by_earlier_failure, "
        "record_too_large) to a Kinesis stream again, each partition key's letters in the "
        "order the sink gave them up, the event bytes (and eventIds) unchanged.",
        epilog="Any Beam option is accepted too (--runner, ...). AWS credentials come from "
        "boto3's default chain, never from flags. See docs/replay.md.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--dead_letter_path",
        help="The --dead_letter_path prefix of the job run whose dead letters to send "
        "again (its files PREFIX-*.jsonl). Required.",
    )
    parser.add_argument(
        "--new_dead_letter_path",
        default=None,
        help="Prefix for the letters that fail again; must differ from --dead_letter_path "
        "and hold no files yet. Default: PREFIX-replay-<UTC time>.",
    )
    parser.add_argument("--kinesis_stream", help="The Kinesis data stream. Required.")
    parser.add_argument(
        "--kinesis_region",
        default=None,
        help="AWS region of the stream. Default: the AWS default chain's (AWS_REGION).",
    )
    parser.add_argument(
        "--kinesis_endpoint_url",
        default=None,
        help="Endpoint of a Kinesis-compatible server. Default: the region's AWS endpoint.",
    )
    parser.add_argument(
        "--kinesis_role_arn",
        default=None,
        help="IAM role to assume for writing. Default: none.",
    )
    parser.add_argument(
        "--kinesis_max_records_per_second",
        type=float,
        default=None,
        help="Cap on records per second per writer process. Default: no cap.",
    )
    parser.add_argument(
        "--kinesis_aggregate",
        action="store_true",
        default=False,
        help="Pack events into KPL aggregated records. Default: off.",
    )
    parser.add_argument(
        "--kinesis_max_record_bytes",
        type=int,
        default=DEFAULT_MAX_RECORD_BYTES,
        help="Largest record (data plus partition key) the stream accepts. Default: 1048576.",
    )
    parser.add_argument(
        "--skip_stream_check",
        action="store_true",
        default=False,
        help="Do not describe the stream from this machine first. Default: off.",
    )
    return parser
