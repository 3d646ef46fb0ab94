#!/usr/bin/env bash
# The test command: installs the project with its dev and gcp extras (the gcp extra
# builds the Dataflow job offline in a test) into .venv, kinesalite, the Flink job
# server's jars and a Prism binary into .cache/ (each once), then runs ruff and the
# whole test suite, the engine tests on Flink and Prism included. Extra arguments go to
# pytest (e.g. -m "not flink and not flink_cluster and not prism and not soak").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/.ci/bootstrap.sh"
bootstrap_python "[dev,gcp]"
bootstrap_kinesalite
bootstrap_engines
bootstrap_kcl
bootstrap_chromium
cd "$ROOT"
"$PY" -m ruff check .
exec "$PY" -m pytest -q "$@"
