"""The Kinesis Data Streams sink: ``WriteToKinesisStream``, its writer DoFn, batching,
record aggregation, rate limiting, error taxonomy and client."""
