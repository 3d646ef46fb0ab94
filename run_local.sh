#!/usr/bin/env bash
# The demo, end to end on this machine: installs the project into .venv, starts a local
# Kinesis-compatible server (kinesalite), creates a stream, generates sample snapshots,
# runs the pipeline into the stream, reads every shard back, prints the events, their
# digest and the run summary, and stops every server it started (by PID).
#
# Usage: ./run_local.sh [--profiles N] [--snapshots N] [--format avro|jsonl]
#                       [--flink | --flink-cluster | --prism] [--report]
#   default          the local DirectRunner (in-process)
#   --flink          a Flink job server with an embedded Flink, parallelism 2
#   --flink-cluster  a standalone Flink cluster (1 JobManager, 2 TaskManagers, a Python
#                    worker pool) behind a job server, parallelism 2
#   --prism          Prism, Beam's portable local runner, built with go install
#   --report         also write demo/report.json and demo/report.html (one offline page:
#                    entries, exits and members per snapshot and segment)
# Every engine prints the same events (compare the digest line).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/.ci/bootstrap.sh"

PROFILES=200
SNAPSHOTS=3
FORMAT=avro
ENGINE=direct
REPORT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profiles) PROFILES="$2"; shift 2 ;;
    --snapshots) SNAPSHOTS="$2"; shift 2 ;;
    --format) FORMAT="$2"; shift 2 ;;
    --flink) ENGINE=flink; shift ;;
    --flink-cluster) ENGINE=flink-cluster; shift ;;
    --prism) ENGINE=prism; shift ;;
    --report) REPORT=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

bootstrap_python ""
bootstrap_kinesalite

DEMO="$ROOT/demo"
rm -rf "$DEMO"
mkdir -p "$DEMO"
# Dummy credentials for the local server only; real runs use the AWS default chain.
export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_REGION=us-east-1
STREAM=segment-events-demo

cleanup() {
  if [ -f "$DEMO/flink/services.json" ]; then
    "$PY" -m tools.flink stop --state-dir "$DEMO/flink" || true
  fi
  "$PY" -m tools.kinesalite stop --pid-file "$DEMO/kinesalite.pid" >/dev/null 2>&1 || true
}
trap cleanup EXIT

ENGINE_ARGS=()
case "$ENGINE" in
  flink|flink-cluster)
    MODE=embedded; [ "$ENGINE" = flink-cluster ] && MODE=cluster
    echo "==> starting Flink ($MODE) under $DEMO/flink"
    if ! "$PY" -m tools.flink start --mode "$MODE" --state-dir "$DEMO/flink"; then
      "$PY" -m tools.flink logs --state-dir "$DEMO/flink" >&2 || true
      exit 1
    fi
    read -r -a ENGINE_ARGS <<< "$("$PY" -m tools.flink args --state-dir "$DEMO/flink" --parallelism 2)"
    ;;
  prism)
    PRISM_BIN="$("$PY" -m tools.prism)"
    ENGINE_ARGS=(--runner PrismRunner --prism_location "$PRISM_BIN")
    ;;
esac

echo "==> starting kinesalite"
"$PY" -m tools.kinesalite start --pid-file "$DEMO/kinesalite.pid" \
  --endpoint-file "$DEMO/kinesalite.endpoint"
ENDPOINT="$(cat "$DEMO/kinesalite.endpoint")"
"$PY" -m tools.kinesalite create-stream --endpoint "$ENDPOINT" --stream "$STREAM" --shards 2

echo "==> generating $SNAPSHOTS daily snapshots of $PROFILES profiles ($FORMAT)"
"$PY" -m tools.sample_data --out "$DEMO/snapshots" --profiles "$PROFILES" \
  --snapshots "$SNAPSHOTS" --format "$FORMAT"

echo "==> running the pipeline ($ENGINE) into stream $STREAM"
"$PY" -m pipeline ${ENGINE_ARGS[@]+"${ENGINE_ARGS[@]}"} \
  --config "$DEMO/snapshots/activation.json" \
  --input "$DEMO/snapshots/snapshot=*/part-*.$FORMAT" \
  --kinesis_stream "$STREAM" --kinesis_region us-east-1 --kinesis_endpoint_url "$ENDPOINT" \
  --output_path "$DEMO/out/events" --dead_letter_path "$DEMO/out/dead-letters" \
  ${REPORT:+--report "$DEMO/report"}

echo "==> events read back from every shard of $STREAM"
"$PY" -m tools.kinesalite read --endpoint "$ENDPOINT" --stream "$STREAM" \
  --out "$DEMO/stream-events.jsonl"
cat "$DEMO/stream-events.jsonl"
echo "==> $(wc -l < "$DEMO/stream-events.jsonl") events read back from the stream;" \
  "event files under $DEMO/out/"
echo "==> sha256 of the sorted events: $(LC_ALL=C sort "$DEMO/stream-events.jsonl" | sha256sum | cut -c1-64)"
