"""Local Flink for the engine tests and ``run_local.sh --flink/--flink-cluster``."""
