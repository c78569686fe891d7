#!/usr/bin/env bash
# Measures `lab up` / `lab down` of a 10-node, 100-pod lab on a release build, for both
# proxy modes. Needs root. Usage: sudo scripts/bench-lab.sh [RUNS] [NODES] [PODS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
nodes=${2:-10}
pods=${3:-100}
if [ "$(id -u)" != 0 ]; then
    echo "bench-lab.sh needs root (network namespaces): run with sudo" >&2
    exit 2
fi
cargo build --release --quiet
bin=target/release/kubectl-svclb
name="bench-$$"
trap '"$bin" lab down --name "$name" >/dev/null 2>&1 || true' EXIT

now() { date +%s.%N; }
echo "lab ${nodes} nodes x ${pods} pods, $(nproc) CPUs, kernel $(uname -r)"
printf "%-9s %4s %8s %8s\n" mode run up_s down_s
for mode in nftables iptables; do
    for run in $(seq 1 "$runs"); do
        t0=$(now)
        "$bin" lab up --name "$name" --nodes "$nodes" --pods "$pods" --proxy-mode "$mode" >/dev/null
        t1=$(now)
        alive=$("$bin" lab status --name "$name" -o json | grep -c '"alive": true' || true)
        if [ "$alive" != "$pods" ]; then
            echo "only $alive of $pods pods alive" >&2
            exit 1
        fi
        t2=$(now)
        "$bin" lab down --name "$name" >/dev/null
        t3=$(now)
        printf "%-9s %4d %8.2f %8.2f\n" "$mode" "$run" "$(awk "BEGIN{print $t1 - $t0}")" "$(awk "BEGIN{print $t3 - $t2}")"
    done
done
