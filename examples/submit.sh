#!/usr/bin/env bash
# Submits examples/001_add_user_preferences.sql with its rollback to a running daemon.
# Usage: SLUICE_TOKEN=<token> examples/submit.sh [http://127.0.0.1:8080]
set -euo pipefail
here=$(dirname "$0")
server=${1:-http://127.0.0.1:8080}
python3 - "$here" <<'PY' | curl -sS -H "Authorization: Bearer ${SLUICE_TOKEN:?set SLUICE_TOKEN}" \
  -H 'content-type: application/json' --data-binary @- "$server/api/v1/migrations"
import json, sys, pathlib
here = pathlib.Path(sys.argv[1])
print(json.dumps({
    "kind": "schema_change",
    "description": "Add user preferences table",
    "risk": "low",
    "ticket": "PROJ-123",
    "estimated_duration": "5m",
    "up_sql": (here / "001_add_user_preferences.sql").read_text(),
    "down_sql": (here / "001_add_user_preferences_rollback.sql").read_text(),
}))
PY
echo
