"""Reading profile snapshots: files, landing-folder watch, snapshot time, profile records."""
