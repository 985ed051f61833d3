#!/usr/bin/env bash
# Write latency while a cluster changes stage live, against the same cluster steady, in
# one run (needs wrk: apt-get install wrk). A master and two slaves (release builds on
# loopback) take durable single marks at stage 7; in the "changing" phase `bitark
# rollout` moves the cluster 7 -> 3 -> 7 over and over for the whole phase. Phases
# alternate for several rounds; each line: throughput, p50, p99, and the rollouts done.
# Usage: bench/rollout.sh [seconds-per-phase] [rounds]   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-2}
base=${BENCH_PORT:-18950}
source bench/cluster.sh
export BITARK_SECURITY__CLUSTER_TOKEN=bench-cluster-token BITARK_REPLICATION__STAGE=7
M=$base; S1=$((base + 1)); S2=$((base + 2))
start master $M
start slave-1 $S1 BITARK_NODE__ROLE=slave BITARK_REPLICATION__MASTER_URL=http://127.0.0.1:$M
start slave-2 $S2 BITARK_NODE__ROLE=slave BITARK_REPLICATION__MASTER_URL=http://127.0.0.1:$M
until [ "$(curl -s "http://127.0.0.1:$M/actuator/replication" | grep -o '"state":"ALIVE"' | wc -l)" = 2 ]; do sleep 0.1; done
roll() { ./target/release/bitark rollout --cluster "http://127.0.0.1:$M" --to-stage "$1" --step-pause 0s >/dev/null; }
for round in $(seq 1 "$rounds"); do
  result=$(wrk -t2 -c64 -d"${secs}s" --latency -s bench/wrk/mark.lua "http://127.0.0.1:$M" | grep '^RESULT')
  echo "round $round steady   $result"
  ( end=$((SECONDS + secs)); n=0; while ((SECONDS < end)); do roll 3; roll 7; n=$((n + 1)); done; echo "$n" >"$work/rollouts" ) &
  rolling=$!
  result=$(wrk -t2 -c64 -d"${secs}s" --latency -s bench/wrk/mark.lua "http://127.0.0.1:$M" | grep '^RESULT')
  wait "$rolling"
  echo "round $round changing $result rollouts(7->3->7)=$(cat "$work/rollouts")"
done
