"""Resolution of a snapshot's time T from a file path (docs/contract.md §2.3).

In order of precedence a record's T comes from the ``--snapshot_time_field`` of the
record (handled by the reader), then a Hive-style folder segment of the path, then a
date in the file name (``2024-01-31`` or ``20240131``, optionally followed by
``T060000Z`` or ``T06:00:00Z``). All times are UTC.

Folder segments, in order of precedence (only the first kind present is read; the
others are ignored, whatever their value):

1. ``snapshot=<ISO date or date-time>`` (any form of ``parse_timestamp``; eight digits
   are a ``YYYYMMDD`` date, never epoch milliseconds);
2. ``dt=<date>``, then 3. ``date=<date>``: a calendar date, ``2024-01-31`` or
   ``20240131``, midnight UTC. Digits alone are never taken as epoch milliseconds here.

If a kind occurs several times in one path, its outermost segment is read. A segment
that decides and is not a valid value is an error naming the file: a wrong value is
never silently replaced by another source.
"""

from __future__ import annotations

import datetime as dt
import re

from transforms.errors import SegmentEventsError
from transforms.events.timestamps import TimestampError, parse_timestamp

# Folder segments naming the snapshot, in order of precedence (a folder, not the file).
_SEGMENT_KEYS = ("snapshot", "dt", "date")
_SEGMENT_RES = tuple((key, re.compile(rf"(?:^|/){key}=([^/]+)(?=/)")) for key in _SEGMENT_KEYS)
# dt= and date= values: a calendar date, with or without hyphens.
_FOLDER_DATE_RE = re.compile(r"^(\d{4})(-?)(\d{2})\2(\d{2})$")
# A date not glued to other digits, optionally with a time of day; both separators
# forms, so 2024-01-31T06:00:00Z and 20240131T060000Z resolve alike.
_FILE_DATE_RE = re.compile(
    r"(?<!\d)(\d{4})(-?)(\d{2})\2(\d{2})"
    r"(?:T(\d{2})(:?)(\d{2})\6(\d{2})Z)?(?!\d)"
)


class SnapshotTimeError(SegmentEventsError, ValueError):
    """The snapshot time of a file cannot be resolved; the message names the file."""


def snapshot_time_from_path(path: str) -> int | None:
    """The snapshot time a path carries, in epoch ms, or ``None`` if it carries none.

    Args:
        path: A file path or URL (``gs://...``, ``s3://...`` work alike).

    Returns:
        Epoch milliseconds of the ``snapshot=`` segment, else of the ``dt=`` segment,
        else of the ``date=`` segment, else of the file-name date.

    Raises:
        SnapshotTimeError: The deciding folder segment is not a valid value; a wrong
            value is never silently replaced by another source.
    """
    normalised = path.replace("\\", "/")
    for key, segment_re in _SEGMENT_RES:
        match = segment_re.search(normalised)
        if match:
            return _segment_time(path, key, match.group(1))
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


def _segment_time(path: str, key: str, value: str) -> int:
    # snapshot=20240131 is a date: as epoch milliseconds it would be 1970-01-01T05:37,
    # a wrong time taken silently.
    if key == "snapshot" and not (value.isascii() and value.isdigit() and len(value) == 8):
        try:
            return parse_timestamp(value)
        except TimestampError:
            raise SnapshotTimeError(
                f"{path}: path segment snapshot={value} is not an ISO-8601 date or date-time"
            ) from None
    # dt= and date= name a day: a date-time, or digits that are not YYYYMMDD, is refused.
    match = _FOLDER_DATE_RE.match(value)
    if match:
        year, _, month, day = match.groups()
        try:
            stamp = dt.datetime(int(year), int(month), int(day), tzinfo=dt.UTC)
        except ValueError:
            pass  # 2024-02-30: not a date
        else:
            return int(stamp.timestamp()) * 1000
    raise SnapshotTimeError(
        f"{path}: path segment {key}={value} is not a date (YYYY-MM-DD or YYYYMMDD)"
    )


def require_snapshot_time(path: str) -> int:
    """Like :func:`snapshot_time_from_path` but an unresolvable path is an error."""
    resolved = snapshot_time_from_path(path)
    if resolved is None:
        raise SnapshotTimeError(
            f"{path}: cannot resolve the snapshot time: no --snapshot_time_field value, "
            "no snapshot=<date>, dt=<date> or date=<date> path segment and no date "
            "(2024-01-31 or 20240131) in the file name"
        )
    return resolved
