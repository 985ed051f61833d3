#!/usr/bin/env bash
# Backup and restore of a release build: a node of USERS x MARKS random marks (snapshot)
# plus a TAIL of single-mark records after it, backed up online to a local directory
# and to an S3 server on loopback (moto), then restored and started (replaying the tail).
# Usage: bench/backup.sh [users] [marks-per-user] [tail-records]   (from the repository root)
# Needs moto_server (pip install 'moto[server]'), or MOTO_SERVER_BIN pointing at it.
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-2500000}
per_user=${2:-20}
tail_records=${3:-1000000}
port=${BENCH_PORT:-18655}
moto=${MOTO_SERVER_BIN:-moto_server}
command -v "$moto" >/dev/null || { echo "moto_server is required: pip install 'moto[server]'" >&2; exit 1; }
cargo build --release --quiet --bin bitark -p bitark-adapter
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
wait_ready() {
  for _ in $(seq 1 6000); do
    curl -sf "http://127.0.0.1:$1/actuator/health/readiness" >/dev/null && return 0
    sleep 0.05
  done
  echo "node on port $1 not ready" >&2
  exit 1
}
now() { date +%s.%N; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f MB/s", b / s / 1e6 }'; }

echo "building the data directory: $users users x $per_user marks, then $tail_records tail records"
RECOVERY_DATA_DIR="$work/data" RECOVERY_BUILD_ONLY=1 cargo run --release --quiet -p bitark-engine --example recovery -- \
  "$users" "$per_user" "$tail_records"
BITARK_LOG=warn ./target/release/bitark --port "$port" --data-dir "$work/data" &
pids+=($!)
wait_ready "$port"
source_digest=$(curl -s "http://127.0.0.1:$port/admin/digest")

"$moto" -H 127.0.0.1 -p $((port + 1)) >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do curl -s "http://127.0.0.1:$((port + 1))" >/dev/null && break; sleep 0.05; done
curl -s -X PUT "http://127.0.0.1:$((port + 1))/bench" >/dev/null
export AWS_ENDPOINT_URL="http://127.0.0.1:$((port + 1))" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench \
  AWS_SECRET_ACCESS_KEY=bench AWS_ALLOW_HTTP=true

t0=$(now)
./target/release/bitark backup --from "http://127.0.0.1:$port" --to "$work/local" >/dev/null
t1=$(now)
bytes=$(du -sb "$work/local" | cut -f1)
local_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
echo "backup to a local directory: $bytes bytes in ${local_s} s: $(rate "$bytes" "$local_s")"

t0=$(now)
./target/release/bitark backup --from "http://127.0.0.1:$port" --to "s3://bench/cluster" >/dev/null
t1=$(now)
s3_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
echo "backup to S3 (moto on loopback): $bytes bytes in ${s3_s} s: $(rate "$bytes" "$s3_s")"

t0=$(now)
./target/release/bitark restore --from "$work/local" --data-dir "$work/restored" | tail -1
t1=$(now)
echo "restore (checks every file, writes snapshot and log): $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
t0=$(now)
BITARK_LOG=warn ./target/release/bitark --port $((port + 2)) --data-dir "$work/restored" &
pids+=($!)
wait_ready $((port + 2))
t1=$(now)
echo "start on the restored directory (snapshot + $tail_records records replayed): $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
restored_digest=$(curl -s "http://127.0.0.1:$((port + 2))/admin/digest")
[[ "$source_digest" == "$restored_digest" ]] && echo "digests equal" || { echo "DIGESTS DIFFER: $source_digest vs $restored_digest"; exit 1; }
