#!/bin/sh
# Turn mounted secrets into the AIFLEET_* environment that aifleet reads, then run the command.
#
#  * /run/secrets/AIFLEET_<NAME>   one value per file (e.g. AIFLEET_CLICKHOUSE__PASSWORD);
#  * /run/secrets/*.env            KEY=VALUE lines (e.g. the provider keys file), AIFLEET_* names only.
#
# Empty values are skipped (a key that is not configured stays unset). Values are never printed.
set -eu
SECRETS_DIR="${AIFLEET_SECRETS_DIR:-/run/secrets}"

valid_name() {
  case "$1" in
    AIFLEET_*) ;;
    *) return 1 ;;
  esac
  case "$1" in
    *[!A-Z0-9_]*) return 1 ;;
  esac
  return 0
}

if [ -d "$SECRETS_DIR" ]; then
  for f in "$SECRETS_DIR"/AIFLEET_*; do
    [ -f "$f" ] || continue
    name=$(basename "$f")
    valid_name "$name" || continue
    value=$(cat "$f")
    [ -n "$value" ] || continue
    export "$name=$value"
  done
  for f in "$SECRETS_DIR"/*.env; do
    [ -f "$f" ] || continue
    while IFS= read -r line || [ -n "$line" ]; do
      case "$line" in
        ''|'#'*) continue ;;
      esac
      line=${line#export }
      name=${line%%=*}
      [ "$name" != "$line" ] || continue
      valid_name "$name" || continue
      value=${line#*=}
      case "$value" in
        \"*\") value=${value#\"}; value=${value%\"} ;;
        \'*\') value=${value#\'}; value=${value%\'} ;;
      esac
      [ -n "$value" ] || continue
      export "$name=$value"
    done < "$f"
  done
fi
exec "$@"
