#!/usr/bin/env bash
# Measures how long a change takes to reach every node of a 10-node, 100-pod lab with
# --sync-delay 0 (release build): `lab set` (session affinity on, then off) and
# `lab delete-pod --grace-period 0`, both proxy modes. Needs root.
# Usage: sudo scripts/bench-lab-sync.sh [RUNS] [NODES] [PODS] [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
nodes=${2:-10}
pods=${3:-100}
bin=${4:-}
if [ "$(id -u)" != 0 ]; then
    echo "bench-lab-sync.sh needs root (network namespaces): run with sudo" >&2
    exit 2
fi
if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin=target/release/kubectl-svclb
fi
name="bsync-$$"
trap '"$bin" lab down --name "$name" >/dev/null 2>&1 || true' EXIT

now() { date +%s.%N; }
took() { awk "BEGIN{printf \"%.3f\", $2 - $1}"; }
echo "lab ${nodes} nodes x ${pods} pods, $(nproc) CPUs, kernel $(uname -r), load $(cut -d' ' -f1 /proc/loadavg)"
printf "%-9s %4s %8s %8s %9s\n" mode run set_on_s set_off_s delete_s
for mode in nftables iptables; do
    "$bin" lab up --name "$name" --nodes "$nodes" --pods "$pods" --proxy-mode "$mode" >/dev/null
    for run in $(seq 1 "$runs"); do
        t0=$(now)
        "$bin" lab set --name "$name" --session-affinity ClientIP >/dev/null
        t1=$(now)
        "$bin" lab set --name "$name" --session-affinity None >/dev/null
        t2=$(now)
        "$bin" lab delete-pod "$(printf 'pod-%03d' "$run")" --name "$name" --grace-period 0 >/dev/null
        t3=$(now)
        printf "%-9s %4d %8s %8s %9s\n" "$mode" "$run" "$(took "$t0" "$t1")" "$(took "$t1" "$t2")" "$(took "$t2" "$t3")"
    done
    "$bin" lab down --name "$name" >/dev/null
done
