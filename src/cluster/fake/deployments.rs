//! The live Deployment controller ([`super::FakeApi::rollouts`]): rollouts, scaling, pod
//! termination and eviction, one step per read.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::objects::{path_of, pod, slice};
use super::{NS, State, status};

/// The live controller's pods in transition, by path: steps (reads) left in their phase.
#[derive(Default)]
pub(super) struct Rollouts {
    /// Starting: not ready yet.
    pub(super) starting: BTreeMap<String, u32>,
    /// Terminating: serving for the first steps, then not serving, then gone.
    pub(super) terminating: BTreeMap<String, u32>,
    /// Pods made so far (names are `<deployment>-<hash>-<n>`).
    pub(super) made: u32,
    /// Pods the controller makes never become ready.
    pub(super) stuck: bool,
    /// Evictions refused with 429 (a PodDisruptionBudget) before one is allowed.
    pub(super) refuse_evictions: u32,
}

/// Steps a live pod takes to become ready; to stop serving once terminating; to go.
pub const STARTING_STEPS: u32 = 2;
pub const SERVING_STEPS: u32 = 2;
pub const GONE_STEPS: u32 = 4;

/// The eviction of the pod at `pod`: terminating as a deletion, or 429 while refused.
pub(super) fn evict(st: &mut State, pod: &str) -> (u16, Value) {
    if !st.objects.contains_key(pod) {
        return status(404, "NotFound", &format!("{pod} not found"));
    }
    if let Some(r) = st.rollouts.as_mut()
        && r.refuse_evictions > 0
    {
        r.refuse_evictions -= 1;
        return status(
            429,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.",
        );
    }
    if st.rollouts.is_some() {
        terminate(st, pod);
    } else {
        st.unset(pod);
    }
    (201, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
}

/// A pod is deleted: it terminates (its deletionTimestamp set) and goes after a few steps.
pub(super) fn terminate(st: &mut State, path: &str) -> Value {
    let mut pod = st.objects[path].clone();
    if pod["metadata"].get("deletionTimestamp").is_none() {
        pod["metadata"]["deletionTimestamp"] = json!("2026-11-24T10:00:00Z");
        let r = st.rollouts.as_mut().expect("live");
        r.starting.remove(path);
        r.terminating.insert(path.to_string(), SERVING_STEPS + GONE_STEPS);
        st.set(path, pod.clone());
    }
    pod
}

/// A short stable hash of a pod template (its annotations change with `rollout restart`).
fn template_hash(d: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    d["spec"]["template"].to_string().hash(&mut h);
    format!("{:06x}", h.finish() & 0xff_ffff)
}

/// One step of the live Deployment controller (and kubelet, and EndpointSlice controller).
pub(super) fn step(st: &mut State) {
    let Some(mut r) = st.rollouts.take() else { return };
    // Pods in transition move on.
    for left in r.starting.values_mut().chain(r.terminating.values_mut()) {
        *left = left.saturating_sub(1);
    }
    let started: Vec<String> = r
        .starting
        .iter()
        .filter(|(_, l)| **l == 0)
        .map(|(p, _)| p.clone())
        .collect();
    for p in started {
        r.starting.remove(&p);
        if let Some(mut pod) = st.objects.get(&p).cloned() {
            pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]);
            st.set(&p, pod);
        }
    }
    let gone: Vec<String> = r
        .terminating
        .iter()
        .filter(|(_, l)| **l == 0)
        .map(|(p, _)| p.clone())
        .collect();
    for p in gone {
        r.terminating.remove(&p);
        st.unset(&p);
    }
    let deployments: Vec<(String, Value)> = st
        .objects
        .iter()
        .filter(|(_, o)| o["kind"] == "Deployment")
        .map(|(p, o)| (p.clone(), o.clone()))
        .collect();
    let nodes: Vec<(String, bool)> = st
        .objects
        .values()
        .filter(|o| o["kind"] == "Node")
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap_or("").to_string(),
                n["spec"]["unschedulable"] == true,
            )
        })
        .collect();
    for (path, mut d) in deployments {
        let name = d["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let want = d["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let hash = template_hash(&d);
        let pods: Vec<(String, Value)> = st
            .objects
            .iter()
            .filter(|(_, o)| o["kind"] == "Pod" && o["metadata"]["labels"]["app.kubernetes.io/name"] == name.as_str())
            .filter(|(_, o)| o["metadata"].get("deletionTimestamp").is_none())
            .map(|(p, o)| (p.clone(), o.clone()))
            .collect();
        let ready = |o: &Value| {
            o["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        };
        let (new, old): (Vec<_>, Vec<_>) = pods
            .iter()
            .partition(|(_, o)| o["metadata"]["labels"]["pod-template-hash"] == hash.as_str());
        let ready_count = pods.iter().filter(|(_, o)| ready(o)).count();
        // Old pods go as new ones are ready (maxUnavailable 0); extra new ones go (scale down).
        if !old.is_empty() && ready_count > want {
            terminate_in(st, &mut r, &old[0].0);
        } else if old.is_empty() && new.len() > want {
            terminate_in(st, &mut r, &new[new.len() - 1].0);
        }
        // New pods up to the replicas, one over while old ones remain (maxSurge 1).
        let total = new.len() + old.len();
        let cap = if old.is_empty() { want } else { want + 1 };
        if new.len() < want && total < cap {
            let schedulable: Vec<&String> = nodes.iter().filter(|(_, c)| !c).map(|(n, _)| n).collect();
            if let Some(node) = schedulable.get(r.made as usize % schedulable.len().max(1)) {
                r.made += 1;
                while st
                    .objects
                    .keys()
                    .any(|k| k.ends_with(&format!("/pods/{name}-{hash}-{}", r.made)))
                {
                    r.made += 1;
                }
                let n = node.rsplit('-').next().unwrap_or("9").parse::<u32>().unwrap_or(9);
                let mut p = pod(
                    &format!("{name}-{hash}-{}", r.made),
                    &name,
                    node,
                    &format!("10.244.{n}.{}", 100 + r.made),
                    false,
                );
                p["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let pp = path_of(&p);
                if !r.stuck {
                    r.starting.insert(pp.clone(), STARTING_STEPS);
                }
                st.set(&pp, p);
            }
        }
        // Status, as the controller reports it.
        let pods_now: Vec<Value> = st
            .objects
            .values()
            .filter(|o| o["kind"] == "Pod" && o["metadata"]["labels"]["app.kubernetes.io/name"] == name.as_str())
            .filter(|o| o["metadata"].get("deletionTimestamp").is_none())
            .cloned()
            .collect();
        let updated = pods_now
            .iter()
            .filter(|o| o["metadata"]["labels"]["pod-template-hash"] == hash.as_str())
            .count();
        let ready_now = pods_now.iter().filter(|o| ready(o)).count();
        let status = json!({"observedGeneration": d["metadata"]["generation"].clone(), "replicas": pods_now.len(),
            "updatedReplicas": updated, "readyReplicas": ready_now, "availableReplicas": ready_now});
        if d["status"] != status {
            d["status"] = status;
            st.set(&path, d);
        }
        // The Service's EndpointSlice: every pod with an IP, its conditions from its phase.
        let slice_path = format!("/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/{name}-abcde");
        let mut eps = Vec::new();
        for (pp, o) in st
            .objects
            .iter()
            .filter(|(_, o)| o["kind"] == "Pod" && o["metadata"]["labels"]["app.kubernetes.io/name"] == name.as_str())
        {
            let term = o["metadata"].get("deletionTimestamp").is_some();
            let serving = if term {
                r.terminating.get(pp).is_some_and(|l| *l > GONE_STEPS)
            } else {
                ready(o)
            };
            eps.push(json!({"addresses": [o["status"]["podIP"]],
                "conditions": {"ready": ready(o) && !term, "serving": serving, "terminating": term},
                "nodeName": o["spec"]["nodeName"],
                "targetRef": {"kind": "Pod", "name": o["metadata"]["name"], "namespace": NS}}));
        }
        let mut slice = st.objects.get(&slice_path).cloned().unwrap_or_else(|| {
            let mut s = slice(&[]);
            s["metadata"]["name"] = json!(format!("{name}-abcde"));
            s["metadata"]["labels"]["kubernetes.io/service-name"] = json!(name);
            s
        });
        if slice["endpoints"] != json!(eps) {
            slice["endpoints"] = json!(eps);
            st.set(&slice_path, slice);
        }
    }
    st.rollouts = Some(r);
}

/// [`terminate`] while the controller holds its state.
fn terminate_in(st: &mut State, r: &mut Rollouts, path: &str) {
    let mut pod = st.objects[path].clone();
    pod["metadata"]["deletionTimestamp"] = json!("2026-11-24T10:00:00Z");
    r.starting.remove(path);
    r.terminating.insert(path.to_string(), SERVING_STEPS + GONE_STEPS);
    st.set(path, pod);
}
