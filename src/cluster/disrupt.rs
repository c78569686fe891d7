//! `disruption` on a cluster: changing the tserver Deployment as kubectl does (`rollout restart`
//! patches the pod template's `kubectl.kubernetes.io/restartedAt` annotation, `scale` patches
//! `spec.replicas`, a pod deletion, `drain` cordons the node and evicts pods through the Eviction
//! API), waiting until the rollout is complete and the EndpointSlices are stable again, putting
//! back what was changed (replicas, the cordon), and following the EndpointSlices with a watch,
//! so each endpoint's steps (ready → terminating → not serving → removed) land on the run's axis.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::json;
use tokio::sync::mpsc;

use super::ops::{self, FIELD_MANAGER, SliceEndpoint, slice_endpoints};
use super::{ApiResult, Cluster, describe, not_found};
use crate::record::Step;

/// The annotation `kubectl rollout restart` sets on the pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// A Deployment as a disruption run needs it: replicas wanted, and whether the controller has
/// caught up with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub replicas: i32,
    pub generation: i64,
    pub observed_generation: i64,
    pub updated: i32,
    pub total: i32,
    pub available: i32,
}

impl Rollout {
    fn of(d: &Deployment) -> Rollout {
        let st = d.status.clone().unwrap_or_default();
        Rollout {
            replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            generation: d.metadata.generation.unwrap_or(0),
            observed_generation: st.observed_generation.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
            total: st.replicas.unwrap_or(0),
            available: st.available_replicas.unwrap_or(0),
        }
    }

    /// `kubectl rollout status`'s test: the controller saw the latest spec, every replica is
    /// updated and available, and no old one is left.
    pub fn complete(&self) -> bool {
        self.observed_generation >= self.generation
            && self.updated == self.replicas
            && self.total == self.replicas
            && self.available == self.replicas
    }
}

pub async fn rollout(c: &Cluster, deployment: &str) -> Result<Rollout> {
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), &c.namespace);
    let d = api.get(deployment).await.api("get", "deployments", &c.namespace)?;
    Ok(Rollout::of(&d))
}

fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// `kubectl scale deployment/NAME --replicas N`: a merge patch of `spec.replicas`.
pub async fn scale(c: &Cluster, deployment: &str, replicas: i32) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), &c.namespace);
    let patch = json!({"spec": {"replicas": replicas}});
    api.patch(deployment, &merge_params(), &Patch::Merge(&patch))
        .await
        .api("patch", "deployments", &c.namespace)?;
    Ok(())
}

/// `kubectl rollout restart deployment/NAME`: a strategic merge patch of the pod template's
/// `kubectl.kubernetes.io/restartedAt` annotation (RFC 3339), which makes a new ReplicaSet.
pub async fn restart(c: &Cluster, deployment: &str, at: jiff::Timestamp) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), &c.namespace);
    let stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}});
    api.patch(deployment, &merge_params(), &Patch::Strategic(&patch))
        .await
        .api("patch", "deployments", &c.namespace)?;
    Ok(())
}

/// `kubectl delete pod NAME [--grace-period S]`.
pub async fn delete_pod(c: &Cluster, pod: &str, grace: Option<u32>) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(c.client.clone(), &c.namespace);
    let params = DeleteParams {
        grace_period_seconds: grace,
        ..DeleteParams::default()
    };
    api.delete(pod, &params).await.api("delete", "pods", &c.namespace)?;
    Ok(())
}

/// Whether a node is cordoned (`spec.unschedulable`).
pub async fn unschedulable(c: &Cluster, node: &str) -> Result<bool> {
    let api: Api<Node> = Api::all(c.client.clone());
    let n = api.get(node).await.api("get", "nodes", "(cluster)")?;
    Ok(n.spec.and_then(|s| s.unschedulable).unwrap_or(false))
}

/// Sets a node's `spec.unschedulable` (`kubectl cordon` / `uncordon`); returns what it was.
pub async fn set_unschedulable(c: &Cluster, node: &str, on: bool) -> Result<bool> {
    let api: Api<Node> = Api::all(c.client.clone());
    let n = api.get(node).await.api("get", "nodes", "(cluster)")?;
    let was = n.spec.and_then(|s| s.unschedulable).unwrap_or(false);
    if was != on {
        let patch = json!({"spec": {"unschedulable": on}});
        api.patch(node, &merge_params(), &Patch::Merge(&patch))
            .await
            .api("patch", "nodes", "(cluster)")?;
    }
    Ok(was)
}

/// How long an eviction refused by a PodDisruptionBudget (429) is retried, and how often.
pub const EVICT_TIMEOUT: Duration = Duration::from_secs(120);
pub const EVICT_RETRY: Duration = Duration::from_secs(5);

/// Evicts `pod` through the Eviction API (`policy/v1`), as `kubectl drain` does: a 429 (a
/// PodDisruptionBudget allows no disruption now) is retried every `retry` until `timeout`.
pub async fn evict(c: &Cluster, pod: &str, grace: Option<u32>, timeout: Duration, retry: Duration) -> Result<()> {
    let mut body = json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": c.namespace},
    });
    if let Some(g) = grace {
        body["deleteOptions"] = json!({"gracePeriodSeconds": g});
    }
    let url = format!("/api/v1/namespaces/{}/pods/{pod}/eviction", c.namespace);
    let t0 = Instant::now();
    loop {
        let req = hyper::Request::post(&url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?)?;
        match c.client.request::<serde_json::Value>(req).await {
            Ok(_) => return Ok(()),
            Err(e) if not_found(&e) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 429 && t0.elapsed() < timeout => {
                eprintln!("svclb: eviction of {pod} refused for now ({}); retrying", s.message);
                tokio::time::sleep(retry).await;
            }
            Err(e) => return Err(super::api_error("create", "pods/eviction", &c.namespace, e)),
        }
    }
}

/// The Service's pods on `node`, by name (the ones a drain evicts).
pub async fn pods_on(c: &Cluster, app: &str, node: &str) -> Result<Vec<String>> {
    let api: Api<Pod> = Api::namespaced(c.client.clone(), &c.namespace);
    let list = api
        .list(&ListParams::default().labels(&ops::app_selector(app)))
        .await
        .api("list", "pods", &c.namespace)?;
    let mut out: Vec<String> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter_map(|p| p.metadata.name)
        .collect();
    out.sort();
    Ok(out)
}

/// Endpoints stable: exactly `replicas` ready endpoints in each family's slices (a dual-stack
/// Service has a slice per family), none terminating or starting, none of `gone` left.
pub fn slices_stable(eps: &[SliceEndpoint], replicas: i32, gone: &[String]) -> bool {
    let want = usize::try_from(replicas).unwrap_or(0);
    let families: BTreeSet<&str> = eps.iter().map(|e| e.address_type.as_str()).collect();
    let ready = |family: &str| eps.iter().filter(|e| e.ready && e.address_type == family).count();
    let complete = if families.is_empty() {
        want == 0
    } else {
        families.iter().all(|f| ready(f) == want)
    };
    complete && eps.iter().all(|e| e.ready && !e.terminating) && !eps.iter().any(|e| gone.contains(&e.pod))
}

/// Waits until the Deployment's rollout is complete and its Service's EndpointSlices are
/// stable ([`slices_stable`]), polling every `poll`; fails with where it stands at `timeout`.
pub async fn wait_stable(
    c: &Cluster,
    deployment: &str,
    service: &str,
    gone: &[String],
    timeout: Duration,
    poll: Duration,
) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let r = rollout(c, deployment).await?;
        let eps = ops::endpoint_slices(c, service).await?;
        if r.complete() && slices_stable(&eps, r.replicas, gone) {
            return Ok(());
        }
        if t0.elapsed() >= timeout {
            let ready = eps.iter().filter(|e| e.ready).count();
            bail!(
                "deployment {deployment} not stable after {}s: {} of {} replicas updated, {} available, {} in total; {ready} ready endpoint(s), {} terminating",
                timeout.as_secs(),
                r.updated,
                r.replicas,
                r.available,
                r.total,
                eps.iter().filter(|e| e.terminating).count()
            );
        }
        tokio::time::sleep(poll).await;
    }
}

/// An endpoint's step from its conditions; `was` is its last step (a pod that fails its
/// readiness probe without terminating stops serving; a starting one has no step yet).
pub fn step_of(e: &SliceEndpoint, was: Option<Step>) -> Option<Step> {
    match (e.ready, e.terminating, e.serving) {
        (true, _, _) => Some(Step::Ready),
        (false, true, true) => Some(Step::Terminating),
        (false, true, false) => Some(Step::NotServing),
        (false, false, _) => match was {
            Some(Step::Ready | Step::Terminating | Step::NotServing) => Some(Step::NotServing),
            other => other,
        },
    }
}

/// Per pod, its step now; the changes from `before` (a pod gone is `removed`). A pod in several
/// slices (one per family on a dual-stack Service) follows the first.
pub fn diff(before: &BTreeMap<String, Step>, eps: &[SliceEndpoint]) -> (BTreeMap<String, Step>, Vec<(String, Step)>) {
    let mut now = BTreeMap::new();
    let mut changes = Vec::new();
    let mut seen = BTreeSet::new();
    for e in eps {
        if !seen.insert(e.pod.as_str()) {
            continue;
        }
        let was = before.get(&e.pod).copied();
        if let Some(step) = step_of(e, was) {
            now.insert(e.pod.clone(), step);
            if was != Some(step) {
                changes.push((e.pod.clone(), step));
            }
        }
    }
    for pod in before.keys() {
        if !eps.iter().any(|e| &e.pod == pod) {
            changes.push((pod.clone(), Step::Removed));
        }
    }
    (now, changes)
}

/// An endpoint step as the watch saw it.
pub type Seen = (Instant, String, Step);

/// The EndpointSlices of a Service, followed by a watch (listed first; watched from that
/// resourceVersion; re-watched when a watch ends, re-listed when it expired).
pub struct SliceWatch {
    pub events: mpsc::UnboundedReceiver<Seen>,
    steps: Arc<Mutex<BTreeMap<String, Step>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SliceWatch {
    /// Lists the slices and opens the first watch (so RBAC refusals are one error now).
    pub async fn start(c: &Cluster, service: &str) -> Result<SliceWatch> {
        let api: Api<EndpointSlice> = Api::namespaced(c.client.clone(), &c.namespace);
        let selector = format!("kubernetes.io/service-name={service}");
        let ns = c.namespace.clone();
        let (mut slices, rv) = list(&api, &selector, &ns).await?;
        let (steps_now, _) = diff(&BTreeMap::new(), &flat(&slices));
        let steps = Arc::new(Mutex::new(steps_now));
        let wp = WatchParams::default().labels(&selector).timeout(290);
        let first = api.watch(&wp, &rv).await.api("watch", "endpointslices", &ns)?;
        let (tx, events) = mpsc::unbounded_channel();
        let shared = steps.clone();
        let task = tokio::spawn(async move {
            let mut rv = rv;
            let mut stream = Some(first.boxed());
            let mut told = false;
            loop {
                let s = match stream.take() {
                    Some(s) => s,
                    None => match api.watch(&wp, &rv).await {
                        Ok(s) => s.boxed(),
                        Err(e) => {
                            if !told {
                                eprintln!("svclb: the EndpointSlice watch failed ({}); retrying", describe(&e));
                                told = true;
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    },
                };
                let mut s = s;
                let mut relist = false;
                loop {
                    match s.try_next().await {
                        Ok(Some(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                            if let Some(v) = o.metadata.resource_version.clone() {
                                rv = v;
                            }
                            let name = o.metadata.name.clone().unwrap_or_default();
                            slices.insert(name, slice_endpoints(o));
                        }
                        Ok(Some(WatchEvent::Deleted(o))) => {
                            if let Some(v) = o.metadata.resource_version.clone() {
                                rv = v;
                            }
                            slices.remove(&o.metadata.name.clone().unwrap_or_default());
                        }
                        Ok(Some(WatchEvent::Bookmark(b))) => {
                            rv = b.metadata.resource_version;
                            continue;
                        }
                        // 410 Gone: the resourceVersion is too old; list again.
                        Ok(Some(WatchEvent::Error(_))) => {
                            relist = true;
                            break;
                        }
                        Ok(None) | Err(_) => break,
                    }
                    let at = Instant::now();
                    let mut steps = shared.lock().unwrap_or_else(|e| e.into_inner());
                    let (now, changes) = diff(&steps, &flat(&slices));
                    *steps = now;
                    for (pod, step) in changes {
                        let _ = tx.send((at, pod, step));
                    }
                }
                if relist {
                    match list(&api, &selector, &ns).await {
                        Ok((fresh, v)) => {
                            slices = fresh;
                            rv = v;
                            let at = Instant::now();
                            let mut steps = shared.lock().unwrap_or_else(|e| e.into_inner());
                            let (now, changes) = diff(&steps, &flat(&slices));
                            *steps = now;
                            for (pod, step) in changes {
                                let _ = tx.send((at, pod, step));
                            }
                        }
                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                    }
                }
            }
        });
        Ok(SliceWatch { events, steps, task })
    }

    /// The pods whose endpoints are ready now.
    pub fn ready(&self) -> Vec<String> {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps
            .iter()
            .filter(|(_, s)| **s == Step::Ready)
            .map(|(p, _)| p.clone())
            .collect()
    }
}

impl Drop for SliceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Slices = BTreeMap<String, Vec<SliceEndpoint>>;

async fn list(api: &Api<EndpointSlice>, selector: &str, ns: &str) -> Result<(Slices, String)> {
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .api("list", "endpointslices", ns)?;
    let rv = list
        .metadata
        .resource_version
        .clone()
        .ok_or_else(|| anyhow!("the EndpointSlice list has no resourceVersion"))?;
    let slices = list
        .items
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap_or_default(), slice_endpoints(s)))
        .collect();
    Ok((slices, rv))
}

fn flat(slices: &Slices) -> Vec<SliceEndpoint> {
    slices.values().flatten().cloned().collect()
}

#[cfg(test)]
mod tests;
