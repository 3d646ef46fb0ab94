"""``WriteFilePerBundle``: JSON Lines files of an unbounded (streaming) PCollection.

Beam's ``WriteToText`` finalises files per window; on an unbounded PCollection in the
global window it needs event-time fixed windows (``triggering_frequency``) whose late
elements it drops, and the job's streaming outputs (events stamped with snapshot times,
TTL exits, dead letters) can be behind the watermark. This writer has no windows: each
bundle that has elements becomes one file, written under a hidden temporary name and
renamed when the bundle finishes::

    PREFIX-20240131T060000123456Z-1f0c2a9e4b7d.jsonl     (UTC write time, random id)

Delivery is at-least-once: a bundle retried after its rename writes its lines again, in
a new file. Local files are created owner-only (``0600``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

_LOGGER = logging.getLogger(__name__)


class WriteFilePerBundle(beam.PTransform):
    """Writes ``bytes`` or ``str`` elements as lines, one new file per bundle.

    Args:
        prefix: Path prefix of the files (local path or any Beam filesystem URL).
        suffix: File name suffix.
    """

    def __init__(self, prefix: str, suffix: str = ".jsonl", label: str | None = None) -> None:
        super().__init__(label)
        self._prefix = prefix
        self._suffix = suffix

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "WriteBundleFiles" >> beam.ParDo(
            _WriteBundleFileFn(self._prefix, self._suffix)
        )


class _WriteBundleFileFn(beam.DoFn):
    """Streams a bundle's elements into a temporary file; renames it at bundle end."""

    def __init__(self, prefix: str, suffix: str) -> None:
        self._prefix = prefix
        self._suffix = suffix
        self._handle: Any = None
        self._temp = ""
        self._final = ""

    def start_bundle(self) -> None:
        self._handle = None

    def process(self, element: bytes | str) -> None:
        if self._handle is None:
            self._open()
        data = element if isinstance(element, bytes) else element.encode("utf-8")
        self._handle.write(data + b"\n")

    def finish_bundle(self) -> None:
        if self._handle is None:
            return
        self._handle.close()
        self._handle = None
        FileSystems.rename([self._temp], [self._final])
        _LOGGER.debug("wrote %s", self._final)

    def teardown(self) -> None:
        # A bundle that failed leaves its temporary file; remove it (best effort).
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            try:
                FileSystems.delete([self._temp])
            except Exception:  # noqa: BLE001 - best effort clean-up
                _LOGGER.debug("could not delete %s", self._temp, exc_info=True)

    def _open(self) -> None:
        folder, base = FileSystems.split(self._prefix)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{base}-{stamp}-{uuid.uuid4().hex[:12]}{self._suffix}"
        self._final = FileSystems.join(folder, name) if folder else name
        temp_name = f".{name}.tmp"
        self._temp = FileSystems.join(folder, temp_name) if folder else temp_name
        if "://" not in self._temp:
            # Owner-only from the first byte (the lines are PII), whatever the umask.
            os.makedirs(os.path.dirname(self._temp) or ".", exist_ok=True)
            os.close(os.open(self._temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        self._handle = FileSystems.create(
            self._temp, compression_type=CompressionTypes.UNCOMPRESSED
        )
