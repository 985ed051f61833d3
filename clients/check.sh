#!/usr/bin/env bash
# Proves the checked-in openapi/openapi.json against a real node:
#  1. generates a Python client (openapi-python-client) and a TypeScript client
#     (@hey-api/openapi-ts, compiled with tsc --strict) in a temporary directory, and runs
#     roundtrip.py and roundtrip.ts through them;
#  2. runs schemathesis (server errors, status codes, content types, response schemas)
#     with a fixed seed and a bounded number of examples.
# Generated code never enters the repository. Needs python3 with venv, node and npm.
# Usage: clients/check.sh [path to the bitark binary, default target/debug/bitark]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/debug/bitark}
work=$(mktemp -d)
pid=
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Only this script's settings apply to the node, not the caller's BITARK_* variables.
for var in $(compgen -e); do
  [[ $var == BITARK_* ]] && unset "$var"
done
# A node on a free port; a short minLsn wait so lsn_not_reached answers quickly.
BITARK_READS__MIN_LSN_WAIT=200ms "$bin" --data-dir "$work/data" --port 0 2>"$work/node.log" &
pid=$!
url=
for _ in $(seq 1 300); do
  url=$(grep -o 'listening on http://[0-9.:]*' "$work/node.log" | head -1 | sed 's/listening on //') || true
  [[ -n $url ]] && python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
    "$url/actuator/health/readiness" 2>/dev/null && break
  sleep 0.1
done
[[ -n $url ]] || { cat "$work/node.log"; echo "bitark did not start" >&2; exit 1; }
echo "node at $url"

echo "== Python client"
python3 -m venv "$work/py"
"$work/py/bin/pip" install -q -r "$root/clients/python/requirements.txt"
"$work/py/bin/openapi-python-client" generate --path "$root/openapi/openapi.json" --output-path "$work/py-client" \
  >"$work/generate.log" 2>&1
# Every schema and response must make it into the client (a missing ruff is only noise).
if grep -E "WARNING|Unable to process|Cannot parse" "$work/generate.log"; then
  cat "$work/generate.log"
  echo "openapi-python-client left parts of the document out" >&2
  exit 1
fi
"$work/py/bin/pip" install -q "$work/py-client"
"$work/py/bin/python" "$root/clients/python/roundtrip.py" "$url"

echo "== TypeScript client"
mkdir "$work/ts"
cp "$root/clients/typescript/"{package.json,tsconfig.json,roundtrip.ts} "$work/ts/"
(
  cd "$work/ts"
  npm install --silent --no-fund --no-audit
  npx openapi-ts -i "$root/openapi/openapi.json" -o gen -c @hey-api/client-fetch >/dev/null
  npx tsc -p .
  node out/roundtrip.js "$url"
)

echo "== schemathesis"
(
  cd "$root/clients"
  "$work/py/bin/schemathesis" --config-file "$root/clients/schemathesis.toml" run "$root/openapi/openapi.json" \
    --url "$url" --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --seed 1 --max-examples 25 --no-color
)
echo "clients/check.sh: every check passed"
