#!/usr/bin/env bash
# Measures how long a change takes to reach every node of a 10-node, 100-pod lab with
# --sync-delay 0 (release build), both proxy modes: `lab set --external-traffic-policy Local`
# (a policy change: a few chains change), `lab set --session-affinity ClientIP` (every endpoint
# chain changes), `lab delete-pod --grace-period 0` with affinity on, `lab set
# --session-affinity None`, and `delete-pod` again without affinity. Needs root.
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
printf "%-9s %4s %8s %9s %11s %10s %9s\n" mode run etp_s aff_on_s delete_aff_s aff_off_s delete_s
for mode in nftables iptables; do
    "$bin" lab up --name "$name" --nodes "$nodes" --pods "$pods" --proxy-mode "$mode" >/dev/null
    for run in $(seq 1 "$runs"); do
        t0=$(now)
        "$bin" lab set --name "$name" --external-traffic-policy Local >/dev/null
        t1=$(now)
        "$bin" lab set --name "$name" --external-traffic-policy Cluster >/dev/null
        t2=$(now)
        "$bin" lab set --name "$name" --session-affinity ClientIP >/dev/null
        t3=$(now)
        "$bin" lab delete-pod "$(printf 'pod-%03d' $((2 * run - 1)))" --name "$name" --grace-period 0 >/dev/null
        t4=$(now)
        "$bin" lab set --name "$name" --session-affinity None >/dev/null
        t5=$(now)
        "$bin" lab delete-pod "$(printf 'pod-%03d' $((2 * run)))" --name "$name" --grace-period 0 >/dev/null
        t6=$(now)
        printf "%-9s %4d %8s %9s %11s %10s %9s\n" "$mode" "$run" "$(took "$t0" "$t1")" "$(took "$t2" "$t3")" \
            "$(took "$t3" "$t4")" "$(took "$t4" "$t5")" "$(took "$t5" "$t6")"
    done
    "$bin" lab down --name "$name" >/dev/null
done
