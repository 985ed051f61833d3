# Shared by the sharded benchmarks (bench/router.sh, bench/move.sh); sourced, with
# `name` (the script's, for its messages) and `root` (the repository) set.
# Installs etcd-server and wrk when missing, builds `bitark` in release mode ($bin), makes
# a work directory ($work) whose processes ($pids) end with the script, and defines:
#   fail MESSAGE          stop the script
#   free_port FROM        the first port from FROM that nothing listens on
#   wait_for WHAT CMD...  retry CMD for 30 s, then fail naming WHAT
#   start_etcd CPORT PPORT  an etcd of its own on those client and peer ports
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v etcd >/dev/null || missing+=(etcd-server)
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get install -y "${missing[@]}" || { $sudo apt-get update && $sudo apt-get install -y "${missing[@]}"; }
fi
target=${CARGO_TARGET_DIR:-$root/target}
CARGO_TARGET_DIR=$target cargo build --release --quiet --bin bitark -p bitark-adapter
bin=$target/release/bitark

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "$name: $*" >&2; exit 1; }
free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return; sleep 0.1; done
  fail "$what did not start"
}
start_etcd() {
  local url=http://127.0.0.1:$1
  etcd --data-dir "$work/etcd" --listen-client-urls "$url" --advertise-client-urls "$url" \
    --listen-peer-urls "http://127.0.0.1:$2" --initial-advertise-peer-urls "http://127.0.0.1:$2" \
    --initial-cluster "default=http://127.0.0.1:$2" >"$work/etcd.log" 2>&1 &
  pids+=($!)
  wait_for etcd curl -sf "$url/health"
}
