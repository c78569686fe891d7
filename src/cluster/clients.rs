//! Client pods for `zones` on a cluster: short-lived pods of the plugin's own image pinned with
//! `nodeName` to one node of every zone (or to every node), so that every zone has a client even
//! where no tserver pod runs. Their main process (the arguments the run gives: an agent that
//! holds) runs until the pod is deleted; the run's storm agents exec into them. They carry the plugin's labels (`cleanup`
//! deletes them) and the run's (`app.kubernetes.io/instance`), so that concurrent runs keep apart.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

use super::manifests::{MANAGED_BY, TSERVER};
use super::ops::{self, NodeInfo, PodInfo};
use super::{ApiResult, Cluster, not_found};

pub use super::manifests::CLIENT;
/// The client pods' container.
pub const CONTAINER: &str = "client";
/// How long a run waits for its client pods to run, and how often it looks.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
pub const START_POLL: Duration = Duration::from_millis(500);

/// The nodes that get a client: per zone, the first ready node of each zone by name (nodes
/// without a zone label count as one zone, ""); else every ready node. A node that is not ready
/// gets none: its kube-proxy may not be programming anything.
pub fn pick_nodes(nodes: &[NodeInfo], per_zone: bool) -> Vec<NodeInfo> {
    let mut ready: Vec<NodeInfo> = nodes.iter().filter(|n| n.ready).cloned().collect();
    ready.sort_by(|a, b| a.name.cmp(&b.name));
    if per_zone {
        let mut out: Vec<NodeInfo> = Vec::new();
        for n in ready {
            if !out.iter().any(|o| o.zone == n.zone) {
                out.push(n);
            }
        }
        out
    } else {
        ready
    }
}

/// A client pod's name: `svclb-client-<run>-<index>` (node names can be longer than a pod
/// name may be).
pub fn pod_name(run: &str, index: usize) -> String {
    format!("{CLIENT}-{run}-{index}")
}

/// The client pod on `node`: the restricted profile of the tserver, no Service links, no API
/// token, never restarted; its process holds until the pod is deleted.
pub fn pod(run: &str, index: usize, node: &str, image: &str, namespace: &str, args: &[String]) -> Value {
    let labels = json!({
        "app.kubernetes.io/name": CLIENT,
        "app.kubernetes.io/component": "client",
        "app.kubernetes.io/instance": run,
        MANAGED_BY.0: MANAGED_BY.1,
    });
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name(run, index), "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "containers": [{
                "name": CONTAINER,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": args,
                "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
                "securityContext": {
                    "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}
                }
            }]
        }
    })
}

/// A client pod on the node's own network (`hostNetwork: true`): `matrix`'s node rows. Cluster
/// DNS still answers it (`dnsPolicy: ClusterFirstWithHostNet`); otherwise restricted like the
/// others, but `hostNetwork` is refused by the `baseline` and `restricted` Pod Security levels:
/// the namespace must admit it (`privileged`).
pub fn host_pod(run: &str, index: usize, node: &str, image: &str, namespace: &str, args: &[String]) -> Value {
    let mut p = pod(run, index, node, image, namespace, args);
    p["metadata"]["labels"]["app.kubernetes.io/component"] = json!("host-client");
    p["spec"]["hostNetwork"] = json!(true);
    p["spec"]["dnsPolicy"] = json!("ClusterFirstWithHostNet");
    p
}

/// How a client pod's creation went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Created: its name.
    Pod(String),
    /// Refused by admission (Pod Security, a policy webhook): the API's message. Not by RBAC:
    /// that is an error.
    Refused(String),
}

/// A refusal by an admission controller rather than RBAC: a 403 that is not RBAC's "cannot
/// create resource", or a 400/422 from a validating webhook.
fn admission_refusal(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) if matches!(s.code, 400 | 422) => Some(s.message.clone()),
        kube::Error::Api(s) if s.code == 403 && !s.message.contains("cannot create resource") => {
            Some(s.message.clone())
        }
        _ => None,
    }
}

/// Where a client pod is on its way to running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Running,
    Starting,
    /// It will not run: why.
    Failed(String),
}

/// A client pod's progress from its status: running once its phase is Running and it is
/// ready; failed on an image or container error, or when it ended (`restartPolicy: Never`).
pub fn progress(pod: &Pod) -> Progress {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    if let Some(problem) = ops::pod_problem(pod, Duration::ZERO) {
        return Progress::Failed(problem);
    }
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Running") if ops::pod_ready(pod) => Progress::Running,
        Some(phase @ ("Succeeded" | "Failed")) => {
            let why = pod.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default();
            Progress::Failed(format!("client pod {name} ended ({phase}) before the run: {why}"))
        }
        _ => Progress::Starting,
    }
}

/// The image of the deployed tserver (the one this cluster pulls): the client pods run it.
pub async fn server_image(c: &Cluster) -> Result<String> {
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), &c.namespace);
    let d = api.get(TSERVER).await.api("get", "deployments", &c.namespace)?;
    d.spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.image)
        .ok_or_else(|| anyhow!("deployment {TSERVER} has no container image"))
}

/// The client pods of one run: what was created (so that it is deleted whatever happens next).
pub struct ClientPods {
    cluster: Cluster,
    /// The arguments of each pod's main process (the image's entrypoint is the plugin).
    args: Vec<String>,
    pub run: String,
    pub names: Vec<String>,
    /// The index of the next pod's name.
    next: usize,
}

impl ClientPods {
    pub fn new(cluster: &Cluster, args: Vec<String>) -> Self {
        Self {
            cluster: cluster.clone(),
            args,
            run: format!("{:08x}", rand::random::<u32>()),
            names: Vec::new(),
            next: 0,
        }
    }

    /// Creates a client pod on each of `nodes` and waits until every one runs (fails early
    /// with a pod's own reason, or at `timeout`). Returns them placed on their nodes and zones.
    /// Every pod that may have been created is in `names` even when this fails or is dropped
    /// (an interrupt): a name goes in before its pod is asked for.
    pub async fn start(
        &mut self,
        nodes: &[NodeInfo],
        image: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<Vec<PodInfo>> {
        for n in nodes {
            if let Created::Refused(why) = self.create(&n.name, image, false).await? {
                bail!("the client pod on {} was refused: {why}", n.name);
            }
        }
        eprintln!(
            "svclb: started {} client pod(s) ({}) in {}",
            self.names.len(),
            nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
            self.cluster.namespace
        );
        self.wait(nodes, timeout, poll).await
    }

    /// Creates one client pod on `node`, on the pod network or the node's own
    /// (`host_network`). Its name is in `names` before it is asked for, and taken out again
    /// when admission refuses it.
    pub async fn create(&mut self, node: &str, image: &str, host_network: bool) -> Result<Created> {
        let ns = self.cluster.namespace.clone();
        let api: Api<Pod> = Api::namespaced(self.cluster.client.clone(), &ns);
        let params = PostParams {
            field_manager: Some(super::ops::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let i = self.next;
        self.next += 1;
        let obj = if host_network {
            host_pod(&self.run, i, node, image, &ns, &self.args)
        } else {
            pod(&self.run, i, node, image, &ns, &self.args)
        };
        let obj: Pod = serde_json::from_value(obj)?;
        let name = pod_name(&self.run, i);
        self.names.push(name.clone());
        match api.create(&params, &obj).await {
            Ok(_) => Ok(Created::Pod(name)),
            Err(e) => {
                if let Some(why) = admission_refusal(&e) {
                    self.names.retain(|n| *n != name);
                    return Ok(Created::Refused(why));
                }
                Err(super::api_error("create", "pods", &ns, e))
            }
        }
    }

    /// Waits until every pod in `names` runs (fails early with a pod's own reason, or at
    /// `timeout`); returns them placed on their nodes (of `nodes`) and zones.
    pub async fn wait(&self, nodes: &[NodeInfo], timeout: Duration, poll: Duration) -> Result<Vec<PodInfo>> {
        let ns = self.cluster.namespace.clone();
        let api: Api<Pod> = Api::namespaced(self.cluster.client.clone(), &ns);
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={}", self.run));
        let t0 = Instant::now();
        loop {
            let list = api.list(&lp).await.api("list", "pods", &ns)?;
            let mut running = 0;
            for p in list
                .items
                .iter()
                .filter(|p| p.metadata.name.as_ref().is_some_and(|n| self.names.contains(n)))
            {
                match progress(p) {
                    Progress::Running => running += 1,
                    Progress::Starting => {}
                    Progress::Failed(why) => bail!("{why}"),
                }
            }
            if running == self.names.len() {
                break;
            }
            if t0.elapsed() >= timeout {
                bail!(
                    "{running} of {} client pods running after {}s: see `kubectl get pods -n {ns} -l app.kubernetes.io/instance={}`",
                    self.names.len(),
                    timeout.as_secs(),
                    self.run
                );
            }
            tokio::time::sleep(poll).await;
        }
        let all = ops::pods(&self.cluster, CLIENT, nodes).await?;
        Ok(all.into_iter().filter(|p| self.names.contains(&p.name)).collect())
    }

    /// Deletes the pods created (already gone is fine). A failure is told, not returned: the
    /// run's record is still saved, and `kubectl svclb cleanup` finds them by their labels.
    pub async fn delete(&self) {
        let ns = &self.cluster.namespace;
        let api: Api<Pod> = Api::namespaced(self.cluster.client.clone(), ns);
        let mut failed = Vec::new();
        for name in &self.names {
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => failed.push(format!("{name}: {}", super::describe(&e))),
            }
        }
        if !failed.is_empty() {
            eprintln!(
                "svclb: deleting client pods failed ({}): run `kubectl svclb cleanup -n {ns}` later",
                failed.join("; ")
            );
        }
    }
}

#[cfg(test)]
mod tests;
