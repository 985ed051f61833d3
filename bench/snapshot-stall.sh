#!/usr/bin/env bash
# Write latency while the whole store is walked: a snapshot or a digest of ~50M marks,
# against the same write load with nothing else running, in one run.
# Usage: bench/snapshot-stall.sh [marks] [seconds-per-phase] [small|large]
#   (run from the repository root)
# Needs wrk (apt-get install wrk). Starts bitark on a fresh temp data dir (fsync: batch,
# no automatic snapshots) and loads about `marks` read marks of random ids below 4e9:
# `small` (default) in 100-id batches over 2.5M users (tens of marks each), `large` in
# 10,000-id batches over 2,000 users (tens of thousands each). Then it runs single durable
# marks (64 connections) three times:
#   idle      nothing else running
#   digest    GET /admin/digest back to back (walks every mark, no disk)
#   snapshot  POST /admin/snapshot back to back for the whole phase
# and prints requests/s and p50/p99/p99.9/max latency of the writes in each phase.
set -euo pipefail
cd "$(dirname "$0")/.."
marks=${1:-50000000}
secs=${2:-20}
shape=${3:-small}
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
if [ "$shape" = large ]; then
  users=2000 batch=10000 load="-t1 -c2 -d2s"
else
  users=2500000 batch=100 load="-t2 -c64 -d10s"
fi
while [ "$(stored | cut -d. -f1)" -lt "$marks" ]; do
  # shellcheck disable=SC2086
  BENCH_USERS=$users BENCH_BATCH=$batch wrk $load -s bench/wrk/batch-mark.lua "$url" >/dev/null
done
echo "loaded $(stored) marks ($shape sets)"
export BENCH_USERS=2500000
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
phase digest "$url/admin/digest"
phase snapshot "-X POST $url/admin/snapshot"
curl -s "$url/actuator/prometheus" | grep -E '^bitark_(store_marks|store_users|snapshot_size_bytes|snapshots_total)'
