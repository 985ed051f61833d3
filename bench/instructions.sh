#!/usr/bin/env bash
# User-space instructions per request, BitArk against the minimal axum handler, counted
# by valgrind's callgrind: unlike requests per second, the count does not move with what
# else the host runs, so it tells small changes of the request path apart.
# Usage: bench/instructions.sh [seconds] [users] [is-read|mark]   (default 8 20000 is-read;
#   any directory). `mark` is a durable single mark (PUT), the group-commit writer's
#   instructions (and the fsync's share of user space) included.
#   CARGO_TARGET_DIR  where the release binaries are built (default: target/ in the repo)
#
# Installs valgrind and wrk when missing, builds `bitark` and `examples/minimal.rs` in
# release mode, loads `users` users × ~30 random marks into a data directory with the
# plain binary, then for each server: starts it under callgrind, warms it up, zeroes the
# counters, runs wrk (1 thread, 4 connections) on random users' reads, dumps the counters
# and divides every instruction of the process in that window by the requests wrk saw
# answered. The kernel's share (TCP on loopback, epoll) is not counted.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-8}
users=${2:-20000}
scenario=${3:-is-read}
case $scenario in is-read | mark) ;; *) echo "instructions.sh: the scenario is is-read or mark, not $scenario" >&2; exit 2 ;; esac
port=${BENCH_PORT:-18740}

sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get install -y "${missing[@]}" || { $sudo apt-get update && $sudo apt-get install -y "${missing[@]}"; }
fi
target=${CARGO_TARGET_DIR:-$root/target}
CARGO_TARGET_DIR=$target cargo build --release --quiet --bin bitark --example minimal -p bitark-adapter
bitark_bin=$target/release/bitark
minimal_bin=$target/release/examples/minimal

work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "instructions.sh: $*" >&2; exit 1; }
wait_for() {
  for _ in $(seq 1 1200); do curl -sf "http://127.0.0.1:$port/$1" >/dev/null && return 0; sleep 0.1; done
  fail "no answer at /$1"
}

# The data: batch marks through the plain binary, then a clean shutdown.
BITARK_LOG=warn "$bitark_bin" --port "$port" --data-dir "$work/data" 2>"$work/load.log" &
pid=$!
wait_for actuator/health/readiness
BENCH_USERS=$users wrk -t2 -c16 -d4s -s bench/wrk/batch-mark.lua "http://127.0.0.1:$port" >/dev/null
kill "$pid"; wait "$pid" || true; pid=""

# Runs one server under callgrind; prints its instructions per request.
count() {
  local name=$1 ready=$2
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$work/$name.%p" "$@" 2>"$work/$name.log" &
  pid=$!
  wait_for "$ready"
  BENCH_USERS=$users wrk -t1 -c4 -d3s -s "bench/wrk/$scenario.lua" "http://127.0.0.1:$port" >/dev/null
  callgrind_control -z "$pid" >/dev/null
  local out requests file ir
  out=$(BENCH_USERS=$users wrk -t1 -c4 -d"${secs}s" -s "bench/wrk/$scenario.lua" "http://127.0.0.1:$port")
  callgrind_control -d "$pid" >/dev/null
  requests=$(echo "$out" | awk '/requests in/{print $1}')
  [ -n "$requests" ] && [ "$requests" -gt 0 ] || fail "$name: wrk answered nothing"
  echo "$out" | grep -q "Non-2xx" && fail "$name: non-2xx answers"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  file=$(ls -S "$work/$name".* | head -1)
  ir=$(awk '/^summary:|^totals:/{print $2; exit}' "$file")
  echo "$name $requests requests, $((ir / requests)) instructions per $scenario request"
}
cp -r "$work/data" "$work/run"
b=$(BITARK_LOG=warn count bitark actuator/health/readiness "$bitark_bin" --port "$port" --data-dir "$work/run")
m=$(count minimal api/v1/users/1/reads/1 "$minimal_bin" "$port")
echo "$b"
echo "$m"
python3 -c "import sys; b=int('$b'.split()[3]); m=int('$m'.split()[3]); print(f'bitark / minimal: {b/m:.2f}')"
