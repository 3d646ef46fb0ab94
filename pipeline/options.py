"""Command-line options of the job (docs/contract.md §8) as a Beam ``PipelineOptions`` subclass.

Credentials are deliberately not options: boto3's default chain provides them (docs/contract.md §6).
"""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions


class SegmentEventsOptions(PipelineOptions):
    """Options of the segment-events job; any other Beam option passes through."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--config",
            help="Path of the destination config JSON (docs/contract.md §3). Required.",
        )
        parser.add_argument(
            "--input",
            action="append",
            default=None,
            help="Glob of snapshot files (.avro, .json/.jsonl[.gz], .parquet). Repeatable. "
            "Required.",
        )
        parser.add_argument(
            "--baseline",
            action="append",
            default=None,
            help="Glob of a baseline snapshot: seeds the state and emits nothing. "
            "Repeatable. Default: none.",
        )
        parser.add_argument(
            "--snapshot_time_field",
            default=None,
            help="Record field holding the snapshot time; takes precedence over the "
            "snapshot=<date> path segment and the file-name date. Default: none.",
        )
        parser.add_argument(
            "--kinesis_stream",
            default=None,
            help="Kinesis stream to write events to. Default: none (no Kinesis output).",
        )
        parser.add_argument(
            "--kinesis_stream_arn",
            default=None,
            help="ARN of the Kinesis stream to write events to, instead of "
            "--kinesis_stream: for a stream of another account whose resource policy lets "
            "this one write. The region is the ARN's. Default: none.",
        )
        parser.add_argument(
            "--kinesis_region",
            default=None,
            help="AWS region of the stream. Required with --kinesis_stream unless the AWS "
            "default chain gives one (AWS_REGION, profile).",
        )
        parser.add_argument(
            "--kinesis_endpoint_url",
            default=None,
            help="Endpoint URL of a Kinesis-compatible server (e.g. a local kinesalite). "
            "Default: the AWS endpoint of the region.",
        )
        parser.add_argument(
            "--kinesis_role_arn",
            default=None,
            help="IAM role to assume with STS for writing. Default: none (the default "
            "credential chain's identity).",
        )
        parser.add_argument(
            "--kinesis_max_records_per_second",
            type=float,
            default=None,
            help="Cap on records per second per writer process, for backfills that must "
            "not starve live consumers. Default: no cap.",
        )
        parser.add_argument(
            "--kinesis_aggregate",
            action="store_true",
            default=False,
            help="Pack events into KPL aggregated records (consumers must deaggregate). "
            "Default: off.",
        )
        parser.add_argument(
            "--kinesis_max_record_bytes",
            type=int,
            default=1_048_576,
            help="Largest record (data plus partition key) the stream accepts; raise to "
            "10485760 for streams with the raised limit. Default: 1048576.",
        )
        parser.add_argument(
            "--output_path",
            default=None,
            help="Prefix of JSON Lines files of the events (exactly the bytes sent to "
            "Kinesis). Default: none.",
        )
        parser.add_argument(
            "--dead_letter_path",
            default=None,
            help="Prefix of JSON Lines dead-letter files (raw input, file, reason); created "
            "owner-readable only. Default: none (records that cannot be delivered fail the "
            "job; malformed input records are counted in the run summary, not written).",
        )
        parser.add_argument(
            "--report",
            default=None,
            help="Batch: write PATH.json and PATH.html (one offline page) with the entries, "
            "exits and members per snapshot and segment, the mass-exit verdicts, the dead "
            "letters and the activation figures. With neither --kinesis_stream nor "
            "--output_path it is a dry run that sends nothing. Default: none.",
        )
        parser.add_argument(
            "--overwrite",
            action="store_true",
            default=False,
            help="Batch: replace existing files of --output_path, --dead_letter_path or "
            "--report. Default: off (a run refuses to start when such files exist, so a "
            "daily run never silently replaces yesterday's).",
        )
        parser.add_argument(
            "--progress_interval",
            type=float,
            default=None,
            help="Seconds between progress lines (records read, profiles, events, records "
            "sent, throttled, rate) on standard error. Default: 10 when standard error is "
            "a terminal, otherwise none.",
        )
        parser.add_argument(
            "--quiet",
            action="store_true",
            default=False,
            help="No progress lines (the run summary and errors still print). Default: off.",
        )
        parser.add_argument(
            "--skip_stream_check",
            action="store_true",
            default=False,
            help="Do not describe --kinesis_stream from the submitting machine before the "
            "run (for a submitter without AWS credentials, e.g. when only the Dataflow or "
            "Flink workers have them). Default: off (a missing or unreachable stream fails "
            "in seconds).",
        )
        parser.add_argument(
            "--max_bad_records",
            type=int,
            default=0,
            help="Batch: how many input records that cannot be read and do not name their "
            "profile (a broken line, a record without a profile key) the run accepts. "
            "Such a record makes its snapshot incomplete: above this number the run fails "
            "before anything is sent; up to it, no profile exits by disappearance from an "
            "incomplete snapshot (a later complete snapshot confirms the exit). A bad "
            "record that names its profile never counts: that profile keeps its state. "
            "Every bad record goes to the dead letters. Streaming does not take this flag: "
            "it goes on, and a TTL exit whose absence an incomplete snapshot cannot prove "
            "is withheld (dead letter reason incomplete_snapshot). Default: 0.",
        )
        parser.add_argument(
            "--allow_mass_exit",
            action="store_true",
            default=False,
            help="Send exits even when more than max_exit_fraction of the tracked profiles "
            "disappear from a snapshot. Default: off (the run fails instead).",
        )
        parser.add_argument(
            "--batch_path",
            choices=("columnar", "rows"),
            default="columnar",
            help="How a batch run computes transitions: 'columnar' reads files into Arrow "
            "batches and replays only the rows that differ from the profile's previous "
            "snapshot; 'rows' replays every record (the reference path, and the fallback "
            "the run takes for JSON Lines inputs or --snapshot_time_field). Both give "
            "the same events. Default: columnar.",
        )
        parser.add_argument(
            "--snapshots_per_run",
            type=int,
            default=None,
            help="Batch backfills: run the job once per this many consecutive snapshots, "
            "in time order, each run starting from the profile states the previous one "
            "left (same events as one run; memory follows this number, not the length of "
            "the backfill). Needs snapshot times in the paths (no --snapshot_time_field). "
            "Default: all snapshots in one run.",
        )
        parser.add_argument(
            "--watch_interval",
            type=float,
            default=None,
            help="Streaming: seconds between scans of --input for new snapshots. "
            "Default: 60 with --streaming.",
        )
        parser.add_argument(
            "--max_watch_seconds",
            type=float,
            default=None,
            help="Streaming: stop watching --input after this many seconds; the job then "
            "ends like a drained streaming job (pending timers fire). Default: watch until "
            "the job is cancelled or drained.",
        )


class FlinkForwardedOptions(PipelineOptions):
    """Options of Beam's Flink runner that only its (Java) job server reads.

    Declared so that the command line, which refuses unknown flags, accepts them; the
    portable runner forwards every set option to the job server, which maps
    ``checkpointing_interval`` to ``FlinkPipelineOptions.checkpointingInterval``.
    """

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--checkpointing_interval",
            type=int,
            default=None,
            help="Flink: milliseconds between checkpoints. A streaming job on Flink needs "
            "checkpoints for its state and its position in the watch to survive a "
            "failure. Default: none (no checkpoints).",
        )
        parser.add_argument(
            "--checkpointing_mode",
            choices=("EXACTLY_ONCE", "AT_LEAST_ONCE"),
            default=None,
            help="Flink: checkpointing mode. Default: Flink's (EXACTLY_ONCE).",
        )
        parser.add_argument(
            "--state_backend",
            choices=("rocksdb", "filesystem", "hashmap"),
            default=None,
            help="Flink: the state backend of the job (with --state_backend_storage_path). "
            "Default: the cluster's.",
        )
        parser.add_argument(
            "--state_backend_storage_path",
            default=None,
            help="Flink: where checkpoints go (file:///..., s3://...). Default: the "
            "cluster's state.checkpoints.dir.",
        )
        parser.add_argument(
            "--number_of_execution_retries",
            type=int,
            default=None,
            help="Flink: restarts after a failure (a fixed-delay restart strategy). Beam "
            "2.50's job server applies it to streaming jobs only; batch jobs follow the "
            "cluster's restart-strategy. Default: the cluster's restart strategy.",
        )
        parser.add_argument(
            "--execution_retry_delay",
            type=int,
            default=None,
            help="Flink: milliseconds between two restarts. Default: the cluster's.",
        )
        parser.add_argument(
            "--savepoint_path",
            default=None,
            help="Flink: start the job from this savepoint or retained checkpoint (same "
            "config, same step names). Default: none.",
        )
        parser.add_argument(
            "--shutdown_sources_after_idle_ms",
            type=int,
            default=None,
            help="Flink: stop idle sources after this long; with checkpointing they stay up "
            "(Flink needs running sources to checkpoint). Default: Beam's.",
        )
        parser.add_argument(
            "--finish_bundle_before_checkpointing",
            action="store_true",
            default=None,
            help="Flink: finish the open bundle and emit its output before a checkpoint "
            "barrier, instead of buffering that output in the checkpoint. Set by default for "
            "checkpointed streaming (see docs/operations/flink.md); "
            "--no_finish_bundle_before_checkpointing turns it off.",
        )
        parser.add_argument(
            "--no_finish_bundle_before_checkpointing",
            dest="finish_bundle_before_checkpointing",
            action="store_false",
            help=argparse.SUPPRESS,
        )
        parser.add_argument(
            "--max_bundle_size",
            type=int,
            default=None,
            help="Flink: the most elements in a bundle. Default: Beam's (1000).",
        )
        parser.add_argument(
            "--max_bundle_time_mills",
            type=int,
            default=None,
            help="Flink: milliseconds after which an open bundle is finished. Default: "
            "Beam's (1000).",
        )
        parser.add_argument(
            "--min_pause_between_checkpoints",
            type=int,
            default=None,
            help="Flink: the least milliseconds between the end of a checkpoint and the start "
            "of the next. Default: Flink's (0).",
        )
        parser.add_argument(
            "--checkpoint_timeout_millis",
            type=int,
            default=None,
            help="Flink: milliseconds after which a checkpoint is aborted. Default: Flink's "
            "(10 minutes).",
        )
        parser.add_argument(
            "--retain_externalized_checkpoints_on_cancellation",
            action="store_true",
            default=None,
            help="Flink: keep the last checkpoint when the job is cancelled, to restart "
            "from it with --savepoint_path. Default: off.",
        )
