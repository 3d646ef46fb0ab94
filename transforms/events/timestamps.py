"""Parsing and formatting of the timestamps found in snapshots and events.

All times inside the job are integer epoch milliseconds (UTC): they compare, hash and
encode cheaply and identically on every runner. Text forms only exist at the edges.
"""

from __future__ import annotations

import datetime as dt
import functools
import re

from transforms.errors import SegmentEventsError

_UTC = dt.UTC
# ISO-8601 date-time with an optional fraction and a Z, +HHMM or +HH:MM offset.
_DATETIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)
_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
# Epoch milliseconds must land between 1970 and 2200 to be taken as such.
_MAX_EPOCH_MS = 7_258_118_400_000


class TimestampError(SegmentEventsError, ValueError):
    """A value is not a timestamp form the spec accepts."""


def parse_timestamp(value: object) -> int:
    """Parses an accepted timestamp form into epoch milliseconds (UTC).

    Accepted: ISO-8601 date-times with ``Z``, ``+0000``, ``+00:00`` or any other
    offset, optional fractions of a second, a bare date (midnight UTC), a naive
    date-time (taken as UTC, docs/contract.md §2.3), and epoch milliseconds as an integer or a
    string of digits.

    Args:
        value: The raw value.

    Returns:
        Epoch milliseconds; fractions below a millisecond are truncated.

    Raises:
        TimestampError: The value is not an accepted form.
    """
    if type(value) is str:  # the common case first: one check, then the cache
        return _parse_text(value)
    if isinstance(value, bool):
        raise TimestampError(f"not a timestamp: {value!r}")
    if isinstance(value, int):
        return _check_epoch(value, value)
    if isinstance(value, float) and value.is_integer():
        return _check_epoch(int(value), value)
    if not isinstance(value, str):
        raise TimestampError(f"not a timestamp: {value!r}")
    return _parse_text(value)


# Snapshots repeat the same qualification times across a profile's segments and across
# days: caching the text form makes parsing ~5x cheaper on real exports.
@functools.lru_cache(maxsize=1 << 16)
def _parse_text(value: str) -> int:
    text = value.strip()
    # isdigit() is also true for "²" and other digits int() refuses: ASCII only.
    if text.isascii() and text.isdigit():
        return _check_epoch(int(text), value)
    match = _DATETIME_RE.match(text)
    if match:
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        try:
            stamp = dt.datetime(
                int(year),
                int(month),
                int(day),
                int(hour),
                int(minute),
                int(second or 0),
                tzinfo=_UTC,
            )
        except ValueError:
            raise TimestampError(f"not a valid date-time: {value!r}") from None
        millis = int((fraction or "0").ljust(3, "0")[:3])
        epoch_ms = _to_ms(stamp) + millis - _offset_ms(offset, value)
        return epoch_ms
    match = _DATE_RE.match(text)
    if match:
        try:
            return _to_ms(dt.datetime(*map(int, match.groups()), tzinfo=_UTC))
        except ValueError:
            raise TimestampError(f"not a valid date: {value!r}") from None
    raise TimestampError(f"not a timestamp: {value!r}")


@functools.lru_cache(maxsize=1 << 16)
def format_timestamp(epoch_ms: int) -> str:
    """Formats epoch milliseconds as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC, seconds truncated)."""
    stamp = dt.datetime.fromtimestamp(epoch_ms // 1000, tz=_UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def _offset_ms(offset: str | None, original: object) -> int:
    if offset is None or offset in ("Z", "z"):
        return 0
    sign = -1 if offset[0] == "-" else 1
    digits = offset[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        raise TimestampError(f"not a valid UTC offset: {original!r}")
    return sign * (hours * 3600 + minutes * 60) * 1000


def _to_ms(stamp: dt.datetime) -> int:
    return int(stamp.timestamp()) * 1000


def _check_epoch(epoch_ms: int, original: object) -> int:
    if not 0 <= epoch_ms <= _MAX_EPOCH_MS:
        raise TimestampError(f"epoch milliseconds out of range: {original!r}")
    return epoch_ms
