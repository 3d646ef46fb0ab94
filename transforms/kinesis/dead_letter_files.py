"""Reading the Kinesis sink's dead letters back, to send them again (docs/replay.md).

The sink writes a record it gives up as a JSON object (:func:`transforms.dead_letters.
sink_dead_letter`): ``stage`` ``kinesis_sink``, ``reason``, ``error``, ``raw`` (the
event bytes as UTF-8 text) and ``partition_key``. The job writes these objects, with
the dead letters of its other stages, as JSON Lines under ``--dead_letter_path``.
Letters of earlier versions are read too (:func:`transforms.dead_letters.upgrade`).

This module holds the pure parts of a replay (which files, what a letter holds, which
letters may be sent again) and :class:`ReadSinkDeadLetters`, the PTransform that turns
the files into ``(partition_key, data)`` records in the order the sink expects.

Order. A dead letter carries no snapshot time, and the event bytes carry none either
(``eventId`` is a one-way hash of it). The only order the files keep is the order the
sink gave the records up in: a profile's dead letters come from one sink bundle, which
the job writes to one file in the order it gave them up, and a profile's records are
sent (hence given up after retries) one at a time, in snapshot order. So the replay
sends the letters of one partition key in file order: files by name (batch shards;
``-runNNN`` of a split backfill; the UTC time in streaming file names), then line by
line. A ``GroupByKey`` per partition key puts them back in that order whatever the
runner's bundles, so the sink gets each key's records in one bundle, in order.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.dead_letters import upgrade
from transforms.errors import SegmentEventsError
from transforms.kinesis.batching import record_size
from transforms.kinesis.settings import DEAD_LETTER_STAGE

# The file names the job gives dead letters under a prefix (docs/dead-letters.md#files):
# batch shards, the shards of one run of a split backfill, and streaming bundle files.
_FILE_SUFFIX = re.compile(
    r"-(?:run\d{3}-)?\d{5}-of-\d{5}\.jsonl|-\d{8}T\d{12}Z-[0-9a-f]{12}\.jsonl"
)
# Reasons are short codes, also in upgraded letters of earlier versions; a reason that is
# still a message (a line of unknown origin) may quote the input (PII): only the part
# before its first ": " is shown.
_MAX_REASON_CHARS = 60


class DeadLetterFileError(SegmentEventsError, ValueError):
    """A dead-letter file cannot be used; the message names the file and line, never
    its content."""


@dataclasses.dataclass(frozen=True)
class LetterScan:
    """What the dead-letter files hold, counted on the submitting machine.

    Attributes:
        files: The files read, in replay order.
        letters: Dead letters read (every stage).
        by_reason: Count per ``(stage, shown reason)``.
        not_replayable: Count per ``(stage, shown reason)`` of the letters that are not
            the sink's (input dead letters): a replay refuses them.
        over_limit: Sink letters larger (data plus partition key) than the record limit
            of the replay: the sink will give them up again.
    """

    files: tuple[str, ...]
    letters: int
    by_reason: collections.Counter
    not_replayable: collections.Counter
    over_limit: int


def dead_letter_pattern(prefix: str) -> str:
    """The glob that matches the job's dead-letter files under ``prefix``."""
    return f"{prefix}-*.jsonl"


def is_dead_letter_file(prefix: str, path: str) -> bool:
    """Whether ``path`` is named like a dead-letter file the job writes under ``prefix``.

    A replay's own output under ``PREFIX-replay-<time>`` is not one of ``PREFIX``'s.
    """
    if not path.startswith(prefix):
        return False
    return _FILE_SUFFIX.fullmatch(path[len(prefix) :]) is not None


def match_dead_letter_files(prefix: str) -> list[str]:
    """The job's dead-letter files under ``prefix`` (any Beam filesystem), sorted by name."""
    result = FileSystems.match([dead_letter_pattern(prefix)])[0]
    return sorted(m.path for m in result.metadata_list if is_dead_letter_file(prefix, m.path))


def any_file_under(prefix: str) -> list[str]:
    """Every file whose path starts with ``prefix`` (up to 5), e.g. an earlier replay's."""
    result = FileSystems.match([f"{prefix}*"])[0]
    return sorted(m.path for m in result.metadata_list)[:5]


def read_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """The non-empty lines of a file, numbered from 1, split on ``\\n`` only.

    (Raw input may hold U+2028 or U+2029, which ``str.splitlines`` would also split on.)
    """
    with FileSystems.open(path) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield number, line


def parse_letter(line: bytes, path: str, number: int) -> dict[str, Any]:
    """One dead letter as a dict, checked for the fields a replay needs.

    A read letter written by an earlier version (its message in ``reason``, no
    ``error``) comes back in today's shape, its reason a code.

    Raises:
        DeadLetterFileError: The line is not a dead letter of this job.
    """
    where = f"{path} line {number}"
    try:
        letter = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise DeadLetterFileError(f"{where} is not JSON: not a dead-letter file") from None
    if not isinstance(letter, dict) or not isinstance(letter.get("stage"), str):
        raise DeadLetterFileError(f"{where} is not a dead letter (no stage)")
    if letter["stage"] == DEAD_LETTER_STAGE:
        if not isinstance(letter.get("raw"), str) or not isinstance(
            letter.get("partition_key"), str
        ):
            raise DeadLetterFileError(
                f"{where}: a kinesis_sink dead letter without its raw event or partition key"
            )
    return upgrade(letter)


def shown_reason(letter: dict[str, Any]) -> str:
    """The reason of a letter as a summary may show it (no quoted input)."""
    reason = str(letter.get("reason") or "no reason")
    head = reason.split(": ", 1)[0]
    return head if len(head) <= _MAX_REASON_CHARS else head[: _MAX_REASON_CHARS - 1] + "…"


def record_of(letter: dict[str, Any]) -> tuple[str, bytes]:
    """The ``(partition_key, data)`` record of a sink dead letter, exactly as first sent.

    ``raw`` is the event bytes decoded as UTF-8 (invalid bytes replaced). The job's
    events are JSON text, always valid UTF-8, so encoding ``raw`` again gives back the
    very bytes, hence the same ``eventId``.
    """
    return letter["partition_key"], letter["raw"].encode("utf-8")


def scan_dead_letters(paths: Iterable[str], max_record_bytes: int) -> LetterScan:
    """Reads every letter once, on the submitting machine, before anything is sent.

    Raises:
        DeadLetterFileError: A line is not a dead letter.
    """
    files = tuple(paths)
    letters = 0
    by_reason: collections.Counter = collections.Counter()
    not_replayable: collections.Counter = collections.Counter()
    over_limit = 0
    for path in files:
        for number, line in read_lines(path):
            letter = parse_letter(line, path, number)
            letters += 1
            key = (letter["stage"], shown_reason(letter))
            by_reason[key] += 1
            if letter["stage"] != DEAD_LETTER_STAGE:
                not_replayable[key] += 1
            elif record_size(*record_of(letter)) > max_record_bytes:
                over_limit += 1
    return LetterScan(files, letters, by_reason, not_replayable, over_limit)


def describe_counts(counts: collections.Counter, most: int = 5) -> str:
    """``read "no_profile_key": 2, transitions "late_snapshot": 1`` (most frequent first)."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shown = [f'{stage} "{reason}": {n}' for (stage, reason), n in ordered[:most]]
    if len(ordered) > most:
        shown.append(f"{len(ordered) - most} more reasons: {sum(n for _, n in ordered[most:])}")
    return ", ".join(shown)


def in_replay_order(
    element: tuple[str, Iterable[tuple[int, int, bytes]]],
) -> Iterator[tuple[str, bytes]]:
    """A key's records sorted by (file index, line number): the order they were given up."""
    partition_key, records = element
    for _, _, data in sorted(records, key=lambda r: (r[0], r[1])):
        yield partition_key, data


class _ReadLettersFn(beam.DoFn):
    """Reads one whole dead-letter file; yields ``(key, (file index, line, data))``."""

    def process(self, element: tuple[int, str]) -> Iterator[tuple[str, tuple[int, int, bytes]]]:
        index, path = element
        for number, line in read_lines(path):
            letter = parse_letter(line, path, number)
            if letter["stage"] != DEAD_LETTER_STAGE:
                # Checked before the run; a file that changed since must not half-replay.
                raise DeadLetterFileError(
                    f"{path} line {number} is a {letter['stage']} dead letter (the file "
                    "changed after it was checked)"
                )
            partition_key, data = record_of(letter)
            yield partition_key, (index, number, data)


class ReadSinkDeadLetters(beam.PTransform):
    """Reads the sink's dead letters from files into ``(partition_key, data)`` records.

    Each file is read whole by one worker (no split inside a file). The records of one
    partition key come out together, in file order then line order (see the module
    docstring), ready for :class:`transforms.kinesis.sink.WriteToKinesisStream`.
    """

    def __init__(self, paths: Iterable[str], label: str | None = None):
        super().__init__(label)
        self._paths = list(paths)

    def expand(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pipeline
            | "Files" >> beam.Create(list(enumerate(self._paths)))
            | "ReadLetters" >> beam.ParDo(_ReadLettersFn())
            | "GroupByPartitionKey" >> beam.GroupByKey()
            | "InReplayOrder" >> beam.FlatMap(in_replay_order)
        )
