"""The segment membership statuses that snapshots hold and events carry (docs/contract.md §3).

Below both the snapshot parsing (:mod:`transforms.snapshots.profiles`) and the event
format (:mod:`transforms.events.format`), so neither imports the other for them.
"""

STATUSES = frozenset(("realized", "existing", "exited"))
