"""Loading and validation of the destination config (the "activation", docs/contract.md §3).

The config is validated completely before any pipeline is built: every problem is a
:class:`ConfigError` whose message names the key and what was expected, so the command
line can print one line and exit non-zero.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from transforms.errors import SegmentEventsError

# Keys of the config file, in the order of docs/contract.md §3.
_TOP_LEVEL_KEYS = (
    "segments",
    "profile_key",
    "identities",
    "attributes",
    "triggers",
    "include_segment_names",
    "include_segment_timestamps",
    "event_id",
    "send_without_identity",
    "absent_profile_ttl",
    "max_exit_fraction",
)
_SEGMENT_KEYS = (
    "id",
    "namespace",
    "name",
    "createdAt",
    "updatedAt",
    "mappingCreatedAt",
    "mappingUpdatedAt",
)
SEGMENT_TIMESTAMP_KEYS = ("createdAt", "updatedAt", "mappingCreatedAt", "mappingUpdatedAt")
_TRIGGER_KEYS = ("segments", "attributes", "identities")
_IDENTITY_KEYS = ("include", "hash")
# Hash kinds are named by the source namespace they normalise (docs/contract.md §3).
HASHABLE_NAMESPACES = ("email", "phone")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Top-level event keys that attributes must not shadow (docs/contract.md §5), and the input tombstone.
_RESERVED_TOP_LEVEL = ("identityMap", "segmentMembership", "eventId", "_deleted")


class ConfigError(SegmentEventsError, ValueError):
    """The config file is missing, unreadable or invalid; the message says what to fix."""


@dataclass(frozen=True)
class SegmentMapping:
    """One mapped segment of the activation.

    Attributes:
        id: The segment id as it appears under ``segmentMembership.<namespace>``.
        namespace: The segment namespace (``ups`` unless configured).
        name: Optional display name, emitted with ``include_segment_names``.
        timestamps: Epoch-ms values of the keys in ``SEGMENT_TIMESTAMP_KEYS`` that the
            config gave, emitted with ``include_segment_timestamps``.
    """

    id: str
    namespace: str = "ups"
    name: str | None = None
    timestamps: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ActivationConfig:
    """The validated destination config.

    Attributes:
        segments: Mapped segments, or ``None`` when the config says ``"*"`` (every
            segment seen is mapped).
        profile_key: ``"primary"``, a namespace name, or ``"field:<dotted.path>"``.
        identities_include: Output identity namespaces to keep (after hashing), or
            ``None`` for all.
        identities_hash: Source namespace -> hashed output namespace.
        attributes: Dotted attribute paths copied into events.
        trigger_segments: Segment changes emit events.
        trigger_attributes: A change of a mapped attribute emits an event.
        trigger_identities: A change of the identity map emits an event.
        include_segment_names: Add ``name`` to each segment of an event.
        include_segment_timestamps: Add the four mapping timestamps to each segment.
        event_id: Add the deterministic ``eventId``.
        send_without_identity: Send events of profiles with no identity in the output
            namespaces (``"identityMap": {}``); by default they are excluded and counted.
        absent_profile_ttl_seconds: Streaming: exit a profile unseen this long; ``None``
            disables it.
        max_exit_fraction: Mass-exit guard threshold (docs/contract.md §7).
    """

    segments: tuple[SegmentMapping, ...] | None
    profile_key: str = "primary"
    identities_include: tuple[str, ...] | None = None
    identities_hash: tuple[tuple[str, str], ...] = ()
    attributes: tuple[str, ...] = ()
    trigger_segments: bool = True
    trigger_attributes: bool = False
    trigger_identities: bool = False
    include_segment_names: bool = False
    include_segment_timestamps: bool = False
    event_id: bool = True
    send_without_identity: bool = False
    absent_profile_ttl_seconds: int | None = None
    max_exit_fraction: float = 0.5
    _mapped: frozenset = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.segments is not None:
            keys = frozenset((s.namespace, s.id) for s in self.segments)
            object.__setattr__(self, "_mapped", keys)

    def is_mapped(self, namespace: str, segment_id: str) -> bool:
        """Whether events are produced for this segment."""
        return self.segments is None or (namespace, segment_id) in self._mapped

    def segment(self, namespace: str, segment_id: str) -> SegmentMapping | None:
        """The mapping of a segment, if it is mapped explicitly."""
        if self.segments is None:
            return None
        for mapping in self.segments:
            if mapping.namespace == namespace and mapping.id == segment_id:
                return mapping
        return None

    @property
    def hash_map(self) -> dict[str, str]:
        """Source namespace -> hashed namespace, as a dict."""
        return dict(self.identities_hash)


def load_config(path: str) -> ActivationConfig:
    """Reads and validates a config file.

    Args:
        path: Path of the JSON config file.

    Returns:
        The validated config.

    Raises:
        ConfigError: The file is missing, not JSON, or not a valid config.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    try:
        raw = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKeyError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"config file {path} is not valid JSON: {err.msg} at line {err.lineno} "
            f"column {err.colno}"
        ) from None
    try:
        return parse_config(raw)
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None


def parse_config(raw: Any) -> ActivationConfig:
    """Validates a decoded config mapping (see :func:`load_config`).

    Args:
        raw: The decoded JSON value of the config file.

    Returns:
        The validated config.

    Raises:
        ConfigError: The value is not a valid config; the message names the key and
            what was expected.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"the config must be a JSON object, got {_type_name(raw)}")
    _reject_unknown(raw, _TOP_LEVEL_KEYS, "")
    if "segments" not in raw:
        raise ConfigError('"segments" is required: a list of segment mappings or "*"')
    segments = _parse_segments(raw["segments"])
    profile_key = _parse_profile_key(raw.get("profile_key", "primary"))
    include, hashes = _parse_identities(raw.get("identities", {}))
    attributes = _parse_attributes(raw.get("attributes", []))
    triggers = _parse_triggers(raw.get("triggers", {}))
    flags = {}
    for key, default in (
        ("include_segment_names", False),
        ("include_segment_timestamps", False),
        ("event_id", True),
        ("send_without_identity", False),
    ):
        flags[key] = raw.get(key, default)
        _expect(isinstance(flags[key], bool), key, "true or false", flags[key])
    ttl = _parse_duration(raw.get("absent_profile_ttl"))
    fraction = raw.get("max_exit_fraction", 0.5)
    _expect(
        isinstance(fraction, (int, float))
        and not isinstance(fraction, bool)
        and math.isfinite(fraction)
        and 0 <= fraction <= 1,
        "max_exit_fraction",
        "a number between 0 and 1",
        fraction,
    )
    return ActivationConfig(
        segments=segments,
        profile_key=profile_key,
        identities_include=include,
        identities_hash=hashes,
        attributes=attributes,
        trigger_segments=triggers["segments"],
        trigger_attributes=triggers["attributes"],
        trigger_identities=triggers["identities"],
        include_segment_names=flags["include_segment_names"],
        include_segment_timestamps=flags["include_segment_timestamps"],
        event_id=flags["event_id"],
        send_without_identity=flags["send_without_identity"],
        absent_profile_ttl_seconds=ttl,
        max_exit_fraction=float(fraction),
    )


def _parse_segments(value: Any) -> tuple[SegmentMapping, ...] | None:
    if value == "*":
        return None
    _expect(isinstance(value, list), "segments", 'a list of segment mappings or "*"', value)
    if not value:
        raise ConfigError('"segments" is empty: map at least one segment, or use "*"')
    mappings = []
    seen = set()
    for index, item in enumerate(value):
        where = f"segments[{index}]"
        _expect(isinstance(item, dict), where, "an object with at least an id", item)
        _reject_unknown(item, _SEGMENT_KEYS, f"{where}.")
        seg_id = item.get("id")
        _expect(
            isinstance(seg_id, str) and seg_id.strip(), f"{where}.id", "a non-empty string", seg_id
        )
        namespace = item.get("namespace", "ups")
        _expect(
            isinstance(namespace, str) and namespace.strip(),
            f"{where}.namespace",
            "a non-empty string",
            namespace,
        )
        name = item.get("name")
        _expect(name is None or isinstance(name, str), f"{where}.name", "a string", name)
        stamps = []
        for key in SEGMENT_TIMESTAMP_KEYS:
            if item.get(key) is not None:
                stamp = item[key]
                _expect(
                    isinstance(stamp, int) and not isinstance(stamp, bool) and stamp >= 0,
                    f"{where}.{key}",
                    "epoch milliseconds (a non-negative integer)",
                    stamp,
                )
                stamps.append((key, stamp))
        if (namespace, seg_id) in seen:
            raise ConfigError(f'"{where}": segment {namespace}/{seg_id} is mapped twice')
        seen.add((namespace, seg_id))
        mappings.append(SegmentMapping(seg_id, namespace, name, tuple(stamps)))
    return tuple(mappings)


def _parse_profile_key(value: Any) -> str:
    _expect(
        isinstance(value, str) and value.strip(),
        "profile_key",
        '"primary", a namespace name or "field:<dotted.path>"',
        value,
    )
    value = value.strip()
    if value.startswith("field:"):
        path = value[len("field:") :]
        if not path or any(not part for part in path.split(".")):
            raise ConfigError(
                f'"profile_key": {value!r} must be "field:" followed by a dotted path '
                'like "field:crmId" or "field:person.crm.id"'
            )
    return value


def _parse_identities(value: Any) -> tuple[tuple[str, ...] | None, tuple[tuple[str, str], ...]]:
    _expect(isinstance(value, dict), "identities", 'an object with "include" and/or "hash"', value)
    _reject_unknown(value, _IDENTITY_KEYS, "identities.")
    hashes = value.get("hash", {})
    _expect(
        isinstance(hashes, dict) and all(isinstance(v, str) and v.strip() for v in hashes.values()),
        "identities.hash",
        'an object of source namespace -> hashed namespace, e.g. {"email": "email_lc_sha256"}',
        hashes,
    )
    for source, target in hashes.items():
        if source not in HASHABLE_NAMESPACES:
            raise ConfigError(
                f'"identities.hash": cannot hash namespace {source!r}; '
                f"supported: {', '.join(HASHABLE_NAMESPACES)}"
            )
        # Hashed ids must never land in a namespace that reads as raw e-mails or phones
        # (source namespaces match case-insensitively, see transforms/events/identities.py).
        if target.lower() in HASHABLE_NAMESPACES:
            raise ConfigError(
                f'"identities.hash.{source}": the hashed namespace {target!r} must not be '
                f"a raw namespace name ({', '.join(HASHABLE_NAMESPACES)}); "
                'use e.g. "email_lc_sha256" or "phone_sha256"'
            )
    targets = list(hashes.values())
    if len(set(targets)) != len(targets):
        raise ConfigError('"identities.hash": two namespaces hash into the same namespace')
    include = value.get("include")
    if include is not None:
        _expect(
            isinstance(include, list) and all(isinstance(n, str) and n.strip() for n in include),
            "identities.include",
            "a list of namespace names (strings)",
            include,
        )
        for name in include:
            # include names output namespaces; a hashed source never reaches the output,
            # so listing it can only be a mistake that would silently drop those ids.
            if name.lower() in hashes:
                raise ConfigError(
                    f'"identities.include": {name!r} is hashed into '
                    f"{hashes[name.lower()]!r} (identities.hash) and never appears in "
                    f"events; include {hashes[name.lower()]!r} instead"
                )
        include = tuple(dict.fromkeys(include))
    return include, tuple(sorted(hashes.items()))


def _parse_attributes(value: Any) -> tuple[str, ...]:
    _expect(
        isinstance(value, list) and all(isinstance(a, str) and a.strip() for a in value),
        "attributes",
        "a list of dotted attribute paths (strings)",
        value,
    )
    seen: dict[tuple[str, ...], str] = {}
    for path in value:
        parts = tuple(path.split("."))
        if any(not part for part in parts) or parts[0] in _RESERVED_TOP_LEVEL:
            raise ConfigError(
                f'"attributes": {path!r} is not a dotted path of a profile attribute '
                f"(top-level names {', '.join(_RESERVED_TOP_LEVEL)} are reserved)"
            )
        if parts in seen:
            raise ConfigError(f'"attributes": {path!r} is listed twice')
        seen[parts] = path
    # Paths become nested objects in events: "a.b" and "a.b.c" cannot both be there.
    for parts, path in seen.items():
        for length in range(1, len(parts)):
            prefix = parts[:length]
            if prefix in seen:
                raise ConfigError(
                    f'"attributes": {seen[prefix]!r} and {path!r} conflict: one contains '
                    f"the other; keep only {seen[prefix]!r} (it includes the nested value)"
                )
    return tuple(value)


def _parse_triggers(value: Any) -> dict[str, bool]:
    _expect(isinstance(value, dict), "triggers", "an object of booleans", value)
    _reject_unknown(value, _TRIGGER_KEYS, "triggers.")
    defaults = {"segments": True, "attributes": False, "identities": False}
    triggers = {}
    for key in _TRIGGER_KEYS:
        triggers[key] = value.get(key, defaults[key])
        _expect(isinstance(triggers[key], bool), f"triggers.{key}", "true or false", triggers[key])
    if not any(triggers.values()):
        raise ConfigError(
            '"triggers": every trigger is off, so no event would ever be sent; '
            'turn on at least one of "segments", "attributes", "identities"'
        )
    return triggers


def _parse_duration(value: Any) -> int | None:
    """Parses ``absent_profile_ttl``: null, seconds, or a string like ``"30d"``."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match and int(match.group(1)) > 0:
            return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ConfigError(
        '"absent_profile_ttl": expected null, a positive integer number of seconds, '
        f'or a duration like "30d", "12h", "90m", "45s"; got {value!r}'
    )


class _DuplicateKeyError(SegmentEventsError, ValueError):
    """A JSON object of the config file has the same key twice."""


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads silently keeps the last of duplicate keys; in a config that hides edits.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(f"key {key!r} appears twice in the same object")
        result[key] = value
    return result


def _reject_unknown(mapping: dict, allowed: tuple[str, ...], prefix: str) -> None:
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]!r}; allowed keys: {', '.join(allowed)}")


def _expect(ok: Any, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f'"{key}": expected {expected}, got {_describe(value)}')


def _describe(value: Any) -> str:
    """The JSON type of a value, with short scalars shown (config values hold no PII)."""
    if isinstance(value, (bool, int, float)) or value is None:
        return f"{_type_name(value)} {json.dumps(value)}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"{_type_name(value)} {json.dumps(shown, ensure_ascii=False)}"
    return _type_name(value)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {list: "a list", dict: "an object", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )
