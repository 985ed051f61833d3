#!/usr/bin/env bash
# HTTP load benchmark of a release build on loopback with wrk (apt-get install wrk).
# Usage: bench/http.sh [seconds-per-scenario]   (run from the repository root)
# Starts bitark on a fresh temp data dir with the default fsync policy (batch), then runs
# batch marks (which also loads data), is-read and single durable marks, each with
# 64 connections and 2 threads, and prints requests/s and p50/p99/p99.9 latency.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
port=${BENCH_PORT:-18555}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin bitark --example minimal
data=$(mktemp -d)
BITARK_LOG=warn ./target/release/bitark --port "$port" --data-dir "$data" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$port/actuator/health/readiness" >/dev/null && break
  sleep 0.1
done
run() {
  local name=$1 script=$2
  local line
  line=$(wrk -t2 -c64 -d"${secs}s" --latency -s "bench/wrk/$script" "http://127.0.0.1:$port" | grep '^RESULT')
  echo "$name $line"
}
# The reference: a minimal axum handler on the same machine, same client settings.
./target/release/examples/minimal $((port + 1)) &
minimal=$!
for _ in $(seq 1 100); do curl -s "http://127.0.0.1:$((port + 1))/api/v1/users/1/reads/1" >/dev/null && break; sleep 0.1; done
echo "minimal-get $(wrk -t2 -c64 -d"${secs}s" --latency -s bench/wrk/is-read.lua "http://127.0.0.1:$((port + 1))" | grep '^RESULT')"
echo "minimal-put $(wrk -t2 -c64 -d"${secs}s" --latency -s bench/wrk/mark.lua "http://127.0.0.1:$((port + 1))" | grep '^RESULT')"
kill $minimal; wait $minimal 2>/dev/null || true
run batch-mark batch-mark.lua
run is-read is-read.lua
run mark mark.lua
curl -s "http://127.0.0.1:$port/actuator/prometheus" | grep -E '^bitark_(store_marks|store_users|lsn_applied) '
