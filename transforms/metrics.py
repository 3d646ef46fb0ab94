"""The namespace of every Beam metric (counter) the job reports.

The run summary, the benches and the tests query counters by this namespace.
"""

METRICS_NAMESPACE = "segment_events"
