//! Object builders for tests: nodes, pods, the tserver Service and its EndpointSlice, the
//! kube-proxy ConfigMap, and the API path of an object.

use serde_json::{Value, json};

use super::NS;

/// The API path of an object.
pub fn path_of(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap();
    let kind = obj["kind"].as_str().unwrap();
    let name = obj["metadata"]["name"].as_str().unwrap();
    let plural = match kind {
        "EndpointSlice" => "endpointslices".to_string(),
        "ConfigMap" => "configmaps".to_string(),
        k => format!("{}s", k.to_lowercase()),
    };
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}/{name}"),
        None => format!("{prefix}/{plural}/{name}"),
    }
}

pub fn node(name: &str, zone: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": zone}},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

pub fn pod(name: &str, app: &str, node: &str, ip: &str, ready: bool) -> Value {
    let r = if ready { "True" } else { "False" };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "kubectl-svclb",
                       "pod-template-hash": "7d9f"}},
        "spec": {"nodeName": node, "containers": [{"name": "tserver", "image": "ghcr.io/kubectl-svclb/kubectl-svclb:v0.1.0"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "172.18.0.2",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": r},
                           {"type": "ContainersReady", "status": r}]}
    })
}

/// The tserver Service as the API returns it (allocated clusterIP and nodePorts).
pub fn service(type_: &str, cluster_ip: &str, spec_extra: Value, lb_ip: Option<&str>) -> Value {
    let mut spec = json!({
        "type": type_, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
        "selector": {"app.kubernetes.io/name": "svclb-tserver"}, "sessionAffinity": "None",
        "externalTrafficPolicy": "Cluster", "internalTrafficPolicy": "Cluster",
        "ports": [
            {"name": "tcp", "port": 5001, "protocol": "TCP", "targetPort": "tcp", "nodePort": 30501},
            {"name": "udp", "port": 5001, "protocol": "UDP", "targetPort": "udp", "nodePort": 30501},
            {"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http", "nodePort": 30880}]
    });
    for (k, v) in spec_extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let ingress = lb_ip
        .map(|ip| json!([{"ip": ip, "ipMode": "VIP"}]))
        .unwrap_or(json!([]));
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "svclb-tserver", "namespace": NS,
            "labels": {"app.kubernetes.io/name": "svclb-tserver", "app.kubernetes.io/managed-by": "kubectl-svclb"}},
        "spec": spec,
        "status": {"loadBalancer": {"ingress": ingress}}
    })
}

/// An EndpointSlice of the tserver Service: `(pod, ip, zone, hints)`.
pub fn slice(endpoints: &[(&str, &str, &str, &[&str])]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(pod, ip, zone, hints)| {
            let mut e = json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}, "zone": zone});
            if !hints.is_empty() {
                e["hints"] = json!({"forZones": hints.iter().map(|z| json!({"name": z})).collect::<Vec<_>>()});
            }
            e
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "svclb-tserver-abcde", "namespace": NS,
            "labels": {"kubernetes.io/service-name": "svclb-tserver", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "tcp", "port": 5001, "protocol": "TCP"}]
    })
}

/// `service(...)` or `slice(...)` made for another app (`svclb-affinity`): name, labels, selector.
pub fn for_app(mut obj: Value, app: &str) -> Value {
    let name = if obj["kind"] == "EndpointSlice" {
        obj["metadata"]["labels"]["kubernetes.io/service-name"] = json!(app);
        format!("{app}-abcde")
    } else {
        obj["metadata"]["labels"]["app.kubernetes.io/name"] = json!(app);
        obj["spec"]["selector"]["app.kubernetes.io/name"] = json!(app);
        app.to_string()
    };
    obj["metadata"]["name"] = json!(name);
    obj
}

pub fn kube_proxy_configmap(mode: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
        "data": {"config.conf": format!("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: {mode}\n")}
    })
}
