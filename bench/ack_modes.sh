#!/usr/bin/env bash
# Acknowledgement modes (stage 7) side by side in one run, on a release build on
# loopback (needs wrk: apt-get install wrk). A master with two stage-7 slaves takes
# durable single marks with ?ack=async, ?ack=semi (min-acks 1) and ?ack=all, the three
# interleaved, for several rounds; each line is one phase: throughput, p50, p99.
# Usage: bench/ack_modes.sh [seconds-per-phase] [rounds]   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-2}
base=${BENCH_PORT:-18900}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin bitark
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export BITARK_SECURITY__CLUSTER_TOKEN=bench-cluster-token BITARK_REPLICATION__STAGE=7

start() { # name port env...
  local name=$1 port=$2; shift 2
  env BITARK_LOG=warn BITARK_NODE__ID="$name" "$@" ./target/release/bitark --port "$port" --data-dir "$work/$name" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/actuator/health/readiness" >/dev/null && return; sleep 0.1; done
  echo "$name did not start" >&2; cat "$work/$name.log" >&2; exit 1
}
M=$base; S1=$((base + 1)); S2=$((base + 2))
start master $M
start slave-1 $S1 BITARK_NODE__ROLE=slave BITARK_REPLICATION__MASTER_URL=http://127.0.0.1:$M
start slave-2 $S2 BITARK_NODE__ROLE=slave BITARK_REPLICATION__MASTER_URL=http://127.0.0.1:$M
until [ "$(curl -s "http://127.0.0.1:$M/actuator/replication" | grep -o '"state":"ALIVE"' | wc -l)" = 2 ]; do sleep 0.1; done
for round in $(seq 1 "$rounds"); do
  for ack in async semi all; do
    result=$(BENCH_QUERY="?ack=$ack" wrk -t2 -c64 -d"${secs}s" --latency -s bench/wrk/mark.lua "http://127.0.0.1:$M" | grep '^RESULT')
    echo "round $round ack=$ack $result"
  done
done
curl -s "http://127.0.0.1:$M/actuator/prometheus" | grep -E '^bitark_replication_ack_timeouts_total' || echo "no ack timeouts"
