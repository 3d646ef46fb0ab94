"""Housekeeping of the job's local output files: owner-only, and nothing left on failure.

Event files, dead letters and Beam's temporary folders hold profile keys and identities
(PII). The job does not change the process umask (it may be embedded in another
program); instead:

* a missing output folder is created owner-only (``0700``), so whatever Beam writes
  into it, under any file mode, only the owner can read;
* after the run, the files it finalised under each prefix are made ``0600``;
* when a run fails, the ``beam-temp-*`` folders it started (Beam's file sinks stage
  whole output files there) are removed; a folder that cannot be removed is named in
  an ERROR log line, never left silently.

Remote prefixes (``s3://``, ``gs://``...) are left to the bucket's access policy.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
from collections.abc import Iterable

_LOGGER = logging.getLogger(__name__)
OWNER_ONLY_DIR = 0o700
OWNER_ONLY_FILE = 0o600


def _local(prefixes: Iterable[str | None]) -> list[str]:
    return [p for p in prefixes if p and "://" not in p]


def prepare_output_folders(prefixes: Iterable[str | None]) -> None:
    """Creates each local prefix's missing folder (and parents) owner-only."""
    for prefix in _local(prefixes):
        folder = os.path.dirname(prefix) or "."
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=OWNER_ONLY_DIR, exist_ok=True)
            os.chmod(folder, OWNER_ONLY_DIR)  # makedirs' mode is masked by the umask


def temp_folders(prefixes: Iterable[str | None]) -> set[str]:
    """The ``beam-temp-*`` folders Beam's file sinks create for these local prefixes."""
    found: set[str] = set()
    for prefix in _local(prefixes):
        folder, base = os.path.split(prefix)
        pattern = os.path.join(glob.escape(folder or "."), f"beam-temp-{glob.escape(base)}-*")
        found.update(p for p in glob.glob(pattern) if os.path.isdir(p))
    return found


def remove_temp_folders(prefixes: Iterable[str | None], existing: set[str]) -> list[str]:
    """Removes the ``beam-temp-*`` folders of ``prefixes`` not in ``existing``.

    Returns:
        The folders that could not be removed (each also logged at ERROR).
    """
    left = []
    for folder in sorted(temp_folders(prefixes) - existing):
        try:
            shutil.rmtree(folder)
        except OSError as err:
            _LOGGER.error(
                "could not remove %s (it may hold output records): %s; remove it by hand",
                folder,
                err,
            )
            left.append(folder)
    return left


def restrict_output_files(prefixes: Iterable[str | None]) -> None:
    """Makes the files under each local prefix owner-only (``0600``)."""
    for prefix in _local(prefixes):
        for path in glob.glob(glob.escape(prefix) + "*"):
            if os.path.isfile(path) and os.stat(path).st_uid == os.geteuid():
                os.chmod(path, OWNER_ONLY_FILE)
