"""Test helper: validates produced events against the shipped JSON Schema.

Every test that produces events should pass them through :func:`validate_event` (bytes)
or :func:`validate_record` (a ``(partition key, bytes)`` Kinesis record). Beyond the
schema it checks what a schema cannot: strict UTF-8, compact sorted-key encoding (the
bytes are canonical) and the partition key form.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "segment_event.schema.json"
_PARTITION_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


@functools.cache
def load_schema() -> dict[str, Any]:
    """The event JSON Schema (draft 2020-12), checked to be a valid schema."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        load_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def schema_errors(event: Any) -> list[str]:
    """Schema violations of a decoded event, as messages (empty when valid)."""
    return [error.message for error in _validator().iter_errors(event)]


def validate_event(data: bytes) -> dict[str, Any]:
    """Decodes event bytes and asserts they are a valid, canonically encoded event.

    Args:
        data: The event bytes as sent to Kinesis.

    Returns:
        The decoded event.

    Raises:
        AssertionError: The bytes are not UTF-8 JSON, not canonical, or not schema-valid.
    """
    assert isinstance(data, bytes), f"event data must be bytes, got {type(data).__name__}"
    event = json.loads(data.decode("utf-8"))
    canonical = json.dumps(event, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode(
        "utf-8"
    )
    assert data == canonical, f"event bytes are not compact sorted-key JSON: {data!r}"
    assert b"\n" not in data, "event bytes hold a newline"
    errors = schema_errors(event)
    assert not errors, f"event violates the schema: {errors}; event: {data!r}"
    return event


def validate_record(record: tuple[str, bytes]) -> dict[str, Any]:
    """Asserts a ``(partition key, data)`` record is valid; returns the decoded event."""
    partition_key, data = record
    assert _PARTITION_KEY_RE.match(partition_key), f"bad partition key {partition_key!r}"
    return validate_event(data)


def validate_records(records: Iterable[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """Validates every record (see :func:`validate_record`); returns the decoded events."""
    return [validate_record(record) for record in records]
