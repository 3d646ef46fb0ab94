"""Profile states carried from one run of a split backfill to the next.

A backfill split with ``--snapshots_per_run`` runs one pipeline per group of
consecutive snapshots. Each run writes the final state of every profile it still has to
remember (:func:`transforms.segments.memberships.carried_state`) and the next run starts from
those states, so the split gives exactly the events of one run over all the snapshots
while each run only holds its own snapshots (docs/contract.md §4 "Order").

The files are Avro (written with Beam's Avro IO): one record per profile, the profile
key and the state in the versioned encoding of :func:`transforms.segments.codecs.encode_state`
behind a tag byte. They hold profile keys and identities, so they are written
owner-only (the job's umask) into a directory the job creates and removes.

The next run reads them with its snapshot files, in the same read step
(``ReadSnapshots(carried_states=...)``), and they travel among the records as
``(profile key, {"carried_state": bytes})``: a separate read joined with a Flatten would
make the local runner copy every record once more (it materialises multi-input
Flattens).
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.io.avroio import WriteToAvro

# The pseudo file format under which ReadSnapshots reads carried state files, and the
# field of the record it turns each state into.
CARRIED_STATE_FORMAT = "carried_state"
CARRIED_STATE_FIELD = "carried_state"

STATE_SCHEMA = {
    "type": "record",
    "name": "CarriedProfileState",
    "namespace": "segment_events",
    "fields": [
        {"name": "key", "type": "string"},
        {"name": "state", "type": "bytes"},
    ],
}


class WriteCarriedStates(beam.PTransform):
    """Writes ``(profile key, encoded state)`` pairs as Avro files under a prefix.

    Args:
        prefix: The path prefix of the state files (``.avro`` is appended).
    """

    def __init__(self, prefix: str, label: str | None = None) -> None:
        super().__init__(label)
        self._prefix = prefix

    def expand(self, states: beam.PCollection) -> beam.pvalue.PDone:
        return (
            states
            | "StateRows" >> beam.Map(lambda kv: {"key": kv[0], "state": kv[1]})
            | "WriteStateFiles"
            >> WriteToAvro(self._prefix, schema=STATE_SCHEMA, file_name_suffix=".avro")
        )


def carried_state_record(row: dict[str, Any]) -> tuple[str, dict]:
    """A row of a state file as an element of the records: ``(key, {field: bytes})``."""
    return row["key"], {CARRIED_STATE_FIELD: row["state"]}


def is_carried_state(record: dict) -> bool:
    """Whether a record of ``ReadSnapshots`` is a carried state, not a snapshot record."""
    return CARRIED_STATE_FIELD in record
