//! A real cluster as a [`Backend`]: backends are the ready pods of a Service (the tserver for
//! `spread`, the affinity server for `affinity`; pod → node → zone from the API), agents run
//! inside tserver pods through exec (websocket) or, from the host, as a child process of this
//! machine.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use super::{Backend, Endpoint, From, Meta, Path, Plan, Source, Stream, last_line, local_stream, stop_writer, union};
use crate::agent::{self, Request};
use crate::cluster::manifests::{IMAGE_BINARY, TSERVER};
use crate::cluster::ops::{self, NodeInfo, PodInfo, ServiceInfo, SliceEndpoint};
use crate::cluster::{ApiResult, Cluster};
use crate::service::{self, Ep, IpFamily, ServiceShape, TrafficPolicy};
use crate::storm::Proto;
use crate::zones::{Placed, ServiceView};

/// The service port of the test servers (TCP and UDP) and the tserver's HTTP port.
pub const PORT: u16 = 5001;
pub const HTTP_PORT: u16 = 8080;

/// Starts an agent command (`IMAGE_BINARY <subcommand> ...`) somewhere; the stream's interrupt
/// writes `stop` to the agent's stdin.
pub trait AgentRunner: Send + Sync {
    fn stream(&self, source: &Source, command: Vec<String>) -> Result<Stream>;
}

/// Agents in pods, through the exec subresource (websocket): in `container`, or in a run's
/// client pods (`svclb-client-...`) in theirs.
pub struct PodExec {
    pub cluster: Cluster,
    pub container: String,
}

impl PodExec {
    /// The container the agent runs in, in `pod`.
    pub fn container_of(&self, pod: &str) -> String {
        if pod.starts_with(&format!("{}-", crate::cluster::clients::CLIENT)) {
            crate::cluster::clients::CONTAINER.to_string()
        } else {
            self.container.clone()
        }
    }
}

/// Bytes of agent output buffered between the exec session and the reader.
const EXEC_BUFFER: usize = 1 << 16;

impl AgentRunner for PodExec {
    fn stream(&self, source: &Source, command: Vec<String>) -> Result<Stream> {
        let pods: Api<Pod> = Api::namespaced(self.cluster.client.clone(), &self.cluster.namespace);
        let ns = self.cluster.namespace.clone();
        let pod = source.name.clone();
        let params = AttachParams::default()
            .container(self.container_of(&source.name))
            .stdin(true)
            .stdout(true)
            .stderr(true);
        let stop = Arc::new(Notify::new());
        // The exec session's stdout is copied into a pipe as it arrives: the stream can be handed
        // back before the session is up, and a failure to start ends it with the reason.
        let (reader, mut writer) = tokio::io::duplex(EXEC_BUFFER);
        let stopper = stop.clone();
        let session = tokio::spawn(async move {
            let mut proc = match pods.exec(&pod, command, &params).await.api("create", "pods/exec", &ns) {
                Ok(p) => p,
                Err(e) => return format!("cannot exec into pod {pod}: {e:#}"),
            };
            let (Some(stdin), Some(mut stdout), Some(mut stderr)) = (proc.stdin(), proc.stdout(), proc.stderr()) else {
                return format!("the exec session into pod {pod} has no stdin/stdout/stderr");
            };
            let stop_task = stop_writer(stopper, stdin);
            let mut err = Vec::new();
            // stderr only explains a failure: a broken stderr stream is not one.
            let (copied, _) = tokio::join!(tokio::io::copy(&mut stdout, &mut writer), stderr.read_to_end(&mut err));
            drop(writer);
            stop_task.abort();
            // The agent's verdict is in its output; a lost status channel changes nothing.
            let _ = proc.join().await;
            match copied {
                Err(e) => format!("reading the agent's output in pod {pod}: {e}"),
                Ok(_) => last_line(&err),
            }
        });
        Ok(Stream::new(reader, session, stop))
    }
}

/// The agent as a child process of this machine (`--from host`; tests use it for pods too).
pub struct LocalRun {
    /// Replaces the image's binary path (the command's first word) with this program.
    pub program: std::path::PathBuf,
}

impl AgentRunner for LocalRun {
    fn stream(&self, source: &Source, command: Vec<String>) -> Result<Stream> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(command.iter().skip(1));
        local_stream(
            cmd,
            &format!("the agent for {} ({})", source.name, self.program.display()),
        )
    }
}

/// What the target knows of the cluster, read once through the API.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub context: String,
    pub namespace: String,
    pub server_version: String,
    pub proxy_mode: Option<String>,
    pub nodes: Vec<NodeInfo>,
    /// Every pod of the Service's app (ready or not): the backends.
    pub pods: Vec<PodInfo>,
    pub service: ServiceInfo,
    pub slices: Vec<SliceEndpoint>,
    /// The app whose pods run agents (the tserver: it carries the binary, and it is not the
    /// Service under test when that is the affinity server).
    pub client_app: String,
    /// Every pod of `client_app`.
    pub clients: Vec<PodInfo>,
}

impl ClusterView {
    /// The Service `service` (also the app name of its pods), and agents in `clients` pods.
    pub async fn load(cluster: &Cluster, server_version: String, service: &str, clients: &str) -> Result<Self> {
        let nodes = ops::nodes(cluster).await?;
        let pods = ops::pods(cluster, service, &nodes).await?;
        let info = ops::service(cluster, service).await?.ok_or_else(|| {
            anyhow!(
                "no Service {service} in namespace {} (context {}): `kubectl svclb deploy{}` makes it",
                cluster.namespace,
                cluster.context,
                if service == TSERVER { "" } else { " --affinity-server" }
            )
        })?;
        let slices = ops::endpoint_slices(cluster, service).await?;
        let client_pods = if clients == service {
            pods.clone()
        } else {
            ops::pods(cluster, clients, &nodes).await?
        };
        Ok(Self {
            context: cluster.context.clone(),
            namespace: cluster.namespace.clone(),
            server_version,
            proxy_mode: ops::proxy_mode(cluster).await,
            nodes,
            pods,
            service: info,
            slices,
            client_app: clients.to_string(),
            clients: client_pods,
        })
    }
}

/// A cluster backend: the view, the client (the pool is read through it while a run goes on),
/// and runners for agents in pods and on this host.
pub struct KubeBackend<P: AgentRunner, H: AgentRunner> {
    pub view: ClusterView,
    pub cluster: Cluster,
    pub pods: P,
    pub host: H,
    /// The family of the addresses runs go to.
    pub family: IpFamily,
}

/// The pod as a backend, at its IP of `family`.
fn endpoint(p: &PodInfo, family: IpFamily) -> Option<Endpoint> {
    Some(Endpoint {
        name: p.name.clone(),
        ip: p.ip_of(family)?,
        node: p.node.clone(),
        zone: p.zone.clone(),
    })
}

fn source(p: &PodInfo) -> Source {
    Source {
        name: p.name.clone(),
        node: p.node.clone(),
        zone: p.zone.clone(),
    }
}

impl<P: AgentRunner, H: AgentRunner> KubeBackend<P, H> {
    /// From now on agents run in `pods`, of `app` (a run's own client pods).
    pub fn use_clients(&mut self, app: &str, pods: Vec<PodInfo>) {
        app.clone_into(&mut self.view.client_app);
        self.view.clients = pods;
    }

    /// Runs go to the Service's addresses of `family`: its clusterIP, LB ingress IP, the nodes'
    /// addresses and the pods' IPs of that family, the endpoints of its EndpointSlices of that
    /// addressType. Refused when the Service has no clusterIP of `family`.
    pub fn set_family(&mut self, family: IpFamily) -> Result<()> {
        let svc = &self.view.service;
        if svc.cluster_ip(family).is_none() {
            let has: Vec<&str> = svc.families().iter().map(|f| f.kube()).collect();
            // Its primary family stays first: the API cannot change it.
            let both = if svc.families().first() == Some(&IpFamily::Ipv6) {
                "IPv6,IPv4"
            } else {
                "IPv4,IPv6"
            };
            bail!(
                "Service {} in {} has no {} clusterIP (ipFamilies {}): redeploy with \
                 `kubectl svclb deploy --ip-family-policy PreferDualStack --ip-families {both}`",
                svc.name,
                self.where_(),
                family.kube(),
                if has.is_empty() { "-".to_string() } else { has.join(",") }
            );
        }
        self.family = family;
        Ok(())
    }

    /// Pod sources always have a node (only scheduled, ready pods are sources); the host none.
    fn runner(&self, source: &Source) -> &dyn AgentRunner {
        if source.node.is_empty() { &self.host } else { &self.pods }
    }

    fn ready(&self) -> impl Iterator<Item = &PodInfo> {
        self.view.pods.iter().filter(|p| p.ready)
    }

    fn where_(&self) -> String {
        format!("namespace {} (context {})", self.view.namespace, self.view.context)
    }

    /// The Service's endpoints as kube-proxy sees them: its EndpointSlices (node names filled
    /// from the pods when a slice has none), or the ready pods when it has no slices.
    fn eps(&self) -> Vec<Ep> {
        self.eps_of(&self.view.slices)
    }

    /// [`Self::eps`] from the slices of `slices` of the run's family.
    fn eps_of(&self, slices: &[SliceEndpoint]) -> Vec<Ep> {
        if slices.is_empty() {
            return self.ready().map(|p| Ep::ready(&p.name, &p.node)).collect();
        }
        slices
            .iter()
            .filter(|e| e.is(self.family))
            .map(|e| {
                let mut ep = e.ep();
                if ep.node.is_empty()
                    && let Some(p) = self.view.pods.iter().find(|p| p.name == e.pod)
                {
                    ep.node.clone_from(&p.node);
                }
                ep
            })
            .collect()
    }

    /// The backends the kube-proxy of `node` picks: for traffic from inside the cluster to the
    /// clusterIP (`external` false) or for traffic to a nodePort or LB arriving at it.
    fn selected(&self, node: &str, external: bool) -> Vec<Endpoint> {
        let eps = self.eps();
        let svc = &self.view.service;
        let options = svc.options();
        let shape = ServiceShape {
            options: &options,
            externally_accessible: svc.externally_accessible(),
        };
        let zone = self
            .view
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.zone.as_str())
            .unwrap_or("");
        let sel = service::select(shape, &eps, node, zone);
        let policy = if external {
            options.external_traffic_policy
        } else {
            options.internal_traffic_policy
        };
        let chosen = match policy {
            TrafficPolicy::Cluster => &sel.cluster,
            TrafficPolicy::Local => &sel.local,
        };
        chosen
            .iter()
            .filter_map(|&i| self.view.pods.iter().find(|p| p.name == eps[i].name))
            .filter_map(|p| endpoint(p, self.family))
            .collect()
    }

    /// The backends for external traffic arriving at `node`, or at any node (a LB).
    fn external(&self, node: Option<&str>) -> Vec<Endpoint> {
        match node {
            Some(n) => self.selected(n, true),
            None => {
                let mut all: Vec<Endpoint> = Vec::new();
                for n in &self.view.nodes {
                    union(&mut all, self.selected(&n.name, true));
                }
                all
            }
        }
    }

    /// The node's ExternalIP, else its InternalIP, of the run's family.
    fn node_address(&self, n: &NodeInfo) -> Result<IpAddr> {
        n.external_ip(self.family)
            .or(n.internal_ip(self.family))
            .ok_or_else(|| anyhow!("node {} has no {} address in its status", n.name, self.family.kube()))
    }

    fn pick_node(&self, name: &Option<String>) -> Result<&NodeInfo> {
        match name {
            Some(n) => self.view.nodes.iter().find(|x| &x.name == n).ok_or_else(|| {
                let names: Vec<&str> = self.view.nodes.iter().map(|n| n.name.as_str()).collect();
                anyhow!("no node named {n}; nodes: {}", names.join(", "))
            }),
            None => self
                .view
                .nodes
                .first()
                .ok_or_else(|| anyhow!("the cluster lists no nodes")),
        }
    }

    /// The HTTP address of the same path (for a reachability probe before a host storm).
    pub fn http_address(&self, path: &Path) -> Result<SocketAddr> {
        match path {
            Path::NodePort(n) => {
                let node = self.pick_node(n)?;
                let port = self
                    .view
                    .service
                    .node_port(HTTP_PORT, "TCP")
                    .ok_or_else(|| anyhow!("Service {TSERVER} has no nodePort for {HTTP_PORT}/TCP"))?;
                Ok(SocketAddr::new(self.node_address(node)?, port))
            }
            Path::LoadBalancer => Ok(SocketAddr::new(self.lb_ip()?, HTTP_PORT)),
            Path::ClusterIp => Ok(SocketAddr::new(self.cluster_ip()?, HTTP_PORT)),
        }
    }

    fn cluster_ip(&self) -> Result<IpAddr> {
        self.view.service.cluster_ip(self.family).ok_or_else(|| {
            anyhow!(
                "Service {} has no {} clusterIP",
                self.view.service.name,
                self.family.kube()
            )
        })
    }

    fn lb_ip(&self) -> Result<IpAddr> {
        let svc = &self.view.service;
        if svc.type_ != "LoadBalancer" {
            bail!(
                "Service {} is of type {}: redeploy with `kubectl svclb deploy --service-type LoadBalancer` to storm a LB",
                svc.name,
                svc.type_
            );
        }
        svc.lb_ip(self.family).ok_or_else(|| {
            anyhow!(
                "Service {} has no {} LoadBalancer IP yet (is a LB controller installed, does it give that family?): use --node-port",
                svc.name,
                self.family.kube()
            )
        })
    }
}

impl<P: AgentRunner, H: AgentRunner> Backend for KubeBackend<P, H> {
    fn meta(&self) -> Meta {
        Meta {
            mode: "cluster".into(),
            name: None,
            service: Some(format!("{}/{}", self.view.namespace, self.view.service.name)),
            proxy_mode: self.view.proxy_mode.clone(),
            context: Some(self.view.context.clone()),
            server_version: Some(self.view.server_version.clone()),
            ip_family: Some(self.family),
        }
    }

    fn endpoints(&self) -> Result<Vec<Endpoint>> {
        Ok(self.ready().filter_map(|p| endpoint(p, self.family)).collect())
    }

    fn plan(&self, from: &From, path: &Path, proto: Proto) -> Result<Plan> {
        if self.ready().next().is_none() {
            bail!(
                "no ready {} pod in {}: see `kubectl svclb status`",
                self.view.service.name,
                self.where_()
            );
        }
        let clients: Vec<&PodInfo> = self.view.clients.iter().filter(|p| p.ready).collect();
        let app = &self.view.client_app;
        if *from != From::Host && clients.is_empty() {
            bail!(
                "no ready {app} pod in {} to run the sessions in: `kubectl svclb deploy`, or use --from host",
                self.where_()
            );
        }
        let sources: Vec<Source> = match from {
            From::Host => vec![Source {
                name: "this-host".into(),
                node: String::new(),
                zone: String::new(),
            }],
            From::Pods { pod: Some(name), .. } => {
                let p = clients.iter().find(|p| &p.name == name).ok_or_else(|| {
                    anyhow!(
                        "no ready {app} pod named {name} in {}: agents run in {app} pods",
                        self.where_()
                    )
                })?;
                vec![source(p)]
            }
            From::Pods { pod: None, per_node } => {
                let mut out: Vec<Source> = Vec::new();
                for p in &clients {
                    if !out.iter().any(|s| s.node == p.node) {
                        out.push(source(p));
                    }
                }
                if !per_node {
                    out.truncate(1);
                }
                out
            }
            From::Nodes { per_zone } => {
                // One client pod per node (per zone), in the nodes' order; a node (zone) without
                // a ready client pod has no source.
                let mut out: Vec<Source> = Vec::new();
                for n in &self.view.nodes {
                    if *per_zone && out.iter().any(|s| s.zone == n.zone) {
                        continue;
                    }
                    if let Some(p) = clients.iter().find(|p| p.node == n.name) {
                        out.push(source(p));
                    }
                }
                out
            }
        };
        let proto_name = match proto {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        };
        let (address, expected) = match path {
            Path::ClusterIp => {
                if *from == From::Host {
                    bail!(
                        "the clusterIP is not reachable from outside the cluster: use --node-port or --lb with --from host"
                    );
                }
                let mut expected: Vec<Endpoint> = Vec::new();
                for s in &sources {
                    union(&mut expected, self.selected(&s.node, false));
                }
                (SocketAddr::new(self.cluster_ip()?, PORT), expected)
            }
            Path::NodePort(n) => {
                let node = self.pick_node(n)?;
                let port = self.view.service.node_port(PORT, proto_name).ok_or_else(|| {
                    anyhow!(
                        "Service {} has no nodePort for {PORT}/{proto_name}",
                        self.view.service.name
                    )
                })?;
                (
                    SocketAddr::new(self.node_address(node)?, port),
                    self.external(Some(&node.name)),
                )
            }
            Path::LoadBalancer => (SocketAddr::new(self.lb_ip()?, PORT), self.external(None)),
        };
        Ok(Plan {
            address,
            http: self.http_address(path).ok(),
            sources,
            expected,
        })
    }

    fn start_agent(&self, source: &Source, request: &Request) -> Result<Stream> {
        let mut command = vec![IMAGE_BINARY.to_string()];
        command.extend(agent::argv(request));
        self.runner(source).stream(source, command)
    }

    /// The ready endpoints in the Service's EndpointSlices: what kube-proxy programs.
    async fn pool(&self) -> Option<BTreeSet<String>> {
        ops::endpoint_slices(&self.cluster, &self.view.service.name)
            .await
            .ok()
            .map(|eps| {
                eps.into_iter()
                    .filter(|e| e.ready && e.is(self.family))
                    .map(|e| e.pod)
                    .collect()
            })
    }

    /// The polling period plus kube-proxy's minimum sync period (1 s by default) between an
    /// EndpointSlice update and its rules.
    fn pool_slack(&self, poll: Duration) -> Duration {
        poll + Duration::from_secs(1)
    }

    /// The Service as loaded and its EndpointSlices read again now (hints, conditions), with
    /// every pod placed on its node and zone.
    async fn service_view(&self) -> Result<ServiceView> {
        let slices = ops::endpoint_slices(&self.cluster, &self.view.service.name).await?;
        let svc = &self.view.service;
        Ok(ServiceView {
            options: svc.options(),
            externally_accessible: svc.externally_accessible(),
            eps: self.eps_of(&slices),
            endpoints: self
                .view
                .pods
                .iter()
                .map(|p| Placed {
                    name: p.name.clone(),
                    node: p.node.clone(),
                    zone: p.zone.clone(),
                })
                .collect(),
        })
    }

    /// From this machine: one HTTP request through the same path first.
    async fn preflight(&self, from: &From, path: &Path) -> Result<()> {
        if *from == From::Host {
            probe(&self.http_address(path)?).await?;
        }
        Ok(())
    }
}

/// One HTTP request through the same path before a host storm: an unreachable nodePort or LB
/// is one clear error instead of thousands of timeouts.
pub async fn probe(address: &SocketAddr) -> Result<String> {
    // reqwest has no provider of its own (one provider for kube and reqwest).
    crate::cluster::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()?;
    let url = format!("http://{address}/hostname");
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach {url} from this machine ({e}): is there a route to the node or LB?"))?;
    if !resp.status().is_success() {
        bail!("{url} answered {}: is that the tserver?", resp.status());
    }
    Ok(resp.text().await?.trim().to_string())
}

pub mod matrix;

#[cfg(test)]
mod tests;
