//! The EndpointSlice controller for Services applied through the API.

use serde_json::{Value, json};

use super::objects::path_of;
use super::{NS, State};

/// The EndpointSlice controller, at every list of EndpointSlices by Service: an applied Service
/// with a selector gets its slice once `slice_reads` lists of it went by, made from the pods
/// its selector matches (pod IP, readiness, node, the node's zone, and the hints of its
/// trafficDistribution: each endpoint its own zone, with PreferSameNode its own node too).
pub(super) fn endpoint_slice_controller(st: &mut State, query: &str) {
    let Some(service) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("labelSelector="))
        .map(|s| s.replace("%3D", "=").replace("%2F", "/"))
        .and_then(|s| s.strip_prefix("kubernetes.io/service-name=").map(str::to_string))
    else {
        return;
    };
    let Some(c) = st.controllers.as_mut() else { return };
    match c.pending.get_mut(&service) {
        None => return,
        Some(left) if *left > 0 => {
            *left -= 1;
            return;
        }
        Some(_) => {}
    }
    let Some(svc) = st
        .objects
        .get(&format!("/api/v1/namespaces/{NS}/services/{service}"))
        .cloned()
    else {
        return;
    };
    let selector: Vec<(String, String)> = svc["spec"]["selector"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let td = svc["spec"]["trafficDistribution"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let families: Vec<String> = svc["spec"]["ipFamilies"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_else(|| vec!["IPv4".into()]);
    let pods: Vec<Value> = st
        .objects
        .iter()
        .filter(|(p, _)| p.starts_with(&format!("/api/v1/namespaces/{NS}/pods/")))
        .map(|(_, o)| o.clone())
        .filter(|o| selector.iter().all(|(k, v)| o["metadata"]["labels"][k] == v.as_str()))
        .collect();
    // One slice per family, each endpoint at its pod's IP of that family.
    for family in families {
        let mut endpoints = Vec::new();
        for p in &pods {
            let ips: Vec<&str> = match p["status"]["podIPs"].as_array() {
                Some(ips) => ips.iter().filter_map(|i| i["ip"].as_str()).collect(),
                None => p["status"]["podIP"].as_str().into_iter().collect(),
            };
            let Some(ip) = ips.into_iter().find(|ip| ip.contains(':') == (family == "IPv6")) else {
                continue;
            };
            let ready = p["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
            let zone = st
                .objects
                .get(&format!("/api/v1/nodes/{node}"))
                .and_then(|n| n["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str())
                .unwrap_or_default()
                .to_string();
            let mut e = json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "nodeName": node, "zone": zone,
            "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": NS}});
            if td.starts_with("Prefer") && !zone.is_empty() {
                e["hints"] = json!({"forZones": [{"name": zone}]});
                if td == "PreferSameNode" {
                    e["hints"]["forNodes"] = json!([{"name": node}]);
                }
            }
            endpoints.push(e);
        }
        let name = if family == "IPv6" {
            format!("{service}-auto-v6")
        } else {
            format!("{service}-auto")
        };
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NS,
                "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": family,
            "endpoints": endpoints,
            "ports": [{"name": "tcp", "port": 5001, "protocol": "TCP"}, {"name": "udp", "port": 5001, "protocol": "UDP"}]
        });
        let path = path_of(&slice);
        if st.objects.get(&path) != Some(&slice) {
            st.set(&path, slice);
        }
    }
}
