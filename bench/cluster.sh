# Sourced by the cluster benchmarks: checks for wrk, builds the release binary, and runs
# release nodes on loopback in a temporary directory, killed on exit. Defines `work`,
# `pids` and `start NAME PORT [VAR=value ...]`, which starts a node and waits until it is
# ready.
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin bitark
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start() { # name port env...
  local name=$1 port=$2; shift 2
  env BITARK_LOG=warn BITARK_NODE__ID="$name" "$@" ./target/release/bitark --port "$port" --data-dir "$work/$name" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/actuator/health/readiness" >/dev/null && return; sleep 0.1; done
  echo "$name did not start" >&2; cat "$work/$name.log" >&2; exit 1
}
