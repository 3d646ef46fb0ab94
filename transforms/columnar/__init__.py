"""The columnar batch path: snapshot files as Arrow batches, bucketed by profile.

Only the rows that differ from their profile's previous row become Python values and
reach the replay; the rest are copies the replay gets for free (docs/design.md,
"The columnar batch path"). Modules, in the order the data goes through them:

* :mod:`.read_batches`: a file -> bulk-checked rows, split into buckets (Arrow IPC);
* :mod:`.projection`: the bulk checks and the projection compared between snapshots;
* :mod:`.row_equality`: deep equality of Arrow rows without Python values;
* :mod:`.bucket_replay`: a bucket -> each profile's records -> the row path's replay;
* :mod:`.columnar_transitions`: the PTransform that wires them with the guards.
"""
