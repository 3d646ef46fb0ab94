"""Compact ``bytes`` encodings of profile records and states.

Records cross the batch GroupByKey, and live in streaming state, as one ``bytes`` value
each: a tuple of the fields without their names, in Beam's portable primitive encoding
(``FastPrimitivesCoder``). The local runner holds a shuffle in memory as decoded values,
and a dict tree per record costs several times its encoding; state cells with a
``BytesCoder`` are never walked by the SDK's state cache.

The grouped values of a batch run carry a tag byte: a record (``RECORD_TAG``), or the
state of a live profile carried from a previous run of a split backfill
(``CARRIED_TAG``; only live ones are carried: the guard's pass counts them as tracked
without decoding them).
"""

from __future__ import annotations

import struct

from apache_beam import coders

from transforms.segments.carried_state import CARRIED_STATE_FIELD, is_carried_state
from transforms.segments.state import (
    ProfileState,
)

STATE_VERSION = 1
RECORD_TAG = b"r"
CARRIED_TAG = b"L"

# Beam's own portable encoding of plain values; used inside bytes state values (the
# state cell's coder is BytesCoder, so the state cache never walks the object).
VALUE_CODER = coders.FastPrimitivesCoder()


def encode_record(record: dict) -> bytes:
    """Encodes a profile record as one compact ``bytes`` value for a shuffle or state.

    A tuple of the fields, without their names, in Beam's portable primitive encoding:
    the local runner then holds each shuffled record as one ``bytes`` object instead of
    a decoded dict tree (about a third of the memory, and no decode/re-encode by the
    runner).
    """
    return VALUE_CODER.encode(
        (
            record["snapshot_ms"],
            bool(record.get("baseline", False)),
            bool(record.get("deleted", False)),
            record["segments"],
            record["identities"],
            record["attributes"],
            record.get("file", ""),
            bool(record.get("keep", False)),
        )
    )


def decode_record(data: bytes) -> dict:
    """Decodes :func:`encode_record` output back into the record dict."""
    snapshot_ms, baseline, deleted, segments, identities, attributes, file, keep = (
        VALUE_CODER.decode(data)
    )
    record = {
        "snapshot_ms": snapshot_ms,
        "baseline": baseline,
        "deleted": deleted,
        "segments": segments,
        "identities": identities,
        "attributes": attributes,
        "file": file,
    }
    if keep:
        record["keep"] = True
    return record


# --------------------------------------------------------------------------- state


def encode_state(state: ProfileState) -> bytes:
    """Encodes a profile state as one compact ``bytes`` value (versioned list)."""
    return VALUE_CODER.encode(
        [
            STATE_VERSION,
            state.snapshot_ms,
            state.gone,
            state.memberships,
            state.identities,
            state.attributes,
            state.digests,
        ]
    )


def decode_state(data: bytes) -> ProfileState:
    """Decodes :func:`encode_state` output."""
    version, snapshot_ms, gone, memberships, identities, attributes, digests = VALUE_CODER.decode(
        data
    )
    if version != STATE_VERSION:
        raise ValueError(f"unsupported transition state version {version}")
    return ProfileState(snapshot_ms, gone, memberships, identities, attributes, digests)


def encode_keyed(element: tuple[str, dict]) -> tuple[str, bytes]:
    """``(key, record)`` -> ``(key, tagged bytes)``, the value grouped by a batch run.

    A record's value starts with a fixed header (tag, snapshot time, tombstone flag),
    so that the mass-exit guard reads a profile's presence from the grouped values
    without decoding them (:func:`presence_of`): one shuffle serves both passes.
    """
    key, record = element
    if is_carried_state(record):
        return key, carried_bytes(record)
    header = _HEADER.pack(record["snapshot_ms"], bool(record.get("deleted", False)))
    return key, RECORD_TAG + header + encode_record(record)


_HEADER = struct.Struct(">q?")
_BODY = 1 + _HEADER.size


def presence_of(data: bytes) -> tuple[int | None, bool]:
    """A grouped value's presence: ``(snapshot ms, deleted)``, or ``(None, True)`` for
    the carried state of a live profile."""
    if data[:1] == CARRIED_TAG:
        return None, True
    return _HEADER.unpack_from(data, 1)


def decode_tagged(data: bytes) -> tuple[ProfileState | None, dict | None]:
    """A grouped value: ``(carried state, None)`` or ``(None, record)``."""
    if data[:1] == CARRIED_TAG:
        return decode_state(data[1:]), None
    return None, decode_record(data[_BODY:])


def carried_bytes(record: dict) -> bytes:
    """The tagged state bytes of a carried-state record (checks the tag)."""
    data = record[CARRIED_STATE_FIELD]
    if data[:1] != CARRIED_TAG:
        raise ValueError("a carried state file holds a value of an unknown kind")
    return data


def carry(key: str, state: ProfileState) -> tuple[str, bytes]:
    """``(key, tagged bytes)`` of a state carried to the next run."""
    return key, CARRIED_TAG + encode_state(state)
