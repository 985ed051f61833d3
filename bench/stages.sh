#!/usr/bin/env bash
# Benchmarks of replication stages 4-6 on a release build, all nodes on this machine.
# Usage: bench/stages.sh [marks] [seconds-per-write-phase] [detection-rounds]
#   (run from the repository root; needs wrk: apt-get install wrk)
#   1. failure detection: a stage 4 slave is frozen (SIGSTOP) and the master polled every
#      10 ms until it shows the slave DEAD, with the defaults (heartbeat-interval 1s,
#      dead-after 3s) and with heartbeat-interval 250ms, dead-after 1s;
#   2. full sync: a stage 6 master is loaded with about `marks` marks in 100-id batches,
#      snapshotted (its early WAL is purged), and a new empty slave joins: time from its
#      start to equal applied LSNs, the snapshot's MB/s on the wire, against a local
#      recovery of the master's own data directory;
#   3. durable single marks on that master without and with a full sync being served
#      (a fresh empty slave full-syncs again and again for the whole phase), then with
#      the transfer capped at BENCH_CAP (default 50MiB) per second.
set -euo pipefail
cd "$(dirname "$0")/.."
marks=${1:-50000000}
secs=${2:-15}
rounds=${3:-5}
base=${BENCH_PORT:-18900}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin bitark
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
export BITARK_SECURITY__CLUSTER_TOKEN=bench-cluster-token

# start NAME PORT ENV... : starts a node in the background; its pid is last in pids.
start() {
  local name=$1 port=$2; shift 2
  env BITARK_LOG=${BENCH_LOG:-warn} BITARK_NODE__ID="$name" "$@" \
    ./target/release/bitark --port "$port" --data-dir "$work/$name" >>"$work/$name.log" 2>&1 &
  pids+=($!)
}
wait_ready() { # port
  for _ in $(seq 1 3000); do curl -sf "http://127.0.0.1:$1/actuator/health/readiness" >/dev/null && return; sleep 0.05; done
  echo "node on port $1 did not become ready" >&2; exit 1
}
stop_all() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null; done; wait 2>/dev/null || true; pids=(); }
# Polling is kept cheap (curl and grep, no interpreter): everything shares two cores.
applied() { curl -s "http://127.0.0.1:$1/actuator/info" | grep -o '"appliedLsn":[0-9]*' | cut -d: -f2; }
slave_state() { # master-port slave-id
  curl -s "http://127.0.0.1:$1/actuator/replication" | grep -o "\"id\":\"$2\",[^}]*" | grep -o '"state":"[A-Z_]*"' | cut -d'"' -f4
}
# log_seconds FILE PATTERN: seconds since the epoch of the first line of FILE matching PATTERN.
log_seconds() { grep -m1 -- "$2" "$1" | cut -c1-26 | xargs -I{} date -d {} +%s.%N; }
now() { date +%s.%N; }
mark() { wrk -t2 -c64 -d"${secs}s" --latency -s bench/wrk/mark.lua "http://127.0.0.1:$1" | grep '^RESULT'; }

detect() { # label env...
  local label=$1; shift
  local M=$((base + 1)) S=$((base + 2))
  rm -rf "$work/dm" "$work/ds"
  start dm $M BITARK_REPLICATION__STAGE=4 "$@"
  wait_ready $M
  start ds $S BITARK_REPLICATION__STAGE=4 BITARK_NODE__ROLE=slave BITARK_REPLICATION__MASTER_URL=http://127.0.0.1:$M "$@"
  local slave=${pids[-1]}
  wait_ready $S
  local times=()
  for _ in $(seq 1 "$rounds"); do
    until [ "$(slave_state $M ds)" = ALIVE ]; do sleep 0.05; done
    # A beat or two in, so the freeze falls anywhere in the heartbeat cycle.
    sleep "0.$((RANDOM % 10))"
    kill -STOP "$slave"
    local t0; t0=$(now)
    until [ "$(slave_state $M ds)" = DEAD ]; do sleep 0.01; done
    times+=("$(python3 -c "print(f'{$(now) - $t0:.2f}')")")
    kill -CONT "$slave"
  done
  echo "detection $label: ${times[*]} s (SIGSTOP to DEAD at the master)"
  stop_all
}

if [ "$rounds" -gt 0 ]; then
  echo "== 1. failure detection, $rounds rounds each"
  detect "defaults (1s/3s)"
  detect "250ms/1s" BITARK_REPLICATION__HEARTBEAT_INTERVAL=250ms BITARK_REPLICATION__DEAD_AFTER=1s
fi

echo "== 2. full sync of about $marks marks to a new empty slave"
M=$((base + 3))
start master $M BITARK_REPLICATION__STAGE=6 BITARK_SNAPSHOT__EVERY_RECORDS=0 BITARK_SNAPSHOT__EVERY=0s
master=${pids[-1]}
wait_ready $M
stored() { curl -s "http://127.0.0.1:$M/actuator/prometheus" | awk '/^bitark_store_marks /{print $2}' | cut -d. -f1; }
while [ "$(stored)" -lt "$marks" ]; do
  BENCH_USERS=2500000 BENCH_BATCH=100 wrk -t2 -c64 -d"$(( marks >= 20000000 ? 10 : 2 ))s" -s bench/wrk/batch-mark.lua "http://127.0.0.1:$M" >/dev/null
done
curl -sf -X POST "http://127.0.0.1:$M/admin/snapshot" >/dev/null
snap=$(ls -1 "$work/master/snapshots/" | tail -1)
size=$(stat -c %s "$work/master/snapshots/$snap")
first_wal=$(ls -1 "$work/master/wal/" | grep '\.wal$' | head -1)
echo "master: $(stored) marks, applied LSN $(applied $M), snapshot $snap of $((size / 1048576)) MiB, WAL from $first_wal"

full_sync() { # name port: an empty slave joins; answers seconds from its first log line
  # to the master showing it ALIVE after the install, taken from the slave's own log.
  local name=$1 port=$2
  rm -rf "${work:?}/$name"
  start "$name" "$port" BITARK_LOG=info BITARK_REPLICATION__STAGE=6 BITARK_NODE__ROLE=slave \
    BITARK_REPLICATION__MASTER_URL=http://127.0.0.1:$M BITARK_REPLICATION__REGISTER_INTERVAL=200ms
  until grep -q "full-sync snapshot installed" "$work/$name.log" 2>/dev/null &&
    [ "$(applied $port)" -ge "$(applied $M)" ] && [ "$(slave_state $M "$name")" = ALIVE ]; do
    sleep 0.5
  done
  local log="$work/$name.log" t0 t1
  t0=$(log_seconds "$log" "open-files limit")
  t1=$(sed -n '/full-sync snapshot installed/,$p' "$log" | grep -m1 'state=Some("ALIVE")' | cut -c1-26 | xargs -I{} date -d {} +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.2f}')"
}
S=$((base + 4))
total=$(full_sync slave-1 $S)
pids+=("$(pgrep -f -- "--data-dir $work/slave-1" | head -1)")
wire=$(grep -o 'mib_per_s="\?[0-9.]*' "$work/slave-1.log" | tail -1 | grep -o '[0-9.]*$')
echo "full sync: empty slave to caught up in $total s; snapshot download $wire MiB/s"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'

# Local recovery of the same data: the master restarts on its own data directory.
kill "$master"; wait "$master" 2>/dev/null || true
pids=()
t0=$(now)
start master $M BITARK_REPLICATION__STAGE=6 BITARK_SNAPSHOT__EVERY_RECORDS=0 BITARK_SNAPSHOT__EVERY=0s
master=${pids[-1]}
wait_ready $M
local_s=$(python3 -c "print(f'{$(now) - $t0:.2f}')")
recovery_ms=$(curl -s "http://127.0.0.1:$M/actuator/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["recovery"]["durationMs"])')
echo "local recovery: process start to ready $local_s s (recovery itself $recovery_ms ms); full sync / local = $(python3 -c "print(f'{$total / $local_s:.2f}')")"

echo "== 3. durable single marks on the master, without and with a full sync being served"
S2=$((base + 5))
# during LABEL: single marks for the phase while a fresh empty slave full-syncs again and again.
during() {
  local stop_flag="$work/stop-syncing"
  rm -f "$stop_flag"
  (
    n=0
    while [ ! -e "$stop_flag" ]; do
      rm -rf "${work:?}/slave-2"
      env BITARK_LOG=warn BITARK_NODE__ID=slave-2 BITARK_REPLICATION__STAGE=6 BITARK_NODE__ROLE=slave \
        BITARK_REPLICATION__MASTER_URL=http://127.0.0.1:$M BITARK_REPLICATION__REGISTER_INTERVAL=200ms \
        ./target/release/bitark --port $S2 --data-dir "$work/slave-2" >>"$work/slave-2.log" 2>&1 &
      p=$!
      until [ -e "$stop_flag" ] ||
        curl -s "http://127.0.0.1:$S2/actuator/prometheus" 2>/dev/null | grep -q '^bitark_full_syncs_total{outcome="completed"} 1'; do
        sleep 0.2
      done
      kill $p; wait $p 2>/dev/null || true
      n=$((n + 1))
    done
    echo "$n" > "$work/syncs"
  ) &
  local syncer=$!
  echo "$1 $(mark $M)"
  touch "$stop_flag"
  wait $syncer
  echo "  full syncs served during the phase: $(( $(cat "$work/syncs") - 1 )) complete, one cut short"
}
echo "no-sync $(mark $M)"
during during-sync
# The same with the transfer capped, as an operator would on a busy master.
kill "$master"; wait "$master" 2>/dev/null || true
start master $M BITARK_REPLICATION__STAGE=6 BITARK_SNAPSHOT__EVERY_RECORDS=0 BITARK_SNAPSHOT__EVERY=0s \
  BITARK_REPLICATION__FULL_SYNC__MAX_BYTES_PER_SECOND=${BENCH_CAP:-50MiB}
master=${pids[-1]}
wait_ready $M
during "during-sync-capped-${BENCH_CAP:-50MiB}/s"
