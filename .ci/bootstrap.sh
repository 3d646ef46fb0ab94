# Shared set-up of run_local.sh, run_tests.sh and .ci/run (sourced, not executed).
# Creates the project virtualenv and installs the project into it, once per change of
# setup.py; installs kinesalite (pinned, from the npm registry) into .cache/; fetches the
# Flink job server's jars (Maven) and builds Prism (Go) into .cache/ for the engine tests,
# and KCL's deaggregation jars (Maven) for the tests that read streams as KCL does.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
export KINESALITE_HOME="${KINESALITE_HOME:-$ROOT/.cache/kinesalite}"

bootstrap_python() {
  # $1: pip extras, e.g. "" or "[dev,gcp]"
  local extras="${1:-}"
  if [ ! -x "$PY" ]; then
    echo "==> creating virtualenv $VENV"
    python3 -m venv "$VENV"
  fi
  local base
  base="$VENV/.installed-$(sha256sum < "$ROOT/setup.py" | cut -c1-16)"
  local stamp="$base${extras//[^a-z]/}"
  local installed=""
  [ -f "$stamp" ] && installed=1
  # An install with extras (e.g. the tests' [dev,gcp]) also satisfies a plain one.
  if [ -z "$extras" ] && compgen -G "${base}?*" > /dev/null; then installed=1; fi
  if [ -z "$installed" ]; then
    echo "==> installing the project$extras into $VENV (first run takes a few minutes)"
    "$PY" -m pip install -q --upgrade pip >/dev/null
    "$PY" -m pip install -q -e "$ROOT$extras"
    touch "$stamp"
  fi
}

bootstrap_kinesalite() {
  echo "==> installing kinesalite into $KINESALITE_HOME (if needed)"
  "$PY" -m tools.kinesalite install
}

bootstrap_engines() {
  # Java 17 with Maven, and Go, come with the machine; the jars and the binary are
  # fetched and built once into .cache/ (about 1 and 2 minutes cold).
  echo "==> fetching the Flink job server's jars and building Prism into $ROOT/.cache (if needed)"
  (cd "$ROOT" && "$PY" -m tools.flink fetch >/dev/null && "$PY" -m tools.prism >/dev/null)
}

bootstrap_kcl() {
  # The real KCL 2.x deaggregation (AggregatorUtil) that tests read streams back with:
  # about 3 MB of jars fetched with Maven and one Java file compiled, once, into
  # .cache/kcl (about 10 s cold; silent when cached).
  (cd "$ROOT" && "$PY" -m tools.kcl fetch)
}

bootstrap_chromium() {
  # Headless Chromium renders the --report page in a test (a Debian package).
  if command -v chromium >/dev/null 2>&1; then
    return
  fi
  echo "==> installing chromium (Debian package) for the report page test"
  local sudo=""
  if [ "$(id -u)" != "0" ]; then
    sudo="sudo"
  fi
  $sudo apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || {
    $sudo apt-get update >/dev/null 2>&1
    $sudo apt-get install -y --no-install-recommends chromium >/dev/null
  }
}
