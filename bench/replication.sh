#!/usr/bin/env bash
# Replication benchmark of a release build on loopback (needs wrk: apt-get install wrk).
# Usage: bench/replication.sh [seconds-per-phase] [catch-up-records]   (from the repository root)
#   1. durable single marks on a master alone, with the master's CPU time per write;
#   2. on a fresh master with two stage-3 slaves: replication lag (commit on the master to
#      the slave's acknowledgement) under a paced load of about half the master's
#      capacity, then durable single marks at full load (and CPU time per write);
#   3. catch-up rate of a slave stopped (SIGSTOP) while the master logs N records.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
catchup=${2:-1000000}
base=${BENCH_PORT:-18800}
source bench/cluster.sh
# Replicating nodes refuse to start without a cluster token.
export BITARK_SECURITY__CLUSTER_TOKEN=bench-cluster-token
stop_all() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null; done; wait 2>/dev/null || true; pids=(); }
applied() { curl -s "http://127.0.0.1:$1/admin/digest" | python3 -c 'import json,sys; print(json.load(sys.stdin)["appliedLsn"])'; }
mark() { wrk -t2 -c64 -d"${secs}s" --latency -s bench/wrk/mark.lua "http://127.0.0.1:$1" | grep '^RESULT'; }
# CPU time (user + system, from /proc) of process $1 in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# `mark` against port $1, adding the CPU time process $2 spent per acknowledged write.
mark_cpu() {
  local before after result
  before=$(cpu_ticks "$2")
  result=$(mark "$1")
  after=$(cpu_ticks "$2")
  local requests=${result#*requests=}; requests=${requests%% *}
  echo "$result master_cpu_us_per_write=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')"
}

echo "== durable single marks, master alone"
start solo $base
echo "alone $(mark_cpu $base "${pids[0]}")"
stop_all

echo "== master with two slaves (stage ${BENCH_STAGE:-3})"
M=$((base + 1)); S1=$((base + 2)); S2=$((base + 3))
start master $M BITARK_REPLICATION__STAGE=${BENCH_STAGE:-3}
start slave-1 $S1 BITARK_REPLICATION__STAGE=${BENCH_STAGE:-3} BITARK_NODE__ROLE=slave BITARK_REPLICATION__MASTER_URL=http://127.0.0.1:$M BITARK_REPLICATION__REGISTER_INTERVAL=200ms
start slave-2 $S2 BITARK_REPLICATION__STAGE=${BENCH_STAGE:-3} BITARK_NODE__ROLE=slave BITARK_REPLICATION__MASTER_URL=http://127.0.0.1:$M BITARK_REPLICATION__REGISTER_INTERVAL=200ms
until curl -s "http://127.0.0.1:$M/actuator/replication" | grep -q '"slave-2"'; do sleep 0.1; done
echo "== replication lag under a paced load"
curl -s "http://127.0.0.1:$M/actuator/prometheus" > "$work/before.txt"
echo "paced $(BENCH_DELAY_MS=${BENCH_DELAY_MS:-2} wrk -t2 -c64 -d"${secs}s" --latency -s bench/wrk/mark-paced.lua "http://127.0.0.1:$M" | grep '^RESULT')"
curl -s "http://127.0.0.1:$M/actuator/prometheus" > "$work/after.txt"
python3 - "$work/before.txt" "$work/after.txt" <<'PY'
import re, sys
def buckets(path):
    out = {}
    for line in open(path):
        m = re.match(r'bitark_replication_lag_at_ack_seconds_bucket\{slave="([^"]+)",le="([^"]+)"\} (\d+)', line)
        if m:
            out[(m.group(1), m.group(2))] = int(m.group(3))
    return out
before, after = buckets(sys.argv[1]), buckets(sys.argv[2])
for slave in sorted({s for s, _ in after}):
    rows = sorted(((float('inf') if le == '+Inf' else float(le)), after[(slave, le)] - before.get((slave, le), 0)) for s, le in after if s == slave)
    total = rows[-1][1]
    def q(p):
        for le, n in rows:
            if n >= p * total: return le
    print(f"lag {slave}: records={total} p50<={q(0.5)*1000:.2f}ms p99<={q(0.99)*1000:.2f}ms (bucket upper bounds)")
PY

echo "== durable single marks with the two slaves attached"
sent() { curl -s "http://127.0.0.1:$M/actuator/prometheus" | awk -v f="$1" '$1 ~ "^bitark_replication_sent_"f"_total" { n += $2 } END { print n + 0 }'; }
batches0=$(sent batches); records0=$(sent records)
echo "with-2-slaves $(mark_cpu $M "${pids[0]}")"
echo "records per send: $(awk -v r=$(( $(sent records) - records0 )) -v b=$(( $(sent batches) - batches0 )) 'BEGIN { printf "%.1f", b ? r / b : 0 }') (batch-linger ${BITARK_REPLICATION__BATCH_LINGER:-as configured})"
until [ "$(applied $S1)" = "$(applied $M)" ] && [ "$(applied $S2)" = "$(applied $M)" ]; do sleep 0.2; done

echo "== catch-up of a slave stopped for $catchup records"
kill -STOP "${pids[1]}"
start_lsn=$(applied $M)
target=$((start_lsn + catchup))
wrk -t2 -c64 -d600s -s bench/wrk/mark.lua "http://127.0.0.1:$M" >/dev/null &
load=$!
while [ "$(applied $M)" -lt "$target" ]; do sleep 0.5; done
kill $load; wait $load 2>/dev/null || true
end_lsn=$(applied $M)
t0=$(date +%s.%N)
kill -CONT "${pids[1]}"
until [ "$(applied $S1)" = "$end_lsn" ]; do sleep 0.05; done
t1=$(date +%s.%N)
python3 -c "n=$end_lsn-$start_lsn; t=$t1-$t0; print(f'catch-up: {n} records in {t:.2f} s = {n/t:,.0f} records/s')"
curl -s "http://127.0.0.1:$M/actuator/prometheus" | grep -E '^bitark_replication_caught_up_records_total'
