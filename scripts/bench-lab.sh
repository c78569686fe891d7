#!/usr/bin/env bash
# Measures the lab on a release build, for both proxy modes: `lab up`, a `lab set` (rules
# rewritten on every node), a `lab delete-pod`, `lab down`, and a storm from a pod to the
# ClusterIP through kube-proxy's rules (connect rate and p99 connect latency; with many
# endpoints this shows what motivated kube-proxy's nftables mode).
# Needs root. Usage: sudo scripts/bench-lab.sh [RUNS] [NODES] [PODS] [CONNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
nodes=${2:-10}
pods=${3:-100}
conns=${4:-20000}
if [ "$(id -u)" != 0 ]; then
    echo "bench-lab.sh needs root (network namespaces): run with sudo" >&2
    exit 2
fi
cargo build --release --quiet
bin=$PWD/target/release/kubectl-svclb
name="bench-$$"
trap '"$bin" lab down --name "$name" >/dev/null 2>&1 || true' EXIT

now() { date +%s.%N; }
since() { awk "BEGIN{printf \"%.3f\", $(now) - $1}"; }
echo "lab ${nodes} nodes x ${pods} pods, $(nproc) CPUs, kernel $(uname -r); storm: ${conns} TCP connections from pod-001 to the ClusterIP"
printf "%-9s %4s %8s %8s %9s %8s %10s %8s\n" mode run up_s set_s delete_s down_s conn_per_s p99_ms
for mode in nftables iptables; do
    for run in $(seq 1 "$runs"); do
        t=$(now)
        "$bin" lab up --name "$name" --nodes "$nodes" --pods "$pods" --proxy-mode "$mode" >/dev/null
        up=$(since "$t")
        alive=$("$bin" lab status --name "$name" -o json | grep -c '"alive": true' || true)
        if [ "$alive" != "$pods" ]; then
            echo "only $alive of $pods pods alive" >&2
            exit 1
        fi
        json=$("$bin" lab exec --name "$name" pod-001 -- "$bin" spread --address 10.96.0.10:5001 \
            --conns "$conns" --no-save -o json) || true # exit 1 is a FAIL verdict: the figures stand
        rate=$(echo "$json" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f" % (r["ok"] / r["duration_s"]))')
        p99=$(echo "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["latency_ms"]["p99"])')
        t=$(now)
        "$bin" lab set --name "$name" --session-affinity ClientIP >/dev/null
        set_s=$(since "$t")
        t=$(now)
        "$bin" lab delete-pod --name "$name" pod-002 --grace-period 0 >/dev/null
        delete=$(since "$t")
        t=$(now)
        "$bin" lab down --name "$name" >/dev/null
        down=$(since "$t")
        printf "%-9s %4d %8s %8s %9s %8s %10s %8s\n" "$mode" "$run" "$up" "$set_s" "$delete" "$down" "$rate" "$p99"
    done
done
