#!/usr/bin/env bash
# BitArk side by side with a minimal axum handler and Redis 7, in one run, on loopback.
# Usage: bench/compare.sh [seconds-per-scenario] [rounds]   (default 10 2; any directory)
#   CARGO_TARGET_DIR  where the release binaries are built (default: target/ in the repo)
#   BENCH_PORT        first port to try (default 18600); each server takes the next free one
#   BENCH_SCENARIOS   which scenarios run (default "is-read mark batch-mark batch-check")
#   BENCH_FSYNC       BitArk's wal.fsync (default batch); `never` shows what the durable
#                     mark would reach if its fsyncs cost nothing
#
# Installs wrk and redis-server (which brings redis-benchmark and redis-cli) when missing,
# builds `bitark` and `examples/minimal.rs` in release mode, then starts:
#   - bitark on a fresh temp data dir, default configuration (wal.fsync: batch: every
#     write is fsynced before it is answered; BENCH_FSYNC changes it);
#   - the minimal axum handler (a fixed JSON answer to GET/PUT …/reads/{msgId});
#   - redis-server on a temp dir with --appendonly yes --appendfsync always --save '', and
#     no automatic AOF rewrite: with 2 GB of bitmaps, a rewrite (fork, then writing it
#     all out) would land in some Redis runs and not others. BitArk keeps its default
#     snapshot policy, so this favours Redis.
# It loads the same 200,000 users × 20 marks into BitArk (batch marks through wrk) and into
# Redis (SETBIT user:{u} {msg} 1, piped through redis-cli --pipe). Message ids are random
# below 65,536 (BENCH_MAX_ID), so that a Redis bitmap holds at most 8 KiB per user; Redis
# keys use redis-benchmark's 12-digit form, user:000000000042.
#
# Writes go to other users than the 200,000 read, in both (BitArk: users 200,000 and up;
# Redis: keys new:{k}), so every round reads the same data.
# Then, for each round, each scenario runs BitArk and its references one after the other
# (BitArk first in odd rounds, last in even ones), so every ratio compares runs a few
# seconds apart:
#   is-read        wrk -t2 -c64 GET /api/v1/users/{u}/reads/{m}, BitArk and minimal axum;
#                  redis-benchmark -c 50 -P 1 GETBIT user:{u} 40960
#   durable mark   wrk -t2 -c64 PUT /api/v1/users/{u}/reads/{m};
#                  redis-benchmark -c 50 -P 1 SETBIT new:{k} 5 1 (appendfsync always)
#   batch mark     wrk -t2 -c64 POST /api/v1/users/{u}/reads, 100 ids, in marks/s;
#                  redis-benchmark -c 50 -P 16 SETBIT new:{k} 5 1, in ops/s
#   batch check    wrk -t2 -c64 POST /api/v1/users/{u}/reads/check, 100 ids, in ids/s;
#                  redis-benchmark -c 50 -P 100 GETBIT user:{u} 40960, in ops/s
# redis-benchmark cannot draw the bit offset: __rand_int__ expands to 12 digits with leading
# zeros, which Redis refuses as an offset. So GETBIT reads a fixed offset of a random user
# (inside most users' bitmaps), and SETBIT sets a fixed bit of a random key out of 2·10^9,
# nearly always a new one: Redis 7 neither logs nor fsyncs a SETBIT that changes nothing,
# so repeating bits would not measure a durable write.
# redis-benchmark runs a number of requests, not a time: each run asks for the rate its
# previous run measured times the seconds (the first one after a short calibration run).
# Any non-2xx answer in a wrk run, or an error from Redis, stops the script.
# It prints one line per run, then a table per round and the median of each ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-10}
rounds=${2:-2}
scenarios=${BENCH_SCENARIOS:-is-read mark batch-mark batch-check}
fsync=${BENCH_FSYNC:-batch}
users=200000
marks_per_user=20
max_id=${BENCH_MAX_ID:-65536}
get_offset=$((max_id * 5 / 8))   # the GETBIT offset (40960): inside most users' bitmaps
set_keys=2000000000   # users (keys) the writes draw from

sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
missing=()
command -v wrk >/dev/null || missing+=(wrk)
for tool in redis-server redis-benchmark redis-cli; do
  command -v "$tool" >/dev/null || { missing+=(redis-server); break; }
done
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get install -y "${missing[@]}" || { $sudo apt-get update && $sudo apt-get install -y "${missing[@]}"; }
fi
redis_version=$(redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')
[ "${redis_version%%.*}" = 7 ] || echo "warning: redis-server $redis_version, not 7.x" >&2

target=${CARGO_TARGET_DIR:-$root/target}
CARGO_TARGET_DIR=$target cargo build --release --quiet --bin bitark --example minimal -p bitark-adapter
bitark_bin=$target/release/bitark
minimal_bin=$target/release/examples/minimal

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "compare.sh: $*" >&2; exit 1; }

free_port() { # first port from $1 on that nothing listens on
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}
wait_for() { # what, command...: polls the command every 0.1 s for up to 30 s
  local what=$1; shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return; sleep 0.1; done
  fail "$what did not start"
}
bport=$(free_port "${BENCH_PORT:-18600}")
mport=$(free_port $((bport + 1)))
rport=$(free_port $((mport + 1)))
bitark=http://127.0.0.1:$bport
minimal=http://127.0.0.1:$mport

# BitArk runs in the temp dir, so that only its embedded defaults apply (no ./application.yml).
mkdir "$work/redis"
(cd "$work" && BITARK_LOG=warn BITARK_WAL__FSYNC="$fsync" exec "$bitark_bin" --port "$bport" --data-dir "$work/bitark" 2>"$work/bitark.log") &
pids+=($!)
bitark_pid=$!
"$minimal_bin" "$mport" 2>"$work/minimal.log" &
pids+=($!)
redis-server --port "$rport" --bind 127.0.0.1 --dir "$work/redis" --appendonly yes --appendfsync always \
  --save '' --auto-aof-rewrite-percentage 0 --daemonize no --logfile "$work/redis.log" &
pids+=($!)
wait_for bitark curl -sf "$bitark/actuator/health/readiness" || { cat "$work/bitark.log" >&2; exit 1; }
wait_for minimal curl -s "$minimal/api/v1/users/1/reads/1"
wait_for redis-server bash -c "[ \"\$(redis-cli -p $rport ping)\" = PONG ]"
rcli() { redis-cli -p "$rport" "$@"; }
echo "bitark $bitark (wal.fsync: $fsync), minimal axum $minimal, redis $redis_version on port $rport; ${secs}s per scenario, $rounds rounds: $scenarios"

# The data: one line per user, "user id,id,...", 20 distinct ids below max_id.
awk -v users=$users -v k=$marks_per_user -v max="$max_id" 'BEGIN {
  srand(42)
  for (u = 0; u < users; u++) {
    delete seen; line = ""
    for (n = 0; n < k; ) { id = int(rand() * max); if (!(id in seen)) { seen[id] = 1; line = line (n ? "," : "") id; n++ } }
    print u, line
  }
}' >"$work/data.txt"

# wrk scripts, written here because their ids are below max_id; each thread seeds its own
# random numbers. They print bench/wrk/report.lua's RESULT line.
prelude='dofile("'$root'/bench/wrk/report.lua")
local users = '$users'
local max_id = '$max_id'
local function writer() return users + math.random(0, '$set_keys' - 1) end
local count = 0
function setup(thread) count = count + 1; thread:set("seed", count) end
function init(args) math.randomseed(os.time() * 100 + seed) end
local headers = { ["Content-Type"] = "application/json" }
local function ids(n)
  local t = {}
  for i = 1, n do t[i] = tostring(math.random(0, max_id - 1)) end
  return "{\"msgIds\":[" .. table.concat(t, ",") .. "]}"
end
done = report'
cat >"$work/is-read.lua" <<EOF
$prelude
request = function()
  return wrk.format("GET", string.format("/api/v1/users/%d/reads/%d", math.random(0, users - 1), math.random(0, max_id - 1)))
end
EOF
cat >"$work/mark.lua" <<EOF
$prelude
request = function()
  return wrk.format("PUT", string.format("/api/v1/users/%d/reads/%d", writer(), math.random(0, max_id - 1)))
end
EOF
cat >"$work/batch-mark.lua" <<EOF
$prelude
request = function()
  return wrk.format("POST", string.format("/api/v1/users/%d/reads", writer()), headers, ids(100))
end
EOF
cat >"$work/batch-check.lua" <<EOF
$prelude
request = function()
  return wrk.format("POST", string.format("/api/v1/users/%d/reads/check", math.random(0, users - 1)), headers, ids(100))
end
EOF
# The load: thread t posts the users on lines t, t+T, t+2T... of the data file, over and
# over until it is stopped (wrk spends one request of thread 1 to check the script; a
# repeated batch adds nothing).
cat >"$work/load.lua" <<EOF
local count = 0
function setup(thread) thread:set("tid", count); count = count + 1 end
function init(args)
  local threads = tonumber(os.getenv("BENCH_THREADS"))
  paths, bodies, sent = {}, {}, 0
  local i = 0
  for line in io.lines("$work/data.txt") do
    if i % threads == tid then
      local u, list = line:match("^(%d+) (.+)$")
      paths[#paths + 1] = "/api/v1/users/" .. u .. "/reads"
      bodies[#bodies + 1] = "{\"msgIds\":[" .. list .. "]}"
    end
    i = i + 1
  end
end
local headers = { ["Content-Type"] = "application/json" }
request = function()
  local i = sent % #paths + 1
  sent = sent + 1
  return wrk.format("POST", paths[i], headers, bodies[i])
end
EOF

metric() { curl -s "$bitark/actuator/prometheus" | awk -v m="$1" '$1 == m { printf "%d", $2 }'; }
check_wrk() { # wrk output: fails on non-2xx answers, warns on socket errors
  if grep -q 'Non-2xx' <<<"$1"; then echo "$1" >&2; fail "non-2xx answers in a wrk run"; fi
  if grep -q 'Socket errors' <<<"$1"; then grep 'Socket errors' <<<"$1" >&2; fi
}

# Load BitArk: 2 wrk threads, 16 connections, stopped once every mark is applied.
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
start=$(date +%s.%N)
BENCH_THREADS=2 wrk -t2 -c16 -d600s -s "$work/load.lua" "$bitark" >"$work/load.out" 2>&1 &
load_pid=$!
pids+=("$load_pid")
deadline=$((SECONDS + 300))
until [ "$(metric bitark_store_marks)" = $((users * marks_per_user)) ]; do
  [ $SECONDS -lt $deadline ] || { cat "$work/load.out" >&2; fail "BitArk load did not finish: $(metric bitark_store_marks) marks"; }
  kill -0 "$load_pid" 2>/dev/null || { cat "$work/load.out" >&2; fail "wrk stopped during the load"; }
  sleep 0.2
done
kill -INT "$load_pid"
wait "$load_pid" || true
check_wrk "$(cat "$work/load.out")"
echo "bitark loaded: $(metric bitark_store_users) users, $(metric bitark_store_marks) marks in $(elapsed "$start") s"

# Load Redis: the same marks as SETBIT user:%012d id 1, in the protocol, through --pipe.
start=$(date +%s.%N)
awk '{
  key = sprintf("user:%012d", $1); n = split($2, ids, ",")
  for (i = 1; i <= n; i++)
    printf "*4\r\n$6\r\nSETBIT\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$1\r\n1\r\n", length(key), key, length(ids[i]), ids[i]
}' "$work/data.txt" | rcli --pipe >"$work/pipe.out" 2>&1 || { cat "$work/pipe.out" >&2; fail "redis-cli --pipe failed"; }
grep -q "errors: 0, replies: $((users * marks_per_user))" "$work/pipe.out" || { cat "$work/pipe.out" >&2; fail "Redis load"; }
[ "$(rcli dbsize)" = $users ] || fail "Redis holds $(rcli dbsize) keys, not $users"
echo "redis loaded: $(rcli dbsize) keys in $(elapsed "$start") s"
until rcli info persistence | grep -q '^aof_rewrite_in_progress:0'; do sleep 0.2; done

# Both hold the same marks, and every BitArk request answers 200.
read -r u0 list0 < <(head -1 "$work/data.txt")
m0=${list0%%,*}
key0=$(printf 'user:%012d' "$u0")
[ "$(rcli getbit "$key0" "$m0")" = 1 ] || fail "Redis: $key0 bit $m0 is not set"
curl -sf "$bitark/api/v1/users/$u0/reads/$m0" | grep -q '"read":true' || fail "BitArk: user $u0 has not read $m0"
bitark_rss=$(awk '/^VmRSS/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$bitark_pid/status")
echo "memory after the load: bitark RSS $bitark_rss; redis $(rcli info memory | awk -F: '/^used_memory_human|^used_memory_rss_human/ { gsub("\r", ""); printf "%s %s ", $1, $2 }')"
probe() { # method url [body]: fails unless the answer is 200
  local code
  code=$(curl -s -o "$work/probe.out" -w '%{http_code}' -X "$1" -H 'Content-Type: application/json' ${3:+--data "$3"} "$2")
  [ "$code" = 200 ] || fail "$1 $2 answered $code: $(cat "$work/probe.out")"
  echo "probe $1 ${2#http://127.0.0.1:} -> $code $(head -c 120 "$work/probe.out")"
}
probe GET "$bitark/api/v1/users/7/reads/123"
probe PUT "$bitark/api/v1/users/7/reads/123"
probe POST "$bitark/api/v1/users/7/reads" '{"msgIds":[1,2,3]}'
probe POST "$bitark/api/v1/users/7/reads/check" '{"msgIds":[1,2,3,123,4]}'
probe GET "$minimal/api/v1/users/7/reads/123"
[ "$(rcli getbit user:000000000007 $get_offset)" -ge 0 ] || fail "Redis GETBIT"

results=$work/results
: >"$results"
record() { # round scenario system rate p50_ms p99_ms
  echo "$*" >>"$results"
  printf 'round %s %-12s %-14s %12.0f/s  p50 %7.3f ms  p99 %8.3f ms\n' "$@"
}
wrk_run() { # round scenario system url script multiplier
  local out line rps p50 p99
  out=$(wrk -t2 -c64 -d"${secs}s" --latency -s "$work/$5" "$4" 2>&1) || { echo "$out" >&2; fail "wrk $5 $4"; }
  check_wrk "$out"
  line=$(grep '^RESULT' <<<"$out") || { echo "$out" >&2; fail "no RESULT line from wrk"; }
  rps=$(sed -n 's/.* rps=\([0-9]*\).*/\1/p' <<<"$line")
  p50=$(sed -n 's/.* p50_us=\([0-9]*\).*/\1/p' <<<"$line")
  p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' <<<"$line")
  record "$1" "$2" "$3" $((rps * $6)) "$(awk -v x="$p50" 'BEGIN { print x / 1000 }')" "$(awk -v x="$p99" 'BEGIN { print x / 1000 }')"
}
declare -A redis_rate
redis_csv() { # pipeline keyspace n command...: one redis-benchmark run; sets rps, p50 and p99
  local pipe=$1 keys=$2 n=$3 out; shift 3
  out=$(redis-benchmark -p "$rport" -c 50 -P "$pipe" -r "$keys" -n "$n" --csv "$@" 2>&1) || { echo "$out" >&2; fail "redis-benchmark $*"; }
  if grep -qi 'error' <<<"$out"; then echo "$out" >&2; fail "redis-benchmark $*"; fi
  read -r rps p50 p99 <<<"$(sed -n '2p' <<<"$out" | awk -F'","' '{ print $2, $5, $7 }')"
  [ -n "$p99" ] || { echo "$out" >&2; fail "no result from redis-benchmark $*"; }
}
redis_run() { # round scenario pipeline keyspace command...
  local round=$1 scenario=$2 pipe=$3 keys=$4; shift 4
  if [ -z "${redis_rate[$scenario]:-}" ]; then # calibration: a short run at a guessed size
    redis_csv "$pipe" "$keys" $((20000 * pipe)) "$@"
    redis_rate[$scenario]=$rps
  fi
  redis_csv "$pipe" "$keys" "$(awk -v r="${redis_rate[$scenario]}" -v s="$secs" 'BEGIN { printf "%.0f", r * s }')" "$@"
  redis_rate[$scenario]=$rps
  record "$round" "$scenario" redis "$rps" "$p50" "$p99"
}
scenario() { # round name: BitArk and its references, in this round's order
  local round=$1 name=$2 steps=()
  case $name in
    is-read) steps=("wrk_run $round $name bitark $bitark is-read.lua 1"
                    "wrk_run $round $name minimal $minimal is-read.lua 1"
                    "redis_run $round $name 1 $users GETBIT user:__rand_int__ $get_offset") ;;
    mark) steps=("wrk_run $round $name bitark $bitark mark.lua 1"
                 "redis_run $round $name 1 $set_keys SETBIT new:__rand_int__ 5 1") ;;
    batch-mark) steps=("wrk_run $round $name bitark $bitark batch-mark.lua 100"
                       "redis_run $round $name 16 $set_keys SETBIT new:__rand_int__ 5 1") ;;
    batch-check) steps=("wrk_run $round $name bitark $bitark batch-check.lua 100"
                        "redis_run $round $name 100 $users GETBIT user:__rand_int__ $get_offset") ;;
  esac
  local i
  if [ $((round % 2)) = 1 ]; then
    for ((i = 0; i < ${#steps[@]}; i++)); do ${steps[i]}; done
  else
    for ((i = ${#steps[@]} - 1; i >= 0; i--)); do ${steps[i]}; done
  fi
}
for round in $(seq 1 "$rounds"); do
  for name in $scenarios; do scenario "$round" "$name"; done
done

echo
slow_fsyncs=$(curl -s "$bitark/actuator/prometheus" | awk '
  /^bitark_wal_fsync_seconds_bucket\{le="0.08192"\}/ { fast = $2 } /^bitark_wal_fsync_seconds_count/ { n = $2 }
  END { printf "%d of %d", n - fast, n }')
echo "bitark: $(metric bitark_store_users) users, $(metric bitark_store_marks) marks, $(metric bitark_snapshot_duration_seconds_count) snapshots," \
  "WAL fsyncs over 82 ms: $slow_fsyncs; redis: $(rcli dbsize) keys, $(rcli info persistence | awk -F: '/^aof_rewrites:/ { gsub("\r", ""); print $2 }') AOF rewrites"
echo
awk '
  BEGIN {
    label["is-read"] = "is-read `GET …/reads/{m}` (req/s)"
    label["mark"] = "durable mark `PUT …/reads/{m}` (writes/s)"
    label["batch-mark"] = "batch mark, 100 ids (marks/s)"
    label["batch-check"] = "batch check, 100 ids (ids/s)"
    split("is-read mark batch-mark batch-check", order, " ")
  }
  { rate[$1, $2, $3] = $4; if ($1 > rounds) rounds = $1 }
  function fmt(x,   s) { # thousands separated by commas
    if (x == "") return "–"
    s = sprintf("%.0f", x)
    while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s)
    return s
  }
  function median(list, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (list[j] < list[i]) { t = list[i]; list[i] = list[j]; list[j] = t }
    return n % 2 ? list[(n + 1) / 2] : (list[n / 2] + list[n / 2 + 1]) / 2
  }
  END {
    print "| round | path | BitArk | minimal axum | Redis | BitArk / minimal | BitArk / Redis |"
    print "|---|---|---|---|---|---|---|"
    for (r = 1; r <= rounds; r++) for (i = 1; i <= 4; i++) {
      s = order[i]; b = rate[r, s, "bitark"]; m = rate[r, s, "minimal"]; x = rate[r, s, "redis"]
      if (x == "") continue
      rm = m == "" ? "–" : sprintf("%.2f", b / m); rx = sprintf("%.2f", b / x)
      printf "| %d | %s | %s | %s | %s | %s | %s |\n", r, label[s], fmt(b), fmt(m), fmt(x), rm, rx
      if (m != "") { nm[s]++; vm[s, nm[s]] = b / m }
      nx[s]++; vx[s, nx[s]] = b / x
    }
    print ""
    printf "| path | median BitArk / minimal | median BitArk / Redis |\n|---|---|---|\n"
    for (i = 1; i <= 4; i++) {
      s = order[i]
      if (!nx[s]) continue
      delete l; for (k = 1; k <= nm[s]; k++) l[k] = vm[s, k]
      med_m = nm[s] ? sprintf("%.2f", median(l, nm[s])) : "–"
      delete l; for (k = 1; k <= nx[s]; k++) l[k] = vx[s, k]
      printf "| %s | %s | %.2f |\n", label[s], med_m, median(l, nx[s])
    }
  }' "$results"
