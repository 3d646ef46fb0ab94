#!/usr/bin/env bash
# The test command: installs the project with its dev and gcp extras (the gcp extra
# builds the Dataflow job offline in a test) into .venv and kinesalite
# into .cache/ (both once), then runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/.ci/bootstrap.sh"
bootstrap_python "[dev,gcp]"
bootstrap_kinesalite
cd "$ROOT"
"$PY" -m ruff check .
exec "$PY" -m pytest -q "$@"
