"""Snapshot file formats, recognised by file extension (docs/contract.md §2.2)."""

from __future__ import annotations

# The formats a snapshot file can have, in a stable order (the watch splits by it).
SNAPSHOT_FORMATS = ("avro", "json", "parquet")

# Extension -> format. ".gz" is read transparently by the text reader.
FORMAT_BY_EXTENSION = {
    ".avro": "avro",
    ".json": "json",
    ".jsonl": "json",
    ".json.gz": "json",
    ".jsonl.gz": "json",
    ".parquet": "parquet",
}


def file_format(path: str) -> str | None:
    """The format of a file by its extension, or ``None`` if unknown."""
    lowered = path.lower()
    for extension in sorted(FORMAT_BY_EXTENSION, key=len, reverse=True):
        if lowered.endswith(extension):
            return FORMAT_BY_EXTENSION[extension]
    return None
