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
source bench/cluster.sh
export BITARK_SECURITY__CLUSTER_TOKEN=bench-cluster-token BITARK_REPLICATION__STAGE=7
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
