"""Resolution of a snapshot's time T from a file path (docs/contract.md §2.3).

In order of precedence a record's T comes from the ``--snapshot_time_field`` of the
record (handled by the reader), then a Hive-style ``snapshot=<ISO date or date-time>``
path segment, then a date in the file name (``2024-01-31`` or ``20240131``, optionally
followed by ``T060000Z`` or ``T06:00:00Z``). All times are UTC.
"""

from __future__ import annotations

import datetime as dt
import re

from transforms.events.timestamps import TimestampError, parse_timestamp

_SNAPSHOT_SEGMENT_RE = re.compile(r"(?:^|/)snapshot=([^/]+)(?=/)")
# A date not glued to other digits, optionally with a time of day; both separators
# forms, so 2024-01-31T06:00:00Z and 20240131T060000Z resolve alike.
_FILE_DATE_RE = re.compile(
    r"(?<!\d)(\d{4})(-?)(\d{2})\2(\d{2})"
    r"(?:T(\d{2})(:?)(\d{2})\6(\d{2})Z)?(?!\d)"
)


class SnapshotTimeError(ValueError):
    """The snapshot time of a file cannot be resolved; the message names the file."""


def snapshot_time_from_path(path: str) -> int | None:
    """The snapshot time a path carries, in epoch ms, or ``None`` if it carries none.

    Args:
        path: A file path or URL (``gs://...``, ``s3://...`` work alike).

    Returns:
        Epoch milliseconds of the ``snapshot=`` segment, else of the file-name date.

    Raises:
        SnapshotTimeError: A ``snapshot=`` segment is present but is not a date or
            date-time; a wrong value is never silently replaced by another source.
    """
    normalised = path.replace("\\", "/")
    match = _SNAPSHOT_SEGMENT_RE.search(normalised)
    if match:
        try:
            return parse_timestamp(match.group(1))
        except TimestampError:
            raise SnapshotTimeError(
                f"{path}: path segment snapshot={match.group(1)} is not an ISO-8601 date "
                "or date-time"
            ) from None
    name = normalised.rsplit("/", 1)[-1]
    for match in _FILE_DATE_RE.finditer(name):
        year, _, month, day, hour, _, minute, second = match.groups()
        try:
            stamp = dt.datetime(
                int(year),
                int(month),
                int(day),
                int(hour or 0),
                int(minute or 0),
                int(second or 0),
                tzinfo=dt.UTC,
            )
        except ValueError:
            continue
        return int(stamp.timestamp()) * 1000
    return None


def require_snapshot_time(path: str) -> int:
    """Like :func:`snapshot_time_from_path` but an unresolvable path is an error."""
    resolved = snapshot_time_from_path(path)
    if resolved is None:
        raise SnapshotTimeError(
            f"{path}: cannot resolve the snapshot time: no --snapshot_time_field value, "
            "no snapshot=<date> path segment and no date (2024-01-31 or 20240131) in the "
            "file name"
        )
    return resolved
