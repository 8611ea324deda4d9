#!/usr/bin/env bash
# Start, inspect or stop a local 5-process drover cluster (prod-1, prod-2, dr-1, dr-2, witness)
# on 127.0.0.11-15, with a dev CA made by `droverctl certs init`.
#
#   scripts/local-cluster.sh start [DIR]   # build (release), create certs + configs, start
#   scripts/local-cluster.sh env   [DIR]   # print the DROVER_* variables for droverctl
#   scripts/local-cluster.sh stop  [DIR]   # SIGTERM every process started by 'start'
#
# DIR defaults to ./local-cluster. Ports: gRPC 74x0... see DIR/*.toml.
set -euo pipefail
cmd=${1:-start}
dir=$(realpath -m "${2:-local-cluster}")
root=$(cd "$(dirname "$0")/.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"

names=(prod-1 prod-2 dr-1 dr-2 witness)
sites=(prod prod dr dr witness)
roles=(controller controller controller controller witness)

endpoints() {
  local out=() i
  for i in 0 1 2 3 4; do out+=("127.0.0.1$((i + 1)):7400"); done
  (IFS=,; echo "${out[*]}")
}

case "$cmd" in
start)
  if [ -e "$dir/pids" ]; then
    echo "error: $dir/pids exists: a cluster from $dir may be running; run '$0 stop $dir' first" >&2
    exit 2
  fi
  (cd "$root" && cargo build --release --bins -q)
  mkdir -p "$dir"
  if [ ! -f "$dir/certs/ca.pem" ]; then
    args=()
    for i in 0 1 2 3 4; do args+=(--node "${names[$i]}=127.0.0.1$((i + 1))"); done
    "$bin/droverctl" certs init --out "$dir/certs" "${args[@]}" >/dev/null
  fi
  members=""
  for i in 0 1 2 3 4; do
    members+=$'\n'"[[initial_member]]"$'\n'"id = $((i + 1))"$'\n'"name = \"${names[$i]}\""$'\n'"site = \"${sites[$i]}\""$'\n'"role = \"${roles[$i]}\""$'\n'"address = \"127.0.0.1$((i + 1)):7400\""$'\n'
  done
  for i in 0 1 2 3 4; do
    n=${names[$i]}
    cat > "$dir/$n.toml" <<TOML
id = $((i + 1))
name = "$n"
site = "${sites[$i]}"
role = "${roles[$i]}"
data_dir = "$dir/data-$n"

[listen]
grpc = "127.0.0.1$((i + 1)):7400"
http = "127.0.0.1$((i + 1)):7480"

[tls]
ca = "$dir/certs/ca.pem"
cert = "$dir/certs/$n.pem"
key = "$dir/certs/$n-key.pem"
$members
TOML
    exe="$bin/drover-node"
    [ "${roles[$i]}" = witness ] && exe="$bin/drover-witness"
    nohup "$exe" run --config "$dir/$n.toml" >>"$dir/$n.log" 2>&1 &
    echo "$!" >>"$dir/pids"
  done
  echo "started 5 nodes; logs in $dir/*.log"
  echo "try:  eval \"\$($0 env $dir)\" && $bin/droverctl status"
  ;;
env)
  echo "export DROVER_ENDPOINT=$(endpoints) DROVER_TLS_DIR=$dir/certs"
  ;;
stop)
  if [ ! -f "$dir/pids" ]; then
    echo "no $dir/pids: nothing started from $dir" >&2
    exit 0
  fi
  while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$dir/pids"
  rm -f "$dir/pids"
  echo "stopped; state kept in $dir (delete it to start from scratch)"
  ;;
*)
  echo "usage: $0 start|env|stop [DIR]" >&2
  exit 2
  ;;
esac
