#!/usr/bin/env bash
# bitark router against going to the master directly, a sharded master against an
# unsharded one, and the fanned-out read receipts, side by side in one run on loopback.
# Usage: bench/router.sh [seconds-per-run] [rounds]   (default 10 3; any directory)
#   CARGO_TARGET_DIR  where the release binary is built (default: target/ in the repo)
#   BENCH_PORT        first port to try (default 18700)
#
# Installs etcd-server and wrk when missing, builds `bitark` in release mode, then starts
# etcd, writes a shard map over groups a and b and gives group a the whole space (map
# version 2), and starts:
#   - group a's master and group b's master (cluster.group, wal.fsync: batch);
#   - an unsharded node with the same settings ("plain");
#   - a router in front of both groups.
# Each round (the order of the two sides alternates between rounds) runs with
# wrk -t2 -c64 (and -t1 -c1 for the unloaded latency):
#   is-read      GET of a random user among 200,000: router vs group a's master (with
#                the CPU per request of the router process and of the master);
#   is-read c1   the same with one connection: the latency a router adds to a request;
#   mark         a durable PUT of a random user: router vs group a's master;
#   cpu          is-read straight to group a's master vs the plain node: CPU time of
#                the node process per request (utime + stime from /proc), the cost of
#                the ownership check;
#   pinned       is-read c64 again with the router on a core of its own (taskset: the
#                master and wrk on core 0 on both sides, the router alone on core 1), as a
#                router deployed on machines of its own;
# then hands the upper half of the space to group b (map version 3) and runs
#   receipts     POST /api/v1/messages/7/readers for 100 users over both groups through
#                the router vs the same 100 users asked of the plain node;
# and last 20 `shards split` of the lowest range in a row, the time each took to commit.
# Any non-2xx answer in a wrk run stops the script. It prints one line per run and the
# median of each ratio over the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-10}
rounds=${2:-3}

name=router.sh
source "$root/bench/lib/sharded.sh"
ecport=$(free_port "${BENCH_PORT:-18700}")
epport=$(free_port $((ecport + 1)))
aport=$(free_port $((epport + 1)))
bport=$(free_port $((aport + 1)))
pport=$(free_port $((bport + 1)))
rport=$(free_port $((pport + 1)))
etcd_url=http://127.0.0.1:$ecport
a=http://127.0.0.1:$aport
plain=http://127.0.0.1:$pport
router=http://127.0.0.1:$rport

start_etcd "$ecport" "$epport"
shards() { (cd "$work" && "$bin" shards --etcd "$etcd_url" --prefix /bench "$@"); }
shards init --groups a,b >/dev/null
shards assign 0..end a >/dev/null

node() { # name port [group]: a node in $work/<name>, its pid in node_pid
  local name=$1 port=$2 group=${3:-}
  local vars=(BITARK_LOG=warn BITARK_NODE__ID="$name" BITARK_WAL__FSYNC=batch)
  [ -z "$group" ] || vars+=(BITARK_CLUSTER__GROUP="$group" BITARK_COORDINATION__ETCD__ENDPOINTS="[\"$etcd_url\"]"
    BITARK_COORDINATION__ETCD__PREFIX=/bench)
  mkdir -p "$work/$name"
  (cd "$work/$name" && exec env "${vars[@]}" "$bin" --port "$port" --data-dir "$work/$name/data" 2>"$work/$name.log") &
  node_pid=$!
  pids+=("$node_pid")
}
node a "$aport" a; a_pid=$node_pid
node b "$bport" b
node plain "$pport"; plain_pid=$node_pid
(cd "$work" && BITARK_LOG=warn exec "$bin" --port "$rport" router --etcd "$etcd_url" --prefix /bench 2>"$work/router.log") &
pids+=($!)
router_pid=$!
wait_for "group a" curl -sf -X PUT "$a/api/v1/users/1/reads/1"
wait_for plain curl -sf -X PUT "$plain/api/v1/users/1/reads/1"
wait_for router curl -sf "$router/api/v1/users/1/reads/1"
echo "etcd $etcd_url; group a $a, group b :$bport, plain $plain, router $router; ${secs}s per run, $rounds rounds"

cat >"$work/is-read.lua" <<EOF
dofile("$root/bench/wrk/report.lua")
local count = 0
function setup(thread) count = count + 1; thread:set("seed", count) end
function init(args) math.randomseed(os.time() * 100 + seed) end
request = function()
  return wrk.format("GET", string.format("/api/v1/users/%d/reads/%d", math.random(0, 199999), math.random(0, 65535)))
end
done = report
EOF
sed 's/"GET"/"PUT"/' "$work/is-read.lua" >"$work/mark.lua"
users=$(seq -s, 0 99)
cat >"$work/receipts.lua" <<EOF
dofile("$root/bench/wrk/report.lua")
local headers = { ["Content-Type"] = "application/json" }
request = function()
  return wrk.format("POST", "/api/v1/messages/7/readers", headers, "{\"userIds\":[$users]}")
end
done = report
EOF

results=$work/results
: >"$results"
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
run() { # round scenario side url script connections [pid]: one wrk run, recorded
  local out line rps p50 p99 requests before after per
  local threads=2
  [ "$6" = 1 ] && threads=1
  [ -n "${7:-}" ] && before=$(cpu_ticks "$7")
  out=$(${wrk_pin:-} wrk -t"$threads" -c"$6" -d"${secs}s" --latency -s "$work/$5" "$4" 2>&1) || { echo "$out" >&2; fail "wrk $5 $4"; }
  grep -q 'Non-2xx' <<<"$out" && { echo "$out" >&2; fail "non-2xx answers: $3 $2"; }
  line=$(grep '^RESULT' <<<"$out")
  rps=$(sed 's/.*rps=\([0-9]*\).*/\1/' <<<"$line")
  requests=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$line")
  p50=$(sed 's/.*p50_us=\([0-9]*\).*/\1/' <<<"$line")
  p99=$(sed 's/.*p99_us=\([0-9]*\).*/\1/' <<<"$line")
  per=0
  if [ -n "${7:-}" ]; then
    after=$(cpu_ticks "$7")
    # clock ticks are 1/100 s: microseconds of CPU per request
    per=$(awk -v t=$((after - before)) -v n="$requests" 'BEGIN { printf "%.2f", t * 10000 / n }')
  fi
  echo "$1 $2 $3 $rps $p50 $p99 $per" >>"$results"
  printf 'round %s %-12s %-8s %9s/s  p50 %6.3f ms  p99 %7.3f ms%s\n' "$1" "$2" "$3" "$rps" \
    "$(awk -v v="$p50" 'BEGIN { print v / 1000 }')" "$(awk -v v="$p99" 'BEGIN { print v / 1000 }')" \
    "$([ "$per" = 0 ] || echo "  cpu ${per} µs/request")"
}
pair() { # round scenario script connections left-side left-url [left-pid] right-side right-url [right-pid]
  local r=$1 s=$2 script=$3 c=$4
  if [ $((r % 2)) = 1 ]; then
    run "$r" "$s" "$5" "$6" "$script" "$c" "$7"; run "$r" "$s" "$8" "$9" "$script" "$c" "${10}"
  else
    run "$r" "$s" "$8" "$9" "$script" "$c" "${10}"; run "$r" "$s" "$5" "$6" "$script" "$c" "$7"
  fi
}
for r in $(seq 1 "$rounds"); do
  pair "$r" is-read is-read.lua 64 router "$router" "$router_pid" direct "$a" "$a_pid"
  pair "$r" is-read-c1 is-read.lua 1 router "$router" "" direct "$a" ""
  pair "$r" mark mark.lua 64 router "$router" "" direct "$a" ""
  pair "$r" cpu is-read.lua 64 sharded "$a" "$a_pid" plain "$plain" "$plain_pid"
  # the router on a core of its own, as on a machine of its own: the master and wrk share
  # core 0 on both sides, the router has core 1
  taskset -acp 0 "$a_pid" >/dev/null; taskset -acp 1 "$router_pid" >/dev/null
  wrk_pin="taskset -c 0" pair "$r" pinned is-read.lua 64 router "$router" "$router_pid" direct "$a" "$a_pid"
  taskset -acp 0-1 "$a_pid" >/dev/null; taskset -acp 0-1 "$router_pid" >/dev/null
done
shards assign 0x8000000000000000..end b >/dev/null
wait_for "group b to own its half" curl -sf -X PUT "$router/api/v1/users/1/reads/2"
for r in $(seq 1 "$rounds"); do
  pair "$r" receipts receipts.lua 64 router "$router" "" plain "$plain" ""
done

# Splits: 20 in a row of the lower range, each one compare-and-swap in etcd; the time to
# commit as `shards split` measures it (the command's own start-up not included).
splits=$work/splits
: >"$splits"
for _ in $(seq 1 20); do
  lower=$(shards show | awk 'NR == 2 { print $1 }')
  shards split "$lower" | sed -n 's/.*committed in \([0-9.]*\)\(µs\|ms\|s\)).*/\1 \2/p' |
    awk '{ v = $1; if ($2 == "µs") v /= 1000; if ($2 == "s") v *= 1000; print v }' >>"$splits"
done
[ "$(wc -l <"$splits")" = 20 ] || fail "a split did not commit"
pipelined=$(curl -sf "$router/actuator/prometheus" | awk '$1 == "bitark_router_pipelined_reads_total" { r = $2 }
  $1 == "bitark_router_pipeline_writes_total" { w = $2 } END { printf "%d reads in %d writes (%.1f a write)", r, w, w ? r / w : 0 }')
echo
echo "router's pipelined reads: $pipelined"
echo "medians over $rounds rounds:"
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { # scenario left right column: median of left/right
  awk -v s="$1" -v l="$2" -v rr="$3" -v c="$4" '$2 == s && $3 == l { a[$1] = $c } $2 == s && $3 == rr { b[$1] = $c }
    END { for (k in a) if (b[k] > 0) print a[k] / b[k] }' "$results" | median
}
diff_ms() { # scenario left right column: median of (left - right) in ms
  awk -v s="$1" -v l="$2" -v rr="$3" -v c="$4" '$2 == s && $3 == l { a[$1] = $c } $2 == s && $3 == rr { b[$1] = $c }
    END { for (k in a) print (a[k] - b[k]) / 1000 }' "$results" | median
}
printf '  %-40s %s\n' \
  "is-read c64 throughput, router / direct" "$(ratio is-read router direct 4)×" \
  "is-read c64 added p50 / p99" "$(diff_ms is-read router direct 5) ms / $(diff_ms is-read router direct 6) ms" \
  "is-read c1 added p50 / p99" "$(diff_ms is-read-c1 router direct 5) ms / $(diff_ms is-read-c1 router direct 6) ms" \
  "durable mark c64 throughput, router / direct" "$(ratio mark router direct 4)×" \
  "durable mark added p50 / p99" "$(diff_ms mark router direct 5) ms / $(diff_ms mark router direct 6) ms" \
  "CPU per is-read, sharded / plain" "$(ratio cpu sharded plain 7)×" \
  "CPU per is-read, the router / the master" "$(ratio is-read router direct 7)×" \
  "is-read c64, router on its own core / direct" "$(ratio pinned router direct 4)×" \
  "  added p50 / p99" "$(diff_ms pinned router direct 5) ms / $(diff_ms pinned router direct 6) ms" \
  "receipts (100 users, 2 groups) via router" "$(awk '$2 == "receipts" && $3 == "router" { print $4 }' "$results" | median)/s, p50 $(awk '$2 == "receipts" && $3 == "router" { print $5 / 1000 }' "$results" | median) ms, p99 $(awk '$2 == "receipts" && $3 == "router" { print $6 / 1000 }' "$results" | median) ms" \
  "receipts via router / one plain node" "$(ratio receipts router plain 4)×" \
  "shards split: commit, median / max of 20" "$(median <"$splits") ms / $(sort -g "$splits" | tail -1) ms"
