//! deploy, status and cleanup against the API (server-side apply, field manager `kubectl-svclb`).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde::Serialize;
use serde_json::Value;

use super::manifests::MANAGED_BY;
use super::{ApiResult, Cluster, not_found};
use crate::service::IpFamily;

pub const FIELD_MANAGER: &str = "kubectl-svclb";

/// The API resource of a bundled object, and whether it is namespaced.
fn resource_of(obj: &Value) -> Result<(ApiResource, bool)> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let (plural, namespaced) = match kind {
        "Deployment" => ("deployments", true),
        "Service" => ("services", true),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        other => bail!("cannot apply a {other}: not a kind the plugin manages"),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

/// Server-side applies the objects (field manager `kubectl-svclb`, conflicts forced: the plugin
/// owns these objects). Returns `kind/name` of each.
pub async fn apply(cluster: &Cluster, objs: &[Value]) -> Result<Vec<String>> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut applied = Vec::new();
    for obj in objs {
        let (ar, namespaced) = resource_of(obj)?;
        let dynamic: DynamicObject = serde_json::from_value(obj.clone())?;
        let name = dynamic.metadata.name.clone().unwrap_or_default();
        let ns = dynamic
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| cluster.namespace.clone());
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(cluster.client.clone(), &ns, &ar)
        } else {
            Api::all_with(cluster.client.clone(), &ar)
        };
        api.patch(&name, &params, &Patch::Apply(&dynamic))
            .await
            .api("apply (create/patch)", &ar.plural, &ns)?;
        applied.push(format!("{}/{name}", ar.kind.to_lowercase()));
    }
    Ok(applied)
}

/// Why a pod cannot become ready, from its status (image pulls, scheduling, crashes).
pub fn pod_problem(pod: &Pod, pending_for: Duration) -> Option<String> {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let status = pod.status.as_ref()?;
    for cs in status.container_statuses.iter().flatten() {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or_default();
            if matches!(
                reason,
                "ErrImagePull"
                    | "ImagePullBackOff"
                    | "InvalidImageName"
                    | "CrashLoopBackOff"
                    | "CreateContainerConfigError"
                    | "CreateContainerError"
                    | "RunContainerError"
            ) {
                let msg = w.message.as_deref().unwrap_or_default();
                let hint = if reason.contains("Image") {
                    "; give a pullable image with --image"
                } else {
                    ""
                };
                return Some(format!("pod {name}: {reason}: {msg}{hint}"));
            }
        }
    }
    // Unschedulable can clear (autoscaler, a node joining): report it when it lasts.
    if pending_for >= Duration::from_secs(10) {
        for c in status.conditions.iter().flatten() {
            if c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable") {
                return Some(format!(
                    "pod {name} cannot be scheduled: {}",
                    c.message.as_deref().unwrap_or("Unschedulable")
                ));
            }
        }
    }
    None
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Label selector of the pods of one app (`svclb-tserver`, `svclb-affinity`).
pub fn app_selector(app: &str) -> String {
    format!("app.kubernetes.io/name={app},{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

/// Waits until the Deployment `name` has all its replicas updated and ready. Fails early with
/// the pod's own reason when pods cannot start; `poll` is the period between checks.
pub async fn wait_ready(cluster: &Cluster, name: &str, timeout: Duration, poll: Duration) -> Result<()> {
    let ns = &cluster.namespace;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let start = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {bar:30} {pos}/{len} pods ready {elapsed}")
                .expect("static template"),
        );
        bar.set_message(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let result = async {
        loop {
            let d = deployments.get(name).await.api("get", "deployments", ns)?;
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u64;
            let st = d.status.clone().unwrap_or_default();
            let generation_seen = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
            let list = pods
                .list(&ListParams::default().labels(&app_selector(name)))
                .await
                .api("list", "pods", ns)?;
            let ready = list.items.iter().filter(|p| pod_ready(p)).count() as u64;
            if let Some(bar) = &bar {
                bar.set_length(want);
                bar.set_position(ready.min(want));
            }
            if generation_seen
                && st.updated_replicas.unwrap_or(0) as u64 == want
                && st.ready_replicas.unwrap_or(0) as u64 == want
                && st.replicas.unwrap_or(0) as u64 == want
                && ready >= want
            {
                return Ok(());
            }
            for p in &list.items {
                if let Some(problem) = pod_problem(p, start.elapsed()) {
                    bail!("{problem}");
                }
            }
            if start.elapsed() >= timeout {
                bail!(
                    "deployment {name}: {ready}/{want} pods ready after {}s; see `kubectl svclb status` \
                     (a longer --wait-timeout may help)",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(poll).await;
        }
    }
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

/// Deletes every Deployment and Service labelled as made by the plugin in the namespace, and
/// the client pods `zones` runs left (a run killed before it deleted them). Returns `kind/name`
/// of what was deleted.
pub async fn cleanup(cluster: &Cluster) -> Result<Vec<String>> {
    let ns = &cluster.namespace;
    let lp = ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let dp = DeleteParams::background();
    let mut deleted = Vec::new();
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    for d in deployments.list(&lp).await.api("list", "deployments", ns)? {
        let name = d.metadata.name.unwrap_or_default();
        match deployments.delete(&name, &dp).await {
            Err(e) if not_found(&e) => {}
            r => {
                r.api("delete", "deployments", ns)?;
                deleted.push(format!("deployment/{name}"));
            }
        }
    }
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), ns);
    for s in services.list(&lp).await.api("list", "services", ns)? {
        let name = s.metadata.name.unwrap_or_default();
        match services.delete(&name, &dp).await {
            Err(e) if not_found(&e) => {}
            r => {
                r.api("delete", "services", ns)?;
                deleted.push(format!("service/{name}"));
            }
        }
    }
    // The servers' pods go with their Deployments; only the client pods stand alone.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let clients = ListParams::default().labels(&app_selector(super::manifests::CLIENT));
    for p in pods.list(&clients).await.api("list", "pods", ns)? {
        let name = p.metadata.name.unwrap_or_default();
        match pods.delete(&name, &dp).await {
            Err(e) if not_found(&e) => {}
            r => {
                r.api("delete", "pods", ns)?;
                deleted.push(format!("pod/{name}"));
            }
        }
    }
    Ok(deleted)
}

/// kube-proxy's mode from its ConfigMap (kubeadm, kind), when the cluster exposes it to us.
/// An empty mode is kube-proxy's default, iptables on Linux.
pub async fn proxy_mode(cluster: &Cluster) -> Option<String> {
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "kube-system");
    let cm = cms.get_opt("kube-proxy").await.ok()??;
    let conf = cm.data?.get("config.conf")?.clone();
    let parsed: Value = serde_saphyr::from_str(&conf).ok()?;
    match parsed.get("mode").and_then(Value::as_str) {
        Some("") | None => Some("iptables".into()),
        Some(m) => Some(m.to_string()),
    }
}

/// The first of `addresses` that is an IP of `family`.
pub fn of_family(addresses: &[String], family: IpFamily) -> Option<IpAddr> {
    addresses
        .iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .find(|ip| IpFamily::of(ip) == family)
}

/// Node facts the plugin uses: zone (label `topology.kubernetes.io/zone`) and addresses.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub zone: String,
    /// `status.addresses` of type InternalIP (a dual-stack node has one per family).
    pub internal_ips: Vec<String>,
    /// Those of type ExternalIP.
    pub external_ips: Vec<String>,
    /// The node's Ready condition is True.
    pub ready: bool,
}

impl NodeInfo {
    /// The node's InternalIP of `family`.
    pub fn internal_ip(&self, family: IpFamily) -> Option<IpAddr> {
        of_family(&self.internal_ips, family)
    }

    /// The node's ExternalIP of `family`.
    pub fn external_ip(&self, family: IpFamily) -> Option<IpAddr> {
        of_family(&self.external_ips, family)
    }
}

pub async fn nodes(cluster: &Cluster) -> Result<Vec<NodeInfo>> {
    let api: Api<Node> = Api::all(cluster.client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .api("list", "nodes", "(cluster)")?;
    Ok(list
        .items
        .into_iter()
        .map(|n| {
            let addr = |t: &str| -> Vec<String> {
                n.status
                    .as_ref()
                    .and_then(|s| s.addresses.as_ref())
                    .map(|a| a.iter().filter(|a| a.type_ == t).map(|a| a.address.clone()).collect())
                    .unwrap_or_default()
            };
            NodeInfo {
                zone: n
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("topology.kubernetes.io/zone"))
                    .cloned()
                    .unwrap_or_default(),
                ready: n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
                internal_ips: addr("InternalIP"),
                external_ips: addr("ExternalIP"),
                name: n.metadata.name.clone().unwrap_or_default(),
            }
        })
        .collect())
}

/// A server pod: where it runs and whether it serves.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PodInfo {
    pub name: String,
    /// `status.podIP`: the primary family's.
    pub ip: Option<String>,
    /// `status.podIPs`: one per family on a dual-stack cluster.
    pub ips: Vec<String>,
    pub node: String,
    pub zone: String,
    pub ready: bool,
    /// Phase, or the reason it cannot start.
    pub state: String,
}

pub async fn pods(cluster: &Cluster, app: &str, nodes: &[NodeInfo]) -> Result<Vec<PodInfo>> {
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let list =
        api.list(&ListParams::default().labels(&app_selector(app)))
            .await
            .api("list", "pods", &cluster.namespace)?;
    let mut out: Vec<PodInfo> = list
        .items
        .iter()
        .map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let zone = nodes
                .iter()
                .find(|n| n.name == node)
                .map(|n| n.zone.clone())
                .unwrap_or_default();
            let state = pod_problem(p, Duration::MAX)
                .map(|s| s.split(": ").nth(1).unwrap_or("").to_string())
                .unwrap_or_else(|| p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default());
            PodInfo {
                name: p.metadata.name.clone().unwrap_or_default(),
                ip: p.status.as_ref().and_then(|s| s.pod_ip.clone()),
                ips: p
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ips.as_ref())
                    .map(|ips| ips.iter().map(|i| i.ip.clone()).collect())
                    .or_else(|| p.status.as_ref().and_then(|s| s.pod_ip.clone()).map(|ip| vec![ip]))
                    .unwrap_or_default(),
                node,
                zone,
                ready: pod_ready(p),
                state,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

impl PodInfo {
    /// The pod's IP of `family`.
    pub fn ip_of(&self, family: IpFamily) -> Option<IpAddr> {
        of_family(&self.ips, family)
    }
}

/// A Service's addresses and load-balancing options.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ServiceInfo {
    pub name: String,
    pub type_: String,
    /// `spec.ipFamilyPolicy` (set by the API server when not given).
    pub ip_family_policy: Option<String>,
    /// `spec.ipFamilies`, primary first.
    pub ip_families: Vec<String>,
    /// `spec.clusterIPs`: one per family, in the order of `ip_families`.
    pub cluster_ips: Vec<String>,
    /// `port/PROTO` → nodePort.
    pub ports: Vec<(String, Option<i32>)>,
    pub lb_ips: Vec<String>,
    pub session_affinity: String,
    pub external_traffic_policy: Option<String>,
    pub internal_traffic_policy: Option<String>,
    pub traffic_distribution: Option<String>,
    /// spec.loadBalancerSourceRanges.
    pub source_ranges: Vec<String>,
}

impl ServiceInfo {
    pub fn from_service(s: &Service) -> Self {
        let spec = s.spec.clone().unwrap_or_default();
        Self {
            name: s.metadata.name.clone().unwrap_or_default(),
            type_: spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
            ip_family_policy: spec.ip_family_policy.clone(),
            ip_families: spec.ip_families.clone().unwrap_or_default(),
            cluster_ips: spec
                .cluster_ips
                .clone()
                .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
                .unwrap_or_default(),
            ports: spec
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    (
                        format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")),
                        p.node_port,
                    )
                })
                .collect(),
            lb_ips: s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .map(|ing| {
                    ing.iter()
                        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            session_affinity: spec.session_affinity.clone().unwrap_or_else(|| "None".into()),
            external_traffic_policy: spec.external_traffic_policy.clone(),
            internal_traffic_policy: spec.internal_traffic_policy.clone(),
            traffic_distribution: spec.traffic_distribution.clone(),
            source_ranges: spec.load_balancer_source_ranges.clone().unwrap_or_default(),
        }
    }

    /// The Service's load-balancing options (unknown values read as the defaults).
    pub fn options(&self) -> crate::service::ServiceOptions {
        let d = crate::service::ServiceOptions::default();
        let parse = |v: &Option<String>, default| v.as_deref().and_then(|v| v.parse().ok()).unwrap_or(default);
        crate::service::ServiceOptions {
            affinity: self.session_affinity.parse().unwrap_or(d.affinity),
            affinity_timeout: d.affinity_timeout,
            external_traffic_policy: parse(&self.external_traffic_policy, d.external_traffic_policy),
            internal_traffic_policy: parse(&self.internal_traffic_policy, d.internal_traffic_policy),
            traffic_distribution: self.traffic_distribution.as_deref().and_then(|v| v.parse().ok()),
            source_ranges: self
                .source_ranges
                .iter()
                .filter_map(|r| r.trim().parse().ok())
                .collect(),
        }
    }

    /// The clusterIP of `family` (`spec.clusterIPs`).
    pub fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        of_family(&self.cluster_ips, family)
    }

    /// The first LoadBalancer ingress IP of `family`.
    pub fn lb_ip(&self, family: IpFamily) -> Option<IpAddr> {
        of_family(&self.lb_ips, family)
    }

    /// The Service's families, primary first: `spec.ipFamilies`, else those of its clusterIPs.
    pub fn families(&self) -> Vec<IpFamily> {
        let named: Vec<IpFamily> = self
            .ip_families
            .iter()
            .filter_map(|f| match f.as_str() {
                "IPv4" => Some(IpFamily::Ipv4),
                "IPv6" => Some(IpFamily::Ipv6),
                _ => None,
            })
            .collect();
        if !named.is_empty() {
            return named;
        }
        self.cluster_ips
            .iter()
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .map(|ip| IpFamily::of(&ip))
            .collect()
    }

    /// Reachable from outside the cluster (a nodePort or a LoadBalancer).
    pub fn externally_accessible(&self) -> bool {
        self.type_ == "NodePort" || self.type_ == "LoadBalancer"
    }

    /// The nodePort of `port/PROTO`.
    pub fn node_port(&self, port: u16, proto: &str) -> Option<u16> {
        let key = format!("{port}/{proto}");
        self.ports
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, np)| np.and_then(|n| u16::try_from(n).ok()))
    }
}

pub async fn service(cluster: &Cluster, name: &str) -> Result<Option<ServiceInfo>> {
    let api: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let s = api.get_opt(name).await.api("get", "services", &cluster.namespace)?;
    Ok(s.as_ref().map(ServiceInfo::from_service))
}

/// An endpoint of an EndpointSlice: where it is, its conditions and its hints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SliceEndpoint {
    pub slice: String,
    /// The slice's `addressType` (IPv4, IPv6, FQDN): a dual-stack Service has a slice per family.
    pub address_type: String,
    pub pod: String,
    pub addresses: Vec<String>,
    pub zone: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `hints.forZones`.
    pub hints: Vec<String>,
    /// `hints.forNodes`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_hints: Vec<String>,
}

impl SliceEndpoint {
    /// Is it in a slice of `family`'s addresses?
    pub fn is(&self, family: IpFamily) -> bool {
        self.address_type == family.kube()
    }

    /// The endpoint as kube-proxy sees it.
    pub fn ep(&self) -> crate::service::Ep {
        crate::service::Ep {
            name: self.pod.clone(),
            node: self.node.clone(),
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
            zone_hints: self.hints.clone(),
            node_hints: self.node_hints.clone(),
        }
    }
}

pub async fn endpoint_slices(cluster: &Cluster, service: &str) -> Result<Vec<SliceEndpoint>> {
    let api: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let list = api.list(&lp).await.api("list", "endpointslices", &cluster.namespace)?;
    let mut out: Vec<SliceEndpoint> = list.items.into_iter().flat_map(slice_endpoints).collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    Ok(out)
}

/// The endpoints of one EndpointSlice, with the API's defaults for missing conditions.
pub fn slice_endpoints(s: EndpointSlice) -> Vec<SliceEndpoint> {
    let slice = s.metadata.name.clone().unwrap_or_default();
    let address_type = s.address_type.clone();
    let mut out = Vec::new();
    for e in s.endpoints {
        let cond = |f: fn(&k8s_openapi::api::discovery::v1::EndpointConditions) -> Option<bool>| {
            e.conditions.as_ref().and_then(f)
        };
        // API semantics: a nil ready means ready, a nil serving means as ready, nil terminating false.
        let ready = cond(|c| c.ready).unwrap_or(true);
        out.push(SliceEndpoint {
            slice: slice.clone(),
            address_type: address_type.clone(),
            pod: e.target_ref.as_ref().and_then(|r| r.name.clone()).unwrap_or_default(),
            addresses: e.addresses.clone(),
            zone: e.zone.clone().unwrap_or_default(),
            node: e.node_name.clone().unwrap_or_default(),
            ready,
            serving: cond(|c| c.serving).unwrap_or(ready),
            terminating: cond(|c| c.terminating).unwrap_or(false),
            hints: e
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect())
                .unwrap_or_default(),
            node_hints: e
                .hints
                .as_ref()
                .and_then(|h| h.for_nodes.as_ref())
                .map(|n| n.iter().map(|n| n.name.clone()).collect())
                .unwrap_or_default(),
        });
    }
    out
}

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub context: String,
    pub namespace: String,
    pub server_version: String,
    pub proxy_mode: Option<String>,
    pub nodes: Vec<NodeInfo>,
    pub pods: Vec<PodInfo>,
    /// Ready pods per node and per zone.
    pub per_node: BTreeMap<String, usize>,
    pub per_zone: BTreeMap<String, usize>,
    pub services: Vec<ServiceInfo>,
    pub endpoints: Vec<SliceEndpoint>,
}

pub async fn status(cluster: &Cluster, server_version: String) -> Result<Status> {
    let nodes = nodes(cluster).await?;
    let mut pods = self::pods(cluster, super::manifests::TSERVER, &nodes).await?;
    pods.extend(self::pods(cluster, super::manifests::AFFINITY, &nodes).await?);
    let mut per_node = BTreeMap::new();
    let mut per_zone = BTreeMap::new();
    for p in pods.iter().filter(|p| p.ready) {
        *per_node.entry(p.node.clone()).or_insert(0) += 1;
        *per_zone.entry(p.zone.clone()).or_insert(0) += 1;
    }
    let mut services = Vec::new();
    let mut endpoints = Vec::new();
    for name in [super::manifests::TSERVER, super::manifests::AFFINITY] {
        if let Some(s) = service(cluster, name).await? {
            services.push(s);
            endpoints.extend(endpoint_slices(cluster, name).await?);
        }
    }
    Ok(Status {
        context: cluster.context.clone(),
        namespace: cluster.namespace.clone(),
        server_version,
        proxy_mode: proxy_mode(cluster).await,
        nodes,
        pods,
        per_node,
        per_zone,
        services,
        endpoints,
    })
}

/// Does the Deployment exist?
pub async fn deployment_exists(cluster: &Cluster, name: &str) -> Result<bool> {
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    Ok(api
        .get_opt(name)
        .await
        .api("get", "deployments", &cluster.namespace)?
        .is_some())
}

#[cfg(test)]
mod tests;
