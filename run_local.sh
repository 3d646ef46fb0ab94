#!/usr/bin/env bash
# The demo, end to end on this machine: installs the project into .venv, starts a local
# Kinesis-compatible server (kinesalite), creates a stream, generates sample snapshots,
# runs the pipeline on the DirectRunner into the stream, reads every shard back, prints
# the events and the run summary, and stops the server.
#
# Usage: ./run_local.sh [--profiles N] [--snapshots N] [--format avro|jsonl]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/.ci/bootstrap.sh"

PROFILES=200
SNAPSHOTS=3
FORMAT=avro
while [ $# -gt 0 ]; do
  case "$1" in
    --profiles) PROFILES="$2"; shift 2 ;;
    --snapshots) SNAPSHOTS="$2"; shift 2 ;;
    --format) FORMAT="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
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

echo "==> starting kinesalite"
"$PY" -m pipeline.local_kinesis start --pid-file "$DEMO/kinesalite.pid" \
  --endpoint-file "$DEMO/kinesalite.endpoint"
trap '"$PY" -m pipeline.local_kinesis stop --pid-file "$DEMO/kinesalite.pid" >/dev/null 2>&1 || true' EXIT
ENDPOINT="$(cat "$DEMO/kinesalite.endpoint")"
"$PY" -m pipeline.local_kinesis create-stream --endpoint "$ENDPOINT" --stream "$STREAM" --shards 2

echo "==> generating $SNAPSHOTS daily snapshots of $PROFILES profiles ($FORMAT)"
"$PY" -m pipeline.sample_data --out "$DEMO/snapshots" --profiles "$PROFILES" \
  --snapshots "$SNAPSHOTS" --format "$FORMAT"

echo "==> running the pipeline (DirectRunner) into stream $STREAM"
"$PY" -m pipeline \
  --config "$DEMO/snapshots/activation.json" \
  --input "$DEMO/snapshots/snapshot=*/part-*.$FORMAT" \
  --kinesis_stream "$STREAM" --kinesis_region us-east-1 --kinesis_endpoint_url "$ENDPOINT" \
  --output_path "$DEMO/out/events" --dead_letter_path "$DEMO/out/dead-letters"

echo "==> events read back from every shard of $STREAM"
"$PY" -m pipeline.local_kinesis read --endpoint "$ENDPOINT" --stream "$STREAM" \
  --out "$DEMO/stream-events.jsonl"
cat "$DEMO/stream-events.jsonl"
echo "==> $(wc -l < "$DEMO/stream-events.jsonl") events read back from the stream;" \
  "event files under $DEMO/out/"
