"""The one dead-letter shape of every stage (docs/dead-letters.md).

A dead letter is a record the job could not use or deliver, written as one JSON object
per line under ``--dead_letter_path``. Every stage builds its letters here, through
:class:`DeadLetter`, so that their shape cannot drift apart; the shape is published as
``schemas/dead_letter.schema.json``. In every stage:

* ``reason`` is a short stable code (snake_case, one of :data:`REASONS` of the stage):
  what to count, group and alert on;
* ``error`` is the detail for a person (for the read stage, the message of the
  :class:`transforms.snapshots.profiles.RecordError`, which may quote the input).

Letters cross the pipeline as plain dicts (:meth:`DeadLetter.to_dict`): Beam encodes
them with its fast primitive coder on every runner, and the report counts them and the
files hold them as they are. Files written by earlier versions, whose read letters hold
the message in ``reason`` and no ``error``, are read into this shape by :func:`upgrade`.

Beam-independent; imports nothing of the job, so that every stage may use it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

# Stages.
READ = "read"
TRANSITIONS = "transitions"
KINESIS_SINK = "kinesis_sink"

# Reasons of the read stage: the kinds of RecordError.
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
INVALID_RECORD = "invalid_record"
NO_PROFILE_KEY = "no_profile_key"
NO_SNAPSHOT_TIME = "no_snapshot_time"
# Reasons of the transitions stage (streaming).
LATE_SNAPSHOT = "late_snapshot"
MASS_EXIT_HELD = "mass_exit_held"
INCOMPLETE_SNAPSHOT = "incomplete_snapshot"
# Reasons of the Kinesis sink.
RECORD_TOO_LARGE = "record_too_large"
RETRIES_EXHAUSTED = "retries_exhausted"
BLOCKED_BY_EARLIER_FAILURE = "blocked_by_earlier_failure"
INVALID_PARTITION_KEY = "invalid_partition_key"

# The reason codes of each stage; docs/dead-letters.md and the JSON Schema list the same.
REASONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        READ: frozenset(
            (INVALID_UTF8, INVALID_JSON, INVALID_RECORD, NO_PROFILE_KEY, NO_SNAPSHOT_TIME)
        ),
        TRANSITIONS: frozenset((LATE_SNAPSHOT, MASS_EXIT_HELD, INCOMPLETE_SNAPSHOT)),
        KINESIS_SINK: frozenset(
            (
                RECORD_TOO_LARGE,
                RETRIES_EXHAUSTED,
                BLOCKED_BY_EARLIER_FAILURE,
                INVALID_PARTITION_KEY,
            )
        ),
    }
)

# profile_state of a read letter: the record named its profile, which kept its state;
# or whose record it was is unknown, and its snapshot is incomplete.
KEPT = "kept"
UNKNOWN = "unknown"

# How the read stage's messages of earlier versions begin, and their codes today (the
# messages have not changed: they are today's ``error``).
_LEGACY_READ_PREFIXES = (
    ("line is not valid UTF-8", INVALID_UTF8),
    ("line is not valid JSON", INVALID_JSON),
    ("no profile key", NO_PROFILE_KEY),
    ("no snapshot time", NO_SNAPSHOT_TIME),
    ("snapshot time field ", NO_SNAPSHOT_TIME),
)


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One dead letter, checked when it is built.

    Attributes:
        stage: ``read``, ``transitions`` or ``kinesis_sink``.
        reason: One of the stage's :data:`REASONS`.
        error: The detail, for a person; never empty.
        raw: The input (read), record or transition (transitions) or event (sink) as text.
        file: The source file; ``""`` or ``None`` where there is none.
        profile_state: Read stage only: ``kept`` or ``unknown``.
        snapshot_ms: Read stage with ``profile_state`` ``unknown`` only (where it is
            always written, ``None`` when the file path tells no time).
        partition_key: Sink only: the event's partition key.

    Raises:
        ValueError: A field does not fit the stage (a bug of the caller).
    """

    stage: str
    reason: str
    error: str
    raw: str
    file: str | None
    profile_state: str | None = None
    snapshot_ms: int | None = None
    partition_key: str | None = None

    def __post_init__(self) -> None:
        reasons = REASONS.get(self.stage)
        if reasons is None:
            raise ValueError(f"unknown dead-letter stage {self.stage!r}")
        if self.reason not in reasons:
            raise ValueError(f"{self.reason!r} is not a reason of the {self.stage} stage")
        if not isinstance(self.error, str) or not self.error:
            raise ValueError("a dead letter needs its error detail")
        if (self.stage == READ) != (self.profile_state in (KEPT, UNKNOWN)):
            raise ValueError("profile_state is kept or unknown, and only in the read stage")
        if self.snapshot_ms is not None and self.profile_state != UNKNOWN:
            raise ValueError("snapshot_ms belongs to read letters of unknown profiles")
        if (self.stage == KINESIS_SINK) != (self.partition_key is not None):
            raise ValueError("partition_key is in the sink's letters, and only there")

    def to_dict(self) -> dict[str, Any]:
        """The letter as the pipeline carries and the files hold it.

        The stage's own fields are present exactly where docs/dead-letters.md says.
        """
        letter: dict[str, Any] = {
            "stage": self.stage,
            "reason": self.reason,
            "error": self.error,
            "file": self.file,
            "raw": self.raw,
        }
        if self.profile_state is not None:
            letter["profile_state"] = self.profile_state
            if self.profile_state == UNKNOWN:
                letter["snapshot_ms"] = self.snapshot_ms
        if self.partition_key is not None:
            letter["partition_key"] = self.partition_key
        return letter


def read_dead_letter(
    reason: str, error: str, *, file: str, raw: Any, kept: bool, snapshot_ms: int | None = None
) -> dict[str, Any]:
    """A letter of the read stage.

    Args:
        reason: The ``code`` of the record's ``RecordError``.
        error: Its message.
        file: The file the record came from.
        raw: The raw record (bytes of a JSON line, or a decoded Avro or Parquet row).
        kept: Whether the record named its profile, which keeps its state.
        snapshot_ms: For an unknown profile, the snapshot the record belongs to, if known.
    """
    return DeadLetter(
        READ,
        reason,
        error,
        raw_text(raw),
        file,
        profile_state=KEPT if kept else UNKNOWN,
        snapshot_ms=None if kept else snapshot_ms,
    ).to_dict()


def transitions_dead_letter(reason: str, error: str, *, file: str, raw: str) -> dict[str, Any]:
    """A letter of the transitions stage (``raw``: the record or transition as JSON)."""
    return DeadLetter(TRANSITIONS, reason, error, raw, file).to_dict()


def sink_dead_letter(reason: str, error: str, *, partition_key: str, data: bytes) -> dict[str, Any]:
    """A letter of the Kinesis sink: the event bytes as text, and their partition key."""
    return DeadLetter(
        KINESIS_SINK,
        reason,
        error,
        data.decode("utf-8", "replace"),
        None,
        partition_key=partition_key,
    ).to_dict()


def raw_text(raw: Any) -> str:
    """The raw input as text for a dead letter, whatever its format.

    Bytes are decoded as UTF-8 with invalid bytes replaced (a line that is not UTF-8 is
    itself a dead letter); decoded rows become sorted JSON.
    """
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    try:
        return json.dumps(raw, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(raw)


def upgrade(letter: dict[str, Any]) -> dict[str, Any]:
    """A letter read from a file, in this version's shape.

    Earlier versions wrote the read stage's message in ``reason`` and no ``error``: the
    message becomes the ``error`` and its code the ``reason``. Every other letter comes
    back as it is.
    """
    if letter.get("stage") != READ or "error" in letter:
        return letter
    message = letter.get("reason")
    if not isinstance(message, str) or message in REASONS[READ]:
        return letter
    return {**letter, "reason": legacy_read_reason(message), "error": message}


def legacy_read_reason(message: str) -> str:
    """The reason code of a read-stage message written by an earlier version."""
    for prefix, code in _LEGACY_READ_PREFIXES:
        if message.startswith(prefix):
            return code
    return INVALID_RECORD
