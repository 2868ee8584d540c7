#!/usr/bin/env bash
# Dependency audit (pip-audit against the PyPI advisory data). Fails on a known vulnerability.
# Where the advisory service cannot be reached (package registries only, as on the build machines),
# pip-audit reports every package as "not found"; that is printed as a skipped audit, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(.venv/bin/pip-audit --skip-editable --progress-spinner off --format json 2>/dev/null)
summary=$(printf '%s' "$out" | .venv/bin/python -m streams.ops.audit)
rc=$?
echo "pip-audit: $summary"
case $rc in
  0) exit 0 ;;
  3) echo "pip-audit: SKIPPED, the advisory service is unreachable from this machine (no package could be looked up)"; exit 0 ;;
  *) exit 1 ;;
esac
