"""The output event: its exact JSON bytes, its ``eventId`` and its partition key (docs/contract.md §5).

The bytes made here are the Kinesis record data *and* the ``--output_path`` lines, so
they are fully determined by the transition and the config:

* compact UTF-8 JSON (``separators=(",", ":")``, ``ensure_ascii=False``), keys sorted
  at every level, no trailing newline;
* mapped attributes at their dotted paths as nested objects, only configured paths,
  absent when the profile has no value;
* ``segmentMembership.<namespace>.<segment id>`` with ``status`` and
  ``lastQualificationTime`` (``YYYY-MM-DDTHH:MM:SSZ``), plus ``name`` and the four
  mapping timestamps (epoch ms) when configured and known;
* ``identityMap`` after the include and hash rules (:mod:`transforms.events.identities`);
* ``eventId``: see :func:`event_id_for`.

``segmentMembership`` and ``identityMap`` are always present (possibly ``{}``), so
consumers can rely on the shape.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import json
import logging
import math
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

import apache_beam as beam

from transforms.config import ActivationConfig, SegmentMapping
from transforms.errors import SegmentEventsError
from transforms.events.identities import output_identities
from transforms.events.statuses import STATUSES
from transforms.events.timestamps import TimestampError, format_timestamp, parse_timestamp
from transforms.metrics import StepCounts
from transforms.report.facts import CAUSE, FACTS, bundle_facts, count_event, count_excluded

_LOGGER = logging.getLogger(__name__)

# Segment statuses an event carries (realized, existing, exited), in a fixed order.
EVENT_STATUSES = tuple(sorted(STATUSES))


class EventFormatError(SegmentEventsError, ValueError):
    """A transition cannot be formatted. Messages never hold profile keys or values."""


def partition_key_for(profile_key: str) -> str:
    """The Kinesis partition key of a profile: SHA-256 hex of the UTF-8 profile key.

    It keeps PII out of stream metadata, spreads profiles evenly over shards and sends
    every event of a profile to the same shard.

    Args:
        profile_key: The profile key (docs/contract.md §2.4), e.g. ``"email:john@example.com"``.

    Returns:
        64 lower-case hex characters.
    """
    return hashlib.sha256(profile_key.encode("utf-8")).hexdigest()


def event_id_for(profile_key: str, snapshot_ms: int, payload: bytes) -> str:
    """The ``eventId``: SHA-256 hex of the canonical encoding of the event's identity.

    The canonical encoding is the compact JSON array ``[profile_key, snapshot_ms,
    payload]`` in UTF-8, where ``payload`` is the event's exact bytes *without*
    ``eventId``. It only depends on the transition and the config, never on clocks,
    randomness or dict order, so a rerun on any runner gives the same id, and it differs
    between profiles and between snapshots of a profile.

    Args:
        profile_key: The profile key.
        snapshot_ms: The snapshot time, epoch ms.
        payload: The event bytes without ``eventId``.

    Returns:
        64 lower-case hex characters.
    """
    key = json.dumps(profile_key, ensure_ascii=False).encode("utf-8")
    canonical = b"[" + key + b"," + str(int(snapshot_ms)).encode("ascii") + b"," + payload + b"]"
    return hashlib.sha256(canonical).hexdigest()


def format_event(profile_key: str, transition: dict, config: ActivationConfig) -> bytes:
    """The exact bytes of the event of one transition (see the module docstring).

    Args:
        profile_key: The profile key; it only enters the ``eventId``.
        transition: ``{"snapshot_ms", "segments", "identities", "attributes"}`` as
            produced by the transition step.
        config: The activation config.

    Returns:
        Compact UTF-8 JSON bytes.

    Raises:
        EventFormatError: The transition is malformed.
    """
    return EventFormatter(config).format(profile_key, transition)


class Formatted(NamedTuple):
    """One formatted event.

    Attributes:
        data: The event bytes.
        statuses: The status of each segment entry in it (for metrics).
        memberships: Its ``segmentMembership`` entries' statuses,
            ``{namespace: {segment id: status}}``.
        identity_map: Its ``identityMap`` object.
    """

    data: bytes
    statuses: list[str]
    memberships: dict
    identity_map: dict


# One encoder for every event: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)
# Stands for the lastQualificationTime in a segment entry's template; the key before it
# makes the split point unique (a quote inside a name or id is escaped).
_TIME_MARK = "LQT"
_TIME_ANCHOR = '"lastQualificationTime":"' + _TIME_MARK + '"'


class EventFormatter:
    """Formats events for one config; build once, format many (lookups are prepared)."""

    def __init__(self, config: ActivationConfig) -> None:
        self._config = config
        self._mappings: dict[tuple[str, str], SegmentMapping] = {
            (m.namespace, m.id): m for m in config.segments or ()
        }
        # parse_config rejects these; a hand-built config must not merge values silently.
        paths = {tuple(path.split(".")) for path in config.attributes}
        for parts in paths:
            if any(parts[:length] in paths for length in range(1, len(parts))):
                raise EventFormatError(f"attribute paths conflict at {'.'.join(parts)!r}")
            if parts[0] in ("segmentMembership", "identityMap", "eventId"):
                raise EventFormatError(f"attribute path {'.'.join(parts)!r} is reserved")
        # (namespace, segment id, status) -> the JSON of '"<id>":{...}' around its time.
        self._templates: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._names: dict[str, str] = {}

    def format(self, profile_key: str, transition: dict) -> bytes:
        """The event bytes of a transition; see :func:`format_event`."""
        return self.format_with_statuses(profile_key, transition)[0]

    def format_with_statuses(self, profile_key: str, transition: dict) -> tuple[bytes, list[str]]:
        """The event bytes and the status of each segment entry in it (for metrics)."""
        formatted = self._format(profile_key, transition, keep_without_identity=True)
        return formatted.data, formatted.statuses  # type: ignore[union-attr]

    def format_for_sending(self, profile_key: str, transition: dict) -> Formatted | None:
        """The formatted event, or ``None`` for an event nobody can act on.

        An event without any identity in the output namespaces (``"identityMap": {}``)
        cannot be matched to a person downstream: it is excluded unless the config says
        ``send_without_identity``.
        """
        return self._format(profile_key, transition, self._config.send_without_identity)

    def _format(
        self, profile_key: str, transition: dict, keep_without_identity: bool
    ) -> Formatted | None:
        snapshot_ms = transition.get("snapshot_ms")
        if isinstance(snapshot_ms, bool) or not isinstance(snapshot_ms, int) or snapshot_ms < 0:
            raise EventFormatError("transition snapshot_ms is not epoch milliseconds")
        segments, identities, attributes = (
            _mapping(transition, part) for part in ("segments", "identities", "attributes")
        )
        try:
            identity_map = output_identities(identities, self._config)
        except TypeError as err:
            raise EventFormatError(str(err)) from None
        if not identity_map and not keep_without_identity:
            return None
        memberships, statuses, membership_json = self._memberships(segments, snapshot_ms)
        # The event is the JSON of a dict with sorted keys; its top-level values are
        # encoded one by one so that the eventId (a hash of the event without it) is
        # spliced in at its sorted place instead of encoding the event twice.
        values = {
            key: _ENCODER.encode(value) for key, value in self._attributes(attributes).items()
        }
        values["segmentMembership"] = membership_json
        values["identityMap"] = _ENCODER.encode(identity_map)
        data = self._encode_object(sorted(values), values)
        if self._config.event_id:
            values["eventId"] = '"' + event_id_for(profile_key, snapshot_ms, data) + '"'
            data = self._encode_object(sorted(values), values)
        return Formatted(data, statuses, memberships, identity_map)

    def _memberships(self, segments: dict, snapshot_ms: int) -> tuple[dict, list[str], str]:
        """The statuses and the ``segmentMembership`` JSON of a transition's segments."""
        config = self._config
        memberships: dict[str, dict[str, str]] = {}
        fragments: dict[str, dict[str, str]] = {}
        statuses = []
        for namespace, by_id in segments.items():
            if not isinstance(by_id, dict):
                raise EventFormatError(f"transition segments.{namespace} is not an object")
            for seg_id, entry in by_id.items():
                # Only mapped segments are ever sent (docs/contract.md §3), even if state
                # from an earlier config still holds others.
                if not config.is_mapped(namespace, seg_id):
                    continue
                status, qualified = _status_and_time(namespace, seg_id, entry)
                template = self._templates.get((namespace, seg_id, status))
                if template is None:
                    template = self._template(namespace, seg_id, status)
                time = format_timestamp(snapshot_ms if qualified is None else qualified)
                fragments.setdefault(namespace, {})[seg_id] = template[0] + time + template[1]
                memberships.setdefault(namespace, {})[seg_id] = status
                statuses.append(status)
        encoded = ",".join(
            self._name(namespace) + ":{" + ",".join(items[seg_id] for seg_id in sorted(items)) + "}"
            for namespace, items in sorted(fragments.items())
        )
        return memberships, statuses, "{" + encoded + "}"

    def _template(self, namespace: str, seg_id: str, status: str) -> tuple[str, str]:
        """The JSON of one segment entry, split around its lastQualificationTime."""
        config = self._config
        item: dict[str, Any] = {"status": status, "lastQualificationTime": _TIME_MARK}
        mapping = self._mappings.get((namespace, seg_id))
        if mapping is not None:
            if config.include_segment_names and mapping.name is not None:
                item["name"] = mapping.name
            if config.include_segment_timestamps:
                item.update(mapping.timestamps)
        before, after = _ENCODER.encode(item).split(_TIME_ANCHOR)
        template = (
            self._name(seg_id) + ":" + before + '"lastQualificationTime":"',
            '"' + after,
        )
        if len(self._templates) < 100_000:  # a bound for configs mapping every segment
            self._templates[(namespace, seg_id, status)] = template
        return template

    def _encode_object(self, keys: list[str], values: dict[str, str]) -> bytes:
        """The JSON object of already encoded values, in the order of ``keys``."""
        name = self._name
        text = "{" + ",".join([name(key) + ":" + values[key] for key in keys]) + "}"
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            # Only a lone surrogate (e.g. "\ud800" in JSON input) cannot be UTF-8.
            raise EventFormatError("the event holds a string that is not valid Unicode") from None

    def _name(self, key: str) -> str:
        """A key as a JSON string (cached: the same few namespaces and segment ids)."""
        encoded = self._names.get(key)
        if encoded is None:
            encoded = _ENCODER.encode(key)
            if len(self._names) < 100_000:
                self._names[key] = encoded
        return encoded

    def _attributes(self, attributes: dict) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        # Iterate the config, not the record: only configured paths may leave the job.
        for path in self._config.attributes:
            value = attributes.get(path)
            if value is None:
                continue
            parts = path.split(".")
            node = payload
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = _json_value(value, path)
        return payload


class FormattedEvents(NamedTuple):
    """What :class:`FormatSegmentEvents` returns.

    Attributes:
        events: ``(partition key, event bytes)``: what goes to Kinesis and to
            ``--output_path``.
        facts: The report's facts (:mod:`transforms.report.facts`) when asked for
            with ``report_facts``; otherwise an empty PCollection.
    """

    events: beam.PCollection
    facts: beam.PCollection


class FormatSegmentEvents(beam.PTransform):
    """Formats ``(profile key, transition)`` into ``(partition key, event bytes)``.

    Counters (namespace ``segment_events``): ``events_formatted`` and
    ``events_by_status_<status>`` per segment entry; ``events_excluded_no_identity``
    for events not formatted because the profile has no identity in the output
    namespaces (unless the config says ``send_without_identity``).

    Args:
        config: The activation config.
        report_facts: Also count the report's facts (:mod:`transforms.report.facts`).

    Returns (from ``expand``):
        A :class:`FormattedEvents`.
    """

    def __init__(self, config: ActivationConfig, *, report_facts: bool = False) -> None:
        super().__init__()
        self._config = config
        self._report_facts = report_facts

    def expand(self, pcoll: beam.PCollection) -> FormattedEvents:
        fn = _FormatEventFn(self._config, self._report_facts)
        outputs = pcoll | "FormatEvents" >> beam.ParDo(fn).with_output_types(
            tuple[str, bytes]
        ).with_outputs(FACTS, main="events")
        return FormattedEvents(outputs.events, outputs[FACTS])


# The counter of each event status: events_by_status_<status>.
_BY_STATUS = {status: f"events_by_status_{status}" for status in EVENT_STATUSES}


class _FormatEventFn(beam.DoFn):
    """Formats one transition; the profile key becomes the partition key hash."""

    def __init__(self, config: ActivationConfig, report_facts: bool = False) -> None:
        self._config = config
        self._report_facts = report_facts
        self._facts: Counter = Counter()
        self._counts = StepCounts()
        self._formatter: EventFormatter | None = None

    def setup(self) -> None:
        # Built on the worker: the lookups need not travel with the pickled DoFn.
        self._formatter = EventFormatter(self._config)

    def process(self, element: tuple[str, dict]) -> Iterable[tuple[str, bytes]]:
        profile_key, transition = element
        try:
            formatted = self._formatter.format_for_sending(  # type: ignore[union-attr]
                profile_key, transition
            )
        except EventFormatError as err:
            # A malformed transition is a bug upstream: fail loudly, but never log the
            # profile key or any value (they are PII).
            _LOGGER.error("Cannot format a segment event: %s", err)
            raise
        if formatted is None:
            self._counts.add("events_excluded_no_identity")
            if self._report_facts:
                count_excluded(
                    self._facts, transition["snapshot_ms"], transition.get("identities") or {}
                )
            return
        counts = self._counts
        counts.add("events_formatted", snapshot_ms=transition["snapshot_ms"])
        for status in formatted.statuses:
            counts.add(_BY_STATUS[status])
        if self._report_facts:
            count_event(
                self._facts,
                transition["snapshot_ms"],
                formatted.memberships,
                formatted.identity_map,
                transition.get(CAUSE),
            )
        yield partition_key_for(profile_key), formatted.data

    def finish_bundle(self):
        self._counts.flush()
        if self._facts:
            yield from bundle_facts(self._facts)


def _mapping(transition: dict, part: str) -> dict:
    value = transition.get(part)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventFormatError(f"transition {part} is not an object")
    return value


def _status_and_time(namespace: str, seg_id: str, entry: Any) -> tuple[str, int | None]:
    where = f"segment {namespace}/{seg_id}"
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise EventFormatError(f"{where}: expected [status, lastQualificationTime]")
    status, qualified = entry
    if status not in STATUSES:
        raise EventFormatError(f"{where}: unknown status {status!r}")
    if qualified is None or (isinstance(qualified, int) and not isinstance(qualified, bool)):
        return status, qualified
    try:
        return status, parse_timestamp(qualified)
    except TimestampError as err:
        raise EventFormatError(f"{where}: lastQualificationTime {err}") from None


def _json_value(value: Any, path: str) -> Any:
    """A JSON-encodable copy of an attribute value.

    Avro and Parquet readers hand out dates, decimals, UUIDs and bytes, and JSON input
    may hold NaN; none of these is valid JSON as is.
    """
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, float):
        # JSON has no NaN or Infinity; null is the only faithful "no number".
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise EventFormatError(f"attribute {path!r} has a non-string map key")
            converted[key] = _json_value(item, path)
        return converted
    if isinstance(value, (list, tuple)):
        return [_json_value(item, path) for item in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)  # naive times are UTC (docs/contract.md §2.3)
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise EventFormatError(f"attribute {path!r} has a value of type {type(value).__name__}")
