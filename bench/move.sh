#!/usr/bin/env bash
# `bitark shards move` on loopback: the write pause of the moving range, the copy rate,
# and the write latency through the router while ranges move, beside the same load with
# no move, in one run.
# Usage: bench/move.sh [users] [moves] [seconds]   (default 200000 10 20; any directory)
#   CARGO_TARGET_DIR  where the release binary is built (default: target/ in the repo)
#   BENCH_PORT        first port to try (default 18800)
#
# Installs etcd-server and wrk when missing, builds `bitark` in release mode, starts etcd,
# groups a and b (one master each, wal.fsync: batch) over a map that gives each half the
# space, and a router. Loads `users` users with 20 random marks each through the router
# (about half on each group), then:
#   quiet    moves group b's half to group a and back, `moves` times in all, with no other
#            load: the copy's users and marks per second and its bytes per second (the
#            bytes a snapshot of the range holds, from the source's snapshot sizes before
#            and after it dropped the range), and each move's pause;
#   loaded   the same while wrk -t1 -c8 writes durable marks of random users through the
#            router, beside `seconds` of the same wrk with no move: p50 and p99 of both.
# It prints one line per move and the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
users=${1:-200000}
moves=${2:-10}
secs=${3:-20}

name=move.sh
source "$root/bench/lib/sharded.sh"
ecport=$(free_port "${BENCH_PORT:-18800}")
epport=$(free_port $((ecport + 1)))
aport=$(free_port $((epport + 1)))
bport=$(free_port $((aport + 1)))
rport=$(free_port $((bport + 1)))
etcd_url=http://127.0.0.1:$ecport
a=http://127.0.0.1:$aport
b=http://127.0.0.1:$bport
router=http://127.0.0.1:$rport

start_etcd "$ecport" "$epport"
shards() { (cd "$work" && "$bin" shards --etcd "$etcd_url" --prefix /bench "$@"); }
shards init --groups a,b >/dev/null
upper=0x8000000000000000..0x10000000000000000

node() { # name port group
  local name=$1 port=$2 group=$3
  mkdir -p "$work/$name"
  (cd "$work/$name" && exec env BITARK_LOG=warn BITARK_NODE__ID="$name" BITARK_WAL__FSYNC=batch \
    BITARK_CLUSTER__GROUP="$group" BITARK_COORDINATION__ETCD__ENDPOINTS="[\"$etcd_url\"]" \
    BITARK_COORDINATION__ETCD__PREFIX=/bench BITARK_CLUSTER__REFRESH=500ms \
    "$bin" --port "$port" --data-dir "$work/$name/data" 2>"$work/$name.log") &
  pids+=($!)
}
node a "$aport" a
node b "$bport" b
(cd "$work" && BITARK_LOG=warn exec "$bin" --port "$rport" router --etcd "$etcd_url" --prefix /bench 2>"$work/router.log") &
pids+=($!)
wait_for router curl -sf "$router/api/v1/users/1/reads/1"
wait_for "group b" curl -sf -X PUT "$router/api/v1/users/1/reads/1"
wait_for "group a" curl -sf -X PUT "$router/api/v1/users/3/reads/1"

echo "loading $users users x 20 marks through the router"
cat >"$work/load.lua" <<EOF
local next_user = 0
local per_thread = math.ceil($users / 2)
function setup(thread) thread:set("base", next_user); next_user = next_user + per_thread end
function init(args) n = 0; math.randomseed(base + 7) end
request = function()
  local user = base + n
  n = n + 1
  if n > per_thread or user >= $users then wrk.thread:stop() end
  local ids = {}
  for i = 1, 20 do ids[i] = tostring(math.random(0, 4294967295)) end
  return wrk.format("POST", string.format("/api/v1/users/%d/reads", user),
    { ["Content-Type"] = "application/json" }, '{"msgIds":[' .. table.concat(ids, ",") .. ']}')
end
EOF
digest() { curl -sf "$1/admin/digest"; }
field() { sed "s/.*\"$2\":\([0-9]*\).*/\1/" <<<"$1"; }
held() { echo $(( $(field "$(digest "$a")" users) + $(field "$(digest "$b")" users) )); }
# Each wrk thread stops after its share of the users; wrk itself runs on to -d, so it
# is stopped once both groups hold every user.
wrk -t2 -c16 -d600s -s "$work/load.lua" "$router" >"$work/load.out" 2>&1 &
load_pid=$!
while [ "$(held)" -lt "$users" ]; do
  kill -0 "$load_pid" 2>/dev/null || fail "the load stopped early: $(cat "$work/load.out")"
  sleep 0.5
done
kill "$load_pid" 2>/dev/null || true
wait "$load_pid" 2>/dev/null || true
echo "group a: $(digest "$a" | tr -d '\n'); group b: $(digest "$b" | tr -d '\n')"

snapshot_bytes() { curl -sf -X POST "$1/admin/snapshot" | sed 's/.*"bytes":\([0-9]*\).*/\1/'; }
results=$work/results
: >"$results"
one_move() { # label from to: one move of the upper half, recorded
  local label=$1 from=$2 to=$3 before after info users_moved marks_moved started copied out pause ms
  info=$(digest "$from")
  before=$(snapshot_bytes "$from")
  started=$(date +%s%N)
  out=$(shards move "$upper" --to "$to" 2>&1) || fail "the move failed: $out"
  copied=$(date +%s%N)
  pause=$(grep -o 'paused [0-9.]*[mµ]*s' <<<"$out" | head -1 | sed 's/paused //')
  case $pause in
    *ms) ms=${pause%ms} ;;
    *µs) ms=$(awk -v v="${pause%µs}" 'BEGIN { print v / 1000 }') ;;
    *s) ms=$(awk -v v="${pause%s}" 'BEGIN { print v * 1000 }') ;;
  esac
  after=$(snapshot_bytes "$from")
  users_moved=$(( $(field "$info" users) - $(field "$(digest "$from")" users) ))
  marks_moved=$(( $(field "$info" marks) - $(field "$(digest "$from")" marks) ))
  local secs_taken
  secs_taken=$(awk -v a="$started" -v b="$copied" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  awk -v l="$label" -v u="$users_moved" -v m="$marks_moved" -v s="$secs_taken" -v bb=$((before - after)) -v p="$ms" \
    'BEGIN { printf "%s users=%d marks=%d move_s=%.3f users/s=%.0f MB/s=%.1f pause_ms=%.2f\n", l, u, m, s, u / s, bb / s / 1e6, p }' |
    tee -a "$results"
}
for i in $(seq 1 "$moves"); do
  if [ $((i % 2)) = 1 ]; then one_move quiet "$b" a; else one_move quiet "$a" b; fi
done

cat >"$work/mark.lua" <<EOF
dofile("$root/bench/wrk/report.lua")
math.randomseed(os.time() + 1)
request = function()
  return wrk.format("PUT", string.format("/api/v1/users/%d/reads/%d", math.random(0, $users - 1), math.random(0, 4000000000)))
end
done = report
EOF
loaded() { wrk -t1 -c8 -d"${secs}s" --latency -s "$work/mark.lua" "$router" 2>&1; }
base=$(loaded) || fail "wrk failed: $base"
grep -q 'Non-2xx' <<<"$base" && fail "non-2xx answers: $base"
echo "no move: $(grep '^RESULT' <<<"$base")" | tee -a "$results"
loaded >"$work/loaded.out" &
wrk_pid=$!
sleep 1
# Moves back and forth while wrk runs: the upper half is group a's after an odd count.
from=$([ $((moves % 2)) = 1 ] && echo "$a" || echo "$b")
for i in $(seq 1 "$moves"); do
  if [ "$from" = "$a" ]; then one_move loaded "$a" b; from=$b; else one_move loaded "$b" a; from=$a; fi
  kill -0 "$wrk_pid" 2>/dev/null || break
done
wait "$wrk_pid" || fail "wrk failed under moves: $(cat "$work/loaded.out")"
grep -q 'Non-2xx' "$work/loaded.out" &&
  fail "non-2xx answers under moves: $(cat "$work/loaded.out")
$(curl -sf "$router/actuator/prometheus" | grep -E '^bitark_router_(requests|redirects)_total')
$(grep -h -i -E 'warn|error' "$work"/*.log | tail -20)"
echo "moves: $(grep '^RESULT' "$work/loaded.out")" | tee -a "$results"

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for label in quiet loaded; do
  for key in pause_ms users/s MB/s; do
    val=$(grep "^$label " "$results" | grep -o "$key=[0-9.]*" | cut -d= -f2 | median)
    echo "median $label $key: $val"
  done
  echo "max $label pause_ms: $(grep "^$label " "$results" | grep -o 'pause_ms=[0-9.]*' | cut -d= -f2 | sort -n | tail -1)"
done
