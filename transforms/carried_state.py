"""Profile states carried from one run of a split backfill to the next.

A backfill split with ``--snapshots_per_run`` runs one pipeline per group of
consecutive snapshots. Each run writes the final state of every profile it still has to
remember (:func:`transforms.memberships.carried_state`) and the next run starts from
those states, so the split gives exactly the events of one run over all the snapshots
while each run only holds its own snapshots (SPEC §4 "Order").

The files are Avro (Beam's Avro IO): one record per profile, the profile key and the
state in the versioned encoding of :func:`transforms.transitions.encode_state`. They hold
profile keys and identities, so they are written owner-only (the job's umask) into a
directory the job creates and removes.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.avroio import ReadFromAvro, WriteToAvro

STATE_SCHEMA = {
    "type": "record",
    "name": "CarriedProfileState",
    "namespace": "segment_events",
    "fields": [
        {"name": "key", "type": "string"},
        {"name": "state", "type": "bytes"},
    ],
}


class ReadCarriedStates(beam.PTransform):
    """Reads carried states as ``(profile key, encoded state)``.

    Args:
        pattern: A glob of the previous run's state files.
    """

    def __init__(self, pattern: str, label: str | None = None) -> None:
        super().__init__(label)
        self._pattern = pattern

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "ReadStateFiles" >> ReadFromAvro(self._pattern)
            | "KeyStates"
            >> beam.Map(lambda row: (row["key"], row["state"])).with_output_types(tuple[str, bytes])
        )


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
