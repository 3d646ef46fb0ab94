"""The job's one error family: :class:`SegmentEventsError` and what derives from it.

Every exception the job raises on purpose derives from :class:`SegmentEventsError`,
besides the standard base it had before (``ValueError`` or ``RuntimeError``), so that
existing ``except ValueError`` clauses keep working. Its message is one line written for
the person running the job; the command line prints it as ``error: <message>``.

The classes live next to the code that raises them; this list is the one place that
names them all (``tests/test_errors.py`` checks that every exception class of
``pipeline/`` and ``transforms/`` is in the family and in this list). Each entry: the
class (its module), when to raise it, and what the user sees.

Usage (before anything runs; exit 2):
    * ``UsageError`` (pipeline.arguments): a flag of ``python -m pipeline`` is missing,
      unknown or invalid, or its output files exist.
    * ``ReplayUsageError`` (pipeline.replay_command): a flag of ``replay`` is wrong, or its
      letters cannot be replayed; nothing is sent.
    * ``_UsageError`` (pipeline.aws_credentials): a flag of ``aws-credentials`` is wrong
      (exit 2 of that command's own table).

Config (before anything runs; exit 2):
    * ``ConfigError`` (transforms.config): the activation config is invalid.
    * ``_DuplicateKeyError`` (transforms.config): a config object repeats a key;
      internal, reported as a ``ConfigError``.

Input:
    * ``InputError`` (transforms.snapshots.read): before the run, a pattern matches
      nothing or a file has an unknown format; exit 2.
    * ``SnapshotTimeError`` (transforms.snapshots.snapshot_time): a file's snapshot time
      cannot be resolved; exit 2 before the run (a landed file in streaming is logged
      and skipped).
    * ``InputFileError`` (transforms.snapshots.read): while the job runs, a file cannot
      be opened or decoded; the run fails, exit 1. A subclass of ``InputError``.

Record (never reaches the command line):
    * ``RecordError`` (transforms.snapshots.profiles): one input record cannot be used;
      its ``code`` becomes the dead letter's ``reason`` (stage ``read``), its message the
      ``error`` (:mod:`transforms.dead_letters`).
    * ``TimestampError`` (transforms.events.timestamps): a value is not an accepted
      timestamp; its callers turn it into the error of their kind (record, config,
      snapshot time, event).

Event:
    * ``EventFormatError`` (transforms.events.format): a transition cannot be formatted,
      a bug upstream; the run fails, exit 1. Never quotes a value.

Guard (a batch run fails before anything is sent; exit 1):
    * ``MassExitError`` (transforms.segments.guard): a snapshot misses too many of the
      profiles tracked before it (``max_exit_fraction``).
    * ``BadRecordsError`` (transforms.segments.guard): more records than
      ``--max_bad_records`` could not be tied to a profile.

Sink:
    * ``StreamCheckError`` (transforms.kinesis.client): the stream check before the run
      fails; exit 2, nothing ran.
    * ``KinesisSinkError`` (transforms.kinesis.failures): while the job runs, a fatal
      Kinesis error, an endpoint never reached, or a record that cannot be delivered
      without dead letters; the run fails, exit 1.

Run:
    * ``BackfillRunError`` (pipeline.backfill): one run of a split backfill failed; the
      message says which runs were sent; exit 1.

Replay:
    * ``DeadLetterFileError`` (transforms.kinesis.dead_letter_files): a line of a dead-letter file is
      not a dead letter (named by file and line, never shown); exit 2.

Credentials:
    * ``CredentialsError`` (pipeline.aws_credentials): ``aws-credentials`` cannot get
      keys; it carries its own exit code (3 to 7).

Which to raise where:

* Before a pipeline exists (flags, config, matching files, the stream check): a usage,
  config or input error, or ``StreamCheckError``. The command line catches the family
  there and exits 2; nothing has run.
* In a step, for one bad input record: never let an error out of the step. Raise
  ``RecordError`` with its code where the record is validated; the read step turns it
  into a dead letter.
* In a step, for a condition that must stop the whole run (a guard, an unreadable file,
  the sink): a guard, input-file or sink error. Runners wrap errors on their way out of
  a step, so the command line catches every exception of a run, not only the family,
  and exits 1.
* Messages name the flag, file, stream or field at fault. Only a ``RecordError`` may
  quote input (it goes to the dead letters, which hold the raw input anyway); no other
  message holds a profile key, an identity or an attribute value.
"""

from __future__ import annotations


class SegmentEventsError(Exception):
    """Base of every error the job raises on purpose; the message is one line.

    Subclasses keep their standard base too, e.g.
    ``class ConfigError(SegmentEventsError, ValueError)``.
    """
