#!/usr/bin/env bash
# Validates the bundled manifests, and renderings with every option, against the Kubernetes
# OpenAPI schemas offline (kubernetes-validate, strict: unknown fields fail).
# Usage: scripts/validate-manifests.sh [path/to/kubectl-svclb]   (needs kubernetes-validate on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/kubectl-svclb}
k8s=${K8S_SCHEMA_VERSION:-1.33.0}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cp manifests/*.yaml "$out/"
# --kubeconfig /dev/null: rendering is offline, never reads the user's kubeconfig.
render() { local name=$1; shift; "$bin" manifests --kubeconfig /dev/null "$@" >"$out/$name.yaml"; }
render default -n svclb
render all-options -n lb-test --replicas 12 --image registry.example/svclb:dev \
    --service-type LoadBalancer --session-affinity ClientIP --affinity-timeout 60 \
    --external-traffic-policy Local --internal-traffic-policy Local \
    --traffic-distribution PreferClose --affinity-server
render same-node -n svclb --traffic-distribution PreferSameNode
render dual-stack -n svclb --ip-family-policy PreferDualStack --ip-families IPv6,IPv4 --affinity-server
render single-v6 -n svclb --ip-family-policy SingleStack --ip-families IPv6
render rbac -n team-a --rbac
kubernetes-validate --strict --quiet -k "$k8s" "$out"/*.yaml
echo "manifests valid against Kubernetes $k8s schemas: $(ls "$out" | tr '\n' ' ')"
