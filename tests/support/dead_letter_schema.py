"""Test helper: validates dead letters against the shipped JSON Schema.

Every test that produces dead letters (any stage: read, transitions, the sink, a replay)
should pass them through :func:`validate_dead_letters`: dicts as the pipeline carries
them, or lines of a dead-letter file. Beyond the schema it checks that a letter survives
the file encoding unchanged (``pipeline.graph.encode_dead_letter``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema

from pipeline.graph import encode_dead_letter

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "dead_letter.schema.json"


@functools.cache
def load_schema() -> dict[str, Any]:
    """The dead-letter JSON Schema (draft 2020-12), checked to be a valid schema."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema())


def schema_errors(letter: Any) -> list[str]:
    """Schema violations of a dead letter, as messages (empty when valid)."""
    return [error.message for error in _validator().iter_errors(letter)]


def validate_dead_letter(letter: dict[str, Any] | str | bytes) -> dict[str, Any]:
    """Asserts a dead letter (a dict, or one line of a dead-letter file) is valid.

    Returns:
        The letter as a dict.

    Raises:
        AssertionError: The letter violates the schema, or is not JSON-encodable as it is.
    """
    if isinstance(letter, (str, bytes)):
        letter = json.loads(letter)
    assert isinstance(letter, dict), f"a dead letter is an object, got {type(letter).__name__}"
    errors = schema_errors(letter)
    assert not errors, f"dead letter violates the schema: {errors}; letter: {letter!r}"
    # What the files hold decodes to the very letter (no value that JSON would change).
    assert json.loads(encode_dead_letter(letter)) == letter, letter
    return letter


def validate_dead_letters(letters: Iterable[dict[str, Any] | str | bytes]) -> list[dict[str, Any]]:
    """Validates every letter (see :func:`validate_dead_letter`); returns them as dicts."""
    return [validate_dead_letter(letter) for letter in letters]
