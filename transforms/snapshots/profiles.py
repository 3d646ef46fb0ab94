"""Profile records: validation of a raw snapshot record into the job's internal form.

The internal form of one profile in one snapshot (a plain dict, so that Beam's fast
primitive coder encodes it deterministically and cheaply on every runner)::

    {
        "snapshot_ms": 1706659200000,        # T of the snapshot (docs/contract.md §2.3), epoch ms UTC
        "baseline": False,                   # from a --baseline input: seeds state only
        "deleted": False,                    # "_deleted": true tombstone
        "segments": {"ups": {"seg-1": ["realized", 1583270679000]}},
        "identities": {"email": ["John.Doe@Example.com "], "ecid": ["1457..."]},
        "attributes": {"person.name.firstName": "John"},
        "file": "snapshots/snapshot=2024-01-31/part-0.avro",
    }

A record that failed validation but names its profile becomes a *keep* record
(:func:`keep_record`, ``"keep": True``): the profile is present in that snapshot and
keeps its previous state; nothing is emitted for it there.

``segments`` holds only the mapped segments (docs/contract.md §3), each as ``[status, last
qualification time in epoch ms or None]``; ``identities`` keeps every namespace's ids in
input order (the include/hash rules apply when events are formatted); ``attributes``
holds only the configured dotted paths that the record has.
"""

from __future__ import annotations

from typing import Any

from transforms.config import ActivationConfig
from transforms.dead_letters import INVALID_RECORD, NO_PROFILE_KEY
from transforms.errors import SegmentEventsError
from transforms.events.statuses import STATUSES
from transforms.events.timestamps import TimestampError, parse_timestamp

_RESERVED = ("identityMap", "segmentMembership", "_deleted")


class RecordError(SegmentEventsError, ValueError):
    """A record cannot be used; it becomes a dead letter of the read stage.

    Args:
        message: What is wrong, for a person (the dead letter's ``error``; it may quote
            the input).
        code: The dead letter's ``reason``, a read-stage code of
            :mod:`transforms.dead_letters`: ``invalid_record`` unless the record lacks
            its profile key, its snapshot time, or is not even UTF-8 or JSON.
    """

    def __init__(self, message: str, code: str = INVALID_RECORD) -> None:
        super().__init__(message)
        self.code = code


def resolve_profile_key(record: dict, rule: str) -> str:
    """Resolves the profile key of a raw record (docs/contract.md §2.4).

    Args:
        record: The raw record (already a dict).
        rule: ``"primary"``, a namespace name, or ``"field:<dotted.path>"``.

    Returns:
        The key: ``namespace:id`` for ``primary``, the bare id for a namespace rule,
        the field's value as a string for a field rule.

    Raises:
        RecordError: No key can be resolved.
    """
    if rule.startswith("field:"):
        value = get_path(record, rule[len("field:") :])
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise RecordError(
                f"no profile key: field {rule[6:]!r} is missing or not a string", NO_PROFILE_KEY
            )
        return str(value)
    identity_map = record.get("identityMap") or {}
    if rule == "primary":
        for namespace in sorted(identity_map):
            for entry in identity_map[namespace] or ():
                if isinstance(entry, dict) and entry.get("primary") is True:
                    ident = entry.get("id")
                    if isinstance(ident, str) and ident:
                        return f"{namespace}:{ident}"
        raise RecordError("no profile key: no identity is flagged primary", NO_PROFILE_KEY)
    for entry in identity_map.get(rule) or ():
        ident = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(ident, str) and ident:
            return ident
    raise RecordError(f"no profile key: no identity in namespace {rule!r}", NO_PROFILE_KEY)


def to_profile_record(
    record: Any,
    config: ActivationConfig,
    snapshot_ms: int,
    file: str,
    baseline: bool = False,
) -> tuple[str, dict]:
    """Validates a raw record and converts it to ``(profile key, internal record)``.

    Args:
        record: The decoded record (from JSON, Avro or Parquet).
        config: The activation config (mapped segments, attributes, key rule).
        snapshot_ms: The snapshot time of the record's file or field.
        file: The source file name, kept for dead letters.
        baseline: Whether the record comes from a ``--baseline`` input.

    Returns:
        The profile key and the internal record described in the module docstring.

    Raises:
        RecordError: The record is malformed (see its message and code).
    """
    if not isinstance(record, dict):
        raise RecordError(f"record is not an object but {type(record).__name__}")
    identities = _identities(record.get("identityMap"))
    key = resolve_profile_key(record, config.profile_key)
    deleted = record.get("_deleted", False)
    if deleted is None:
        deleted = False
    if not isinstance(deleted, bool):
        raise RecordError("_deleted is not a boolean")
    return key, {
        "snapshot_ms": snapshot_ms,
        "baseline": baseline,
        "deleted": deleted,
        "segments": _segments(record.get("segmentMembership"), config),
        "identities": identities,
        "attributes": _attributes(record, config.attributes),
        "file": file,
    }


def known_profile_key(record: Any, config: ActivationConfig) -> str | None:
    """The profile key of a record that failed validation, when it can still be told.

    A record whose key is known but whose content is bad (a status, a timestamp, an
    identity) proves that the profile is in its snapshot: it must not count as absent.

    Returns:
        The key, or ``None`` when the record does not say whose it is.
    """
    if not isinstance(record, dict):
        return None
    try:
        return resolve_profile_key(record, config.profile_key)
    except (RecordError, AttributeError, TypeError):
        return None


def keep_record(snapshot_ms: int, file: str, baseline: bool = False) -> dict:
    """The internal record of a profile whose record in a snapshot is bad but whose key
    is known: the profile is present and keeps its previous state; nothing is emitted.
    """
    return {
        "snapshot_ms": snapshot_ms,
        "baseline": baseline,
        "deleted": False,
        "segments": {},
        "identities": {},
        "attributes": {},
        "file": file,
        "keep": True,
    }


def get_path(record: dict, dotted: str) -> Any:
    """The value at a dotted path of nested dicts, or ``None``."""
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _identities(identity_map: Any) -> dict[str, list[str]]:
    if identity_map is None:
        return {}
    if not isinstance(identity_map, dict):
        raise RecordError("identityMap is not a map of namespace -> list of identities")
    identities = {}
    for namespace, entries in identity_map.items():
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise RecordError(f"identityMap.{namespace} is not a list")
        ids = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise RecordError(f"identityMap.{namespace} has an entry without a string id")
            ids.append(entry["id"])
        if ids:
            identities[namespace] = ids
    return identities


def _segments(membership: Any, config: ActivationConfig) -> dict[str, dict[str, list]]:
    if membership is None:
        return {}
    if not isinstance(membership, dict):
        raise RecordError("segmentMembership is not a map of namespace -> segments")
    is_mapped = config.is_mapped
    segments: dict[str, dict[str, list]] = {}
    for namespace, by_id in membership.items():
        if by_id is None:
            continue
        if not isinstance(by_id, dict):
            raise RecordError(f"segmentMembership.{namespace} is not a map of segment id -> entry")
        for seg_id, entry in by_id.items():
            if not isinstance(entry, dict):
                raise RecordError(f"segmentMembership.{namespace}.{seg_id} is not an object")
            status = entry.get("status")
            if status not in STATUSES:
                raise RecordError(
                    f"segmentMembership.{namespace}.{seg_id}: unknown status {status!r}"
                )
            raw_time = entry.get("lastQualificationTime")
            try:
                qualified = None if raw_time is None else parse_timestamp(raw_time)
            except TimestampError as err:
                raise RecordError(
                    f"segmentMembership.{namespace}.{seg_id}.lastQualificationTime: {err}"
                ) from None
            # Validate every segment, but keep only the mapped ones: unmapped segments
            # never produce events and would only cost state.
            if is_mapped(namespace, seg_id):
                mapped = segments.get(namespace)
                if mapped is None:
                    mapped = segments[namespace] = {}
                mapped[seg_id] = [status, qualified]
    return segments


def _attributes(record: dict, paths: tuple[str, ...]) -> dict[str, Any]:
    attributes = {}
    for path in paths:
        value = get_path(record, path)
        if value is not None:
            attributes[path] = value
    return attributes
