#!/usr/bin/env bash
# Write latency while the whole store is walked: a snapshot or a digest of ~50M marks,
# against the same write load with nothing else running, in one run.
# Usage: bench/snapshot-stall.sh [marks] [seconds-per-phase]   (run from the repository root)
# Needs wrk (apt-get install wrk). Starts bitark on a fresh temp data dir (fsync: batch,
# no automatic snapshots), loads `marks` read marks with 100-id batch writes over
# 2.5M users, then runs single durable marks (64 connections) three times:
#   idle      nothing else running
#   snapshot  POST /admin/snapshot back to back for the whole phase
#   digest    GET /admin/digest back to back (walks every mark, no disk)
# and prints requests/s and p50/p99/p99.9/max latency of the writes in each phase.
set -euo pipefail
cd "$(dirname "$0")/.."
marks=${1:-50000000}
secs=${2:-20}
port=${BENCH_PORT:-18655}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin bitark
data=$(mktemp -d)
BITARK_LOG=warn BITARK_SNAPSHOT__EVERY_RECORDS=0 BITARK_SNAPSHOT__EVERY=0s \
  ./target/release/bitark --port "$port" --data-dir "$data" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
url="http://127.0.0.1:$port"
for _ in $(seq 1 300); do curl -sf "$url/actuator/health/readiness" >/dev/null && break; sleep 0.1; done
stored() { curl -s "$url/actuator/prometheus" | awk '/^bitark_store_marks /{print $2}'; }
export BENCH_USERS=2500000
while [ "$(stored | cut -d. -f1)" -lt "$marks" ]; do
  wrk -t2 -c64 -d10s -s bench/wrk/batch-mark.lua "$url" >/dev/null
done
echo "loaded $(stored) marks"
# One snapshot first, so the phases below compare steady states.
curl -s -X POST "$url/admin/snapshot" >/dev/null
phase() {
  local name=$1 load=$2
  local walker=""
  if [ -n "$load" ]; then
    (while true; do curl -s $load >/dev/null; done) &
    walker=$!
  fi
  local line
  line=$(wrk -t2 -c64 -d"${secs}s" --latency -s bench/wrk/mark.lua "$url" | grep '^RESULT')
  if [ -n "$walker" ]; then kill "$walker"; wait "$walker" 2>/dev/null || true; fi
  echo "$name $line"
}
phase idle ""
phase snapshot "-X POST $url/admin/snapshot"
phase digest "$url/admin/digest"
curl -s "$url/actuator/prometheus" | grep -E '^bitark_(store_marks|store_users|snapshot_size_bytes|snapshots_total)'
