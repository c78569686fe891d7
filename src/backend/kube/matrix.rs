//! `matrix` on a cluster (docs/matrix.md): the rows are probe pods pinned with `nodeName` (a
//! tserver pod on every node that has one, so hairpin can be measured, else a client pod of the
//! run), a host-network client pod on every Ready node (the node rows; left out with a note when
//! the namespace's Pod Security refuses `hostNetwork`), and this machine when it reaches the
//! nodes' NodePorts. Each scenario is a Service of its own (`cluster::matrix`), waited for until
//! its EndpointSlices (and LB IP) say what the run expects, measured, and deleted; kube-proxy's
//! view comes from those EndpointSlices.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::core::v1::Service;
use tokio::io::AsyncReadExt;

use super::{AgentRunner, KubeBackend, PORT};
use crate::agent::Request;
use crate::backend::{Applied, Backend, Endpoint, From, MatrixPlace, Meta, Path, Plan, Source, Stream};
use crate::cluster::clients::{self, ClientPods, Created};
use crate::cluster::manifests::TSERVER;
use crate::cluster::matrix::{self as services, ScenarioService};
use crate::cluster::ops::{self, NodeInfo, PodInfo, ServiceInfo, SliceEndpoint};
use crate::matrix::{self, Cluster, Variant};
use crate::record::{EndpointState, MatrixSource, MatrixTarget, SourceKind, TargetKind};
use crate::service::{IpFamily, ServiceOptions};
use crate::storm::Proto;

/// How a cluster matrix run goes about its pods and Services.
#[derive(Debug, Clone)]
pub struct MatrixOptions {
    /// How long the first scenario's LoadBalancer Service may wait for an ingress IP before the
    /// run falls back to NodePort Services without the LB column (zero: NodePort from the start).
    pub lb_wait: Duration,
    /// The cluster's DNS domain (`--cluster-domain`): an ExternalName's CNAME is absolute.
    pub cluster_domain: String,
    /// How long a scenario's Service may take to have its EndpointSlices (and later LB IPs).
    pub service_timeout: Duration,
    /// How long to wait for the EndpointSlice controller's trafficDistribution hints before
    /// measuring with what the slices say (kube-proxy then uses every endpoint, and so does the
    /// expectation).
    pub hint_wait: Duration,
    /// Between looks at a Service and its slices.
    pub poll: Duration,
    /// After the slices are as expected: kube-proxy's sync (`--iptables-min-sync-period` and
    /// nftables' equivalent, 1 s by default) and a margin.
    pub settle: Duration,
    /// The client pods: how long they may take to run, and how often to look.
    pub pod_timeout: Duration,
    pub pod_poll: Duration,
    /// The check whether this machine reaches a NodePort.
    pub reach_timeout: Duration,
}

impl Default for MatrixOptions {
    fn default() -> Self {
        MatrixOptions {
            lb_wait: Duration::from_secs(60),
            cluster_domain: "cluster.local".into(),
            service_timeout: Duration::from_secs(120),
            hint_wait: Duration::from_secs(15),
            poll: Duration::from_millis(500),
            settle: Duration::from_secs(2),
            pod_timeout: clients::START_TIMEOUT,
            pod_poll: clients::START_POLL,
            reach_timeout: Duration::from_secs(2),
        }
    }
}

/// Whether the scenario Services are LoadBalancers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lb {
    /// Not known yet: the first scenario asks for one and waits `lb_wait`.
    Try,
    /// The cluster gave one.
    Yes,
    /// NodePort Services, no LB column.
    No,
}

/// One scenario's columns, per protocol.
#[derive(Debug, Clone, Default)]
struct Targets {
    tcp: Vec<MatrixTarget>,
    udp: Vec<MatrixTarget>,
}

#[derive(Debug)]
struct State {
    lb: Lb,
    /// Every Service the run may have made and not deleted yet (deleted by `restore`).
    made: Vec<String>,
    /// The Services of the scenario applied last (deleted by `release`).
    scenario: Vec<String>,
    targets: Targets,
    notes: Vec<String>,
}

/// Where each row's agent runs.
#[derive(Debug, Clone, Default)]
struct Layout {
    rows: Vec<MatrixSource>,
    /// Row name → the source its agent runs at (a pod, or this machine).
    exec: BTreeMap<String, Source>,
    /// The nodes with rows, in order.
    nodes: Vec<NodeInfo>,
    /// The tserver pods that are rows (their pod IPs are columns).
    servers: Vec<PodInfo>,
}

/// A cluster laid out for `matrix`: its client pods and Services, made by [`Self::prepare`] and
/// the scenarios, removed by [`Self::close`] whatever happened.
pub struct KubeMatrix<'a, P: AgentRunner, H: AgentRunner> {
    backend: &'a KubeBackend<P, H>,
    opts: MatrixOptions,
    pods: ClientPods,
    layout: Layout,
    state: Mutex<State>,
}

/// kube-proxy's view of a Service: the endpoints of its EndpointSlices (none without slices),
/// node names filled in from the pods where a slice has none.
/// A dual-stack Service has a slice per family: those of the run's family count.
fn eps(slices: &[SliceEndpoint], pods: &[PodInfo], family: IpFamily) -> Vec<crate::service::Ep> {
    slices
        .iter()
        .filter(|e| e.is(family))
        .map(|e| {
            let mut ep = e.ep();
            if ep.node.is_empty()
                && let Some(p) = pods.iter().find(|p| p.name == e.pod)
            {
                ep.node.clone_from(&p.node);
            }
            ep
        })
        .collect()
}

/// `60s`, `0.3s`.
fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn zone_of<'n>(nodes: &'n [NodeInfo], node: &str) -> &'n str {
    nodes.iter().find(|n| n.name == node).map_or("", |n| n.zone.as_str())
}

/// A node's address of `family` for NodePort targets: the InternalIP (the address pods and nodes
/// use), else the ExternalIP.
fn node_ip(n: &NodeInfo, family: IpFamily) -> Option<IpAddr> {
    n.internal_ip(family).or(n.external_ip(family))
}

/// One connection from this machine to `addr`, and the first reply line of the server behind it.
async fn reaches(addr: SocketAddr, timeout: Duration) -> std::result::Result<String, String> {
    let attempt = tokio::time::timeout(timeout, async {
        let mut s = crate::storm::connect_tcp_to(addr).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed without a reply".to_string());
        }
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })
    .await;
    attempt.unwrap_or_else(|_| Err(format!("no answer within {}", secs(timeout))))
}

impl<'a, P: AgentRunner, H: AgentRunner> KubeMatrix<'a, P, H> {
    pub fn new(backend: &'a KubeBackend<P, H>, opts: MatrixOptions) -> Self {
        let lb = if opts.lb_wait.is_zero() { Lb::No } else { Lb::Try };
        let mut notes = Vec::new();
        if lb == Lb::No {
            notes.push("LoadBalancer: not asked for (--lb-wait 0s): the Services are NodePort, no LB column".into());
        }
        match backend.view.proxy_mode.as_deref() {
            Some("iptables" | "nftables") => {}
            Some(other) => notes.push(format!(
                "kube-proxy mode {other}: the expectations are those of kube-proxy's iptables and nftables \
                 rules; where {other} differs, cells show as wrong"
            )),
            None => notes.push(
                "kube-proxy's mode is unknown (kube-system/kube-proxy not readable): where the modes differ \
                 (a node's own connection to a LoadBalancer IP without endpoints) the expectation is iptables mode's"
                    .into(),
            ),
        }
        KubeMatrix {
            backend,
            pods: ClientPods::new(&backend.cluster, crate::agent::argv(&Request::Hold)),
            opts,
            layout: Layout::default(),
            state: Mutex::new(State {
                lb,
                made: Vec::new(),
                scenario: Vec::new(),
                targets: Targets::default(),
                notes,
            }),
        }
    }

    /// The run's instance label (its client pods' and Services').
    pub fn run_id(&self) -> &str {
        &self.pods.run
    }

    fn note(&self, n: String) {
        self.state.lock().expect("matrix state").notes.push(n);
    }

    /// Remembers `name` as made (before it is asked for: an interrupt still deletes it).
    fn made(&self, name: &str) {
        let mut st = self.state.lock().expect("matrix state");
        if !st.made.iter().any(|n| n == name) {
            st.made.push(name.to_string());
        }
        if !st.scenario.iter().any(|n| n == name) {
            st.scenario.push(name.to_string());
        }
    }

    /// The rows: client pods where needed, host-network pods, the headless Service, and
    /// whether this machine reaches the NodePorts. What it makes is removed by [`Self::close`],
    /// also when this fails or is dropped half-way.
    pub async fn prepare(&mut self) -> Result<()> {
        let view = &self.backend.view;
        let c = &self.backend.cluster;
        let where_ = format!("namespace {} (context {})", view.namespace, view.context);
        let servers = ops::pods(c, TSERVER, &view.nodes).await?;
        if !servers.iter().any(|p| p.ready) {
            bail!("no ready {TSERVER} pod in {where_}: the scenario Services select them; see `kubectl svclb status`");
        }
        let node_facts: Vec<(String, String, bool)> = view
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.zone.clone(), n.ready))
            .collect();
        let server_facts: Vec<(String, String, bool)> = servers
            .iter()
            .map(|p| (p.name.clone(), p.node.clone(), p.ready))
            .collect();
        let rows = matrix::node_rows(&node_facts, &server_facts);
        if rows.is_empty() {
            bail!("no Ready node in the cluster: see `kubectl get nodes`");
        }
        let image = clients::server_image(c).await?;
        // A pod row on every node: its tserver pod, else a client pod.
        let mut pod_rows: Vec<(String, String)> = Vec::new();
        for r in &rows {
            let name = match &r.server {
                Some(s) => s.clone(),
                None => match self.pods.create(&r.node, &image, false).await? {
                    Created::Pod(name) => name,
                    Created::Refused(why) => bail!("the client pod on {} was refused: {why}", r.node),
                },
            };
            pod_rows.push((r.node.clone(), name));
        }
        // A node row on every node: a host-network pod there, if the namespace admits them.
        let mut host_rows: Vec<(String, String)> = Vec::new();
        for r in &rows {
            match self.pods.create(&r.node, &image, true).await? {
                Created::Pod(name) => host_rows.push((r.node.clone(), name)),
                Created::Refused(why) => {
                    self.note(format!(
                        "node rows left out: the namespace refused a hostNetwork pod ({why}); label it for the \
                         privileged Pod Security level to measure from the nodes (docs/kube.md)"
                    ));
                    host_rows.clear();
                    break;
                }
            }
        }
        if !self.pods.names.is_empty() {
            eprintln!(
                "svclb: starting {} probe pod(s) in {} (instance {})",
                self.pods.names.len(),
                view.namespace,
                self.pods.run
            );
        }
        self.pods
            .wait(&view.nodes, self.opts.pod_timeout, self.opts.pod_poll)
            .await?;
        // The run's headless Service: its name resolves to the tserver pods.
        self.check_free(services::HEADLESS).await?;
        self.made(services::HEADLESS);
        match services::apply(
            c,
            &services::headless(&view.namespace, &self.pods.run, self.backend.family),
        )
        .await?
        {
            Ok(_) => {}
            Err(why) => bail!(
                "the API server refused the headless Service {}: {why}",
                services::HEADLESS
            ),
        }
        self.state.lock().expect("matrix state").scenario.clear();
        self.wait_headless().await?;
        let client = self.client_reaches(&rows, &servers).await;

        let mut layout = Layout::default();
        let node_info = |name: &str| view.nodes.iter().find(|n| n.name == name).cloned().unwrap_or_default();
        for (node, pod) in &pod_rows {
            let zone = zone_of(&view.nodes, node).to_string();
            layout.rows.push(MatrixSource {
                name: pod.clone(),
                kind: SourceKind::Pod,
                node: node.clone(),
                zone: zone.clone(),
            });
            layout.exec.insert(
                pod.clone(),
                Source {
                    name: pod.clone(),
                    node: node.clone(),
                    zone,
                },
            );
            if let Some(s) = servers.iter().find(|s| &s.name == pod) {
                layout.servers.push(s.clone());
            }
        }
        for (node, pod) in &host_rows {
            let zone = zone_of(&view.nodes, node).to_string();
            layout.rows.push(MatrixSource {
                name: node.clone(),
                kind: SourceKind::Node,
                node: node.clone(),
                zone: zone.clone(),
            });
            layout.exec.insert(
                node.clone(),
                Source {
                    name: pod.clone(),
                    node: node.clone(),
                    zone,
                },
            );
        }
        if client {
            layout.rows.push(MatrixSource {
                name: "client".into(),
                kind: SourceKind::Client,
                node: String::new(),
                zone: String::new(),
            });
            // No node: the backend runs it on this machine.
            layout.exec.insert(
                "client".into(),
                Source {
                    name: "client".into(),
                    node: String::new(),
                    zone: String::new(),
                },
            );
        }
        layout.nodes = rows.iter().map(|r| node_info(&r.node)).collect();
        self.layout = layout;
        Ok(())
    }

    /// Does this machine reach the nodes? One connection to the deployed tserver Service's
    /// NodePort on a node that has a ready tserver pod (whatever its traffic policy, that node
    /// answers), its reply line read. Not reached: the client row is left out, with a note.
    async fn client_reaches(&self, rows: &[matrix::NodeRow], servers: &[PodInfo]) -> bool {
        let view = &self.backend.view;
        let Some(node) = rows
            .iter()
            .find(|r| servers.iter().any(|s| s.ready && s.node == r.node))
            .and_then(|r| view.nodes.iter().find(|n| n.name == r.node))
        else {
            return false;
        };
        let Some(port) = view.service.node_port(PORT, "TCP") else {
            self.note(format!(
                "client row left out: Service {TSERVER} has no NodePort to check whether this machine reaches the nodes \
                 (`kubectl svclb deploy` makes it NodePort)"
            ));
            return false;
        };
        let Some(ip) = node_ip(node, self.backend.family) else {
            self.note(format!(
                "client row left out: node {} has no {} address in its status",
                node.name,
                self.backend.family.kube()
            ));
            return false;
        };
        let addr = SocketAddr::new(ip, port);
        match reaches(addr, self.opts.reach_timeout).await {
            Ok(_) => true,
            Err(why) => {
                self.note(format!(
                    "client row left out: this machine does not reach {}'s NodePort {addr} ({why})",
                    node.name
                ));
                false
            }
        }
    }

    /// Waits until the headless Service's EndpointSlices list every ready tserver pod (what its
    /// name then resolves to).
    async fn wait_headless(&self) -> Result<()> {
        let (c, view) = (&self.backend.cluster, &self.backend.view);
        let t0 = Instant::now();
        loop {
            let servers = ops::pods(c, TSERVER, &view.nodes).await?;
            let want: BTreeSet<String> = servers.iter().filter(|p| p.ready).map(|p| p.name.clone()).collect();
            let slices = ops::endpoint_slices(c, services::HEADLESS).await?;
            let Some(lack) = matrix::slices_lack(&want, &eps(&slices, &servers, self.backend.family), None, &|_| {
                String::new()
            }) else {
                return Ok(());
            };
            if t0.elapsed() >= self.opts.service_timeout {
                bail!(
                    "Service {}: after {} its EndpointSlices still lack what the run expects ({lack}): see \
                     `kubectl get endpointslices -n {} -l kubernetes.io/service-name={}`",
                    services::HEADLESS,
                    secs(self.opts.service_timeout),
                    c.namespace,
                    services::HEADLESS
                );
            }
            tokio::time::sleep(self.opts.poll).await;
        }
    }

    /// Fails when a Service named `name` is someone else's; waits while one of this name is
    /// still being deleted (a LoadBalancer's cloud finalizer).
    async fn check_free(&self, name: &str) -> Result<()> {
        let c = &self.backend.cluster;
        let t0 = Instant::now();
        loop {
            let Some(existing) = services::get(c, name).await? else {
                return Ok(());
            };
            if existing.metadata.deletion_timestamp.is_none() {
                return match services::foreign(&existing, &self.pods.run) {
                    Some(why) => Err(anyhow!(why)),
                    None => Ok(()),
                };
            }
            if t0.elapsed() >= self.opts.service_timeout {
                bail!(
                    "Service {name} is still being deleted after {}s (a LoadBalancer's finalizer?): see `kubectl get service {name} -n {}`",
                    self.opts.service_timeout.as_secs(),
                    c.namespace
                );
            }
            tokio::time::sleep(self.opts.poll).await;
        }
    }

    /// Removes what the run made: its Services (those `restore` did not, or could not) and its
    /// client pods. Returns why Services are left, if some are (a failed pod deletion is told
    /// on stderr, as `zones` does).
    pub async fn close(&self) -> Option<String> {
        let left = self.restore().await.err().map(|e| format!("{e:#}"));
        self.pods.delete().await;
        left
    }

    /// The LoadBalancer ingress IP of `family` of `svc` the matrix can use, or why not.
    fn lb_ip(svc: &Service, family: IpFamily) -> std::result::Result<Option<IpAddr>, String> {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default();
        let Some(first) = ingress.first() else {
            return Ok(None);
        };
        if first.ip_mode.as_deref() == Some("Proxy") {
            return Err(
                "its LoadBalancer has ipMode Proxy (kube-proxy leaves its IP to the load balancer; \
                        not modelled)"
                    .into(),
            );
        }
        let ips: Vec<IpAddr> = ingress
            .iter()
            .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
            .collect();
        match ips.iter().find(|ip| IpFamily::of(ip) == family) {
            Some(ip) => Ok(Some(*ip)),
            None if !ips.is_empty() => Err(format!("its LoadBalancer gives no {} IP", family.kube())),
            None => Err(format!(
                "its LoadBalancer gives a hostname ({}), not an IP kube-proxy programs",
                first.hostname.as_deref().unwrap_or("?")
            )),
        }
    }

    /// Applies the scenario Service (NodePort instead once the LB is given up).
    async fn apply_service(&self, spec: &ScenarioService) -> Result<std::result::Result<Service, String>> {
        services::apply(&self.backend.cluster, &spec.object()).await
    }

    /// Waits until the scenario Service's EndpointSlices say what the run expects (and, while
    /// LoadBalancers are on, it has an ingress IP); falls back to NodePort once when the first
    /// LoadBalancer gets no IP within `lb_wait`. Returns the Service and its LB IP.
    async fn wait_service(&self, spec: &mut ScenarioService) -> Result<(Service, Option<IpAddr>)> {
        let c = &self.backend.cluster;
        let view = &self.backend.view;
        let name = spec.name();
        let t0 = Instant::now();
        let td = spec.options.traffic_distribution;
        if self.state.lock().expect("matrix state").lb == Lb::Try {
            eprintln!(
                "svclb: waiting up to {} for a LoadBalancer IP for {name} (--lb-wait; none: NodePort Services, no LB column)",
                secs(self.opts.lb_wait)
            );
        }
        loop {
            let svc = services::get(c, &name)
                .await?
                .ok_or_else(|| anyhow!("Service {name} disappeared while the run waited for it"))?;
            let servers = ops::pods(c, TSERVER, &view.nodes).await?;
            let want: BTreeSet<String> = if spec.selects_servers {
                servers.iter().filter(|p| p.ready).map(|p| p.name.clone()).collect()
            } else {
                BTreeSet::new()
            };
            let slices = ops::endpoint_slices(c, &name).await?;
            let eps = eps(&slices, &servers, self.backend.family);
            let lack = matrix::slices_lack(&want, &eps, td, &|node| zone_of(&view.nodes, node).to_string());
            let lb = self.state.lock().expect("matrix state").lb;
            let (lb_ip, lb_lack) = match (lb, Self::lb_ip(&svc, self.backend.family)) {
                (Lb::No, _) => (None, false),
                (_, Ok(Some(ip))) => (Some(ip), false),
                (_, Ok(None)) => (None, true),
                (_, Err(why)) => {
                    self.note(format!("LB column left out: {name}: {why}"));
                    self.state.lock().expect("matrix state").lb = Lb::No;
                    (None, false)
                }
            };
            let waited = t0.elapsed();
            let hints_only = matches!(lack, Some(matrix::SlicesLack::Hints(_)));
            let slices_done = lack.is_none() || (hints_only && waited >= self.opts.hint_wait);
            if slices_done && !lb_lack {
                if let Some(l) = &lack {
                    self.note(format!(
                        "{name}: {l} after {}: measured as the slices are (kube-proxy then uses every endpoint)",
                        secs(waited)
                    ));
                }
                if lb == Lb::Try && lb_ip.is_some() {
                    self.state.lock().expect("matrix state").lb = Lb::Yes;
                }
                return Ok((svc, lb_ip));
            }
            if lb_lack && lb == Lb::Try && waited >= self.opts.lb_wait {
                // No LB controller: NodePort from now on, this scenario included.
                self.note(format!(
                    "LB column left out: {name} got no LoadBalancer IP within {} (is a load balancer controller \
                     installed?): the Services are NodePort",
                    secs(self.opts.lb_wait)
                ));
                self.state.lock().expect("matrix state").lb = Lb::No;
                spec.load_balancer = false;
                if let Err(why) = self.apply_service(spec).await? {
                    bail!("the API server refused {name} as a NodePort Service: {why}");
                }
                continue;
            }
            if lb_lack && lb == Lb::Yes && waited >= self.opts.service_timeout {
                self.note(format!(
                    "{name}: no LoadBalancer IP within {}: its LB column is left out",
                    secs(self.opts.service_timeout)
                ));
                return Ok((svc, None));
            }
            if waited >= self.opts.service_timeout {
                bail!(
                    "Service {name}: after {} its EndpointSlices still lack what the run expects ({}): see \
                     `kubectl get endpointslices -n {} -l kubernetes.io/service-name={name}`",
                    secs(self.opts.service_timeout),
                    lack.map_or_else(|| "a LoadBalancer IP".into(), |l| l.to_string()),
                    c.namespace
                );
            }
            tokio::time::sleep(self.opts.poll).await;
        }
    }

    /// The columns of a scenario: its addresses, the probe pods' IPs, hairpin, and the DNS names.
    fn targets(&self, info: &ServiceInfo, lb_ip: Option<IpAddr>, variant: &str, proto: Proto) -> Vec<MatrixTarget> {
        let ns = &self.backend.view.namespace;
        let proto_name = match proto {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        };
        let t = |name: String, kind, address: SocketAddr, node: &str, pod: &str, host: String| MatrixTarget {
            name,
            kind,
            address,
            node: node.into(),
            pod: pod.into(),
            host,
        };
        let family = self.backend.family;
        let cip = info.cluster_ip(family);
        let mut out = Vec::new();
        if let Some(ip) = cip {
            out.push(t(
                "cip".into(),
                TargetKind::ClusterIp,
                SocketAddr::new(ip, PORT),
                "",
                "",
                String::new(),
            ));
        }
        if let Some(port) = info.node_port(PORT, proto_name) {
            for n in &self.layout.nodes {
                if let Some(ip) = node_ip(n, family) {
                    out.push(t(
                        format!("np:{}", n.name),
                        TargetKind::NodePort,
                        SocketAddr::new(ip, port),
                        &n.name,
                        "",
                        String::new(),
                    ));
                }
            }
        }
        if let Some(ip) = lb_ip {
            out.push(t(
                "lb".into(),
                TargetKind::LoadBalancer,
                SocketAddr::new(ip, PORT),
                "",
                "",
                String::new(),
            ));
        }
        for p in &self.layout.servers {
            if let Some(ip) = p.ip_of(family) {
                out.push(t(
                    format!("pod:{}", p.name),
                    TargetKind::PodIp,
                    SocketAddr::new(ip, PORT),
                    &p.node,
                    &p.name,
                    String::new(),
                ));
            }
        }
        if let Some(ip) = cip {
            out.push(t(
                "hairpin".into(),
                TargetKind::Hairpin,
                SocketAddr::new(ip, PORT),
                "",
                "",
                String::new(),
            ));
        }
        out.push(t(
            "headless".into(),
            TargetKind::Headless,
            // The name is resolved where the probe runs; the unspecified address of the run's
            // family says which of its addresses to keep.
            SocketAddr::new(
                match family {
                    IpFamily::Ipv4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpFamily::Ipv6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                },
                PORT,
            ),
            "",
            "",
            services::dns_name(services::HEADLESS, ns),
        ));
        if let Some(ip) = cip {
            out.push(t(
                "extname".into(),
                TargetKind::ExternalName,
                SocketAddr::new(ip, PORT),
                "",
                "",
                services::dns_name(&services::alias_name(variant), ns),
            ));
        }
        out
    }

    async fn apply_variant(&self, v: &Variant) -> Result<Applied> {
        if let Some(why) = matrix::cluster_skip(v) {
            return Ok(Applied::Skip(why));
        }
        let view = &self.backend.view;
        let c = &self.backend.cluster;
        let lb = self.state.lock().expect("matrix state").lb;
        let mut spec = ScenarioService {
            variant: v.name.to_string(),
            options: v.options.clone(),
            selects_servers: v.endpoints == EndpointState::Ready,
            load_balancer: lb != Lb::No,
            namespace: view.namespace.clone(),
            run: self.pods.run.clone(),
            family: self.backend.family,
        };
        let name = spec.name();
        let alias = services::alias_name(v.name);
        for n in [&name, &alias] {
            self.check_free(n).await?;
        }
        self.made(&name);
        let applied = match self.apply_service(&spec).await? {
            Ok(s) => s,
            Err(why) if v.options.traffic_distribution.is_some() => {
                return Ok(Applied::Skip(format!("the API server refused the Service: {why}")));
            }
            Err(why) => bail!("the API server refused Service {name}: {why}"),
        };
        if let Some(td) = v.options.traffic_distribution {
            let kept = applied.spec.as_ref().and_then(|s| s.traffic_distribution.clone());
            if kept.as_deref() != Some(td.to_string().as_str()) {
                return Ok(Applied::Skip(format!(
                    "the API server dropped spec.trafficDistribution {td} (it takes PreferSameZone and \
                     PreferSameNode from Kubernetes 1.33 with the PreferSameTrafficDistribution feature gate, \
                     1.34 by default)"
                )));
            }
        }
        let (svc, lb_ip) = self.wait_service(&mut spec).await?;
        let info = ServiceInfo::from_service(&svc);
        self.made(&alias);
        if let Err(why) = services::apply(
            c,
            &services::alias(v.name, &view.namespace, &self.opts.cluster_domain, &self.pods.run),
        )
        .await?
        {
            bail!("the API server refused the ExternalName Service {alias}: {why}");
        }
        // kube-proxy's sync after the slices changed.
        tokio::time::sleep(self.opts.settle).await;
        let family = self.backend.family;
        let slices = ops::endpoint_slices(c, &name).await?;
        let servers = ops::pods(c, TSERVER, &view.nodes).await?;
        let headless: BTreeMap<String, IpAddr> = ops::endpoint_slices(c, services::HEADLESS)
            .await?
            .into_iter()
            .filter(|e| e.ready && e.is(family))
            .filter_map(|e| {
                // The run's family, as its probes (a dual-stack pod has one address per family).
                let ip = e
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .find(|ip| IpFamily::of(ip) == family)?;
                Some((e.pod.clone(), ip))
            })
            .collect();
        let cluster = Cluster {
            options: ServiceOptions {
                affinity_timeout: v.options.affinity_timeout,
                ..info.options()
            },
            externally_accessible: info.externally_accessible(),
            eps: eps(&slices, &servers, family),
            placement: servers
                .iter()
                .map(|p| (p.name.clone(), (p.node.clone(), p.zone.clone())))
                .collect(),
            zones: view.nodes.iter().map(|n| (n.name.clone(), n.zone.clone())).collect(),
            // Which nodes a cluster's load balancer sends to is not known here: any of them.
            lb_hops: self.layout.nodes.iter().map(|n| n.name.clone()).collect(),
            host_lb_rejected: view.proxy_mode.as_deref() == Some("nftables"),
            pod_to_node_masquerade: None,
            cluster_ip: info.cluster_ip(family),
            headless,
        };
        let targets = Targets {
            tcp: self.targets(&info, lb_ip, v.name, Proto::Tcp),
            udp: self.targets(&info, lb_ip, v.name, Proto::Udp),
        };
        self.state.lock().expect("matrix state").targets = targets;
        Ok(Applied::Measure(cluster))
    }

    /// Deletes `names`; the ones that could not be deleted stay in `made` (and are returned).
    async fn delete(&self, names: Vec<String>) -> Vec<String> {
        let mut failed = Vec::new();
        for n in names {
            match services::delete(&self.backend.cluster, &n).await {
                Ok(()) => self.state.lock().expect("matrix state").made.retain(|m| *m != n),
                Err(e) => failed.push(format!("{n}: {e:#}")),
            }
        }
        failed
    }
}

impl<P: AgentRunner, H: AgentRunner> Backend for KubeMatrix<'_, P, H> {
    fn meta(&self) -> Meta {
        Meta {
            service: Some(format!("{}/svclb-mx-*", self.backend.view.namespace)),
            ..self.backend.meta()
        }
    }

    fn endpoints(&self) -> Result<Vec<Endpoint>> {
        self.backend.endpoints()
    }

    fn plan(&self, from: &From, path: &Path, proto: Proto) -> Result<Plan> {
        self.backend.plan(from, path, proto)
    }

    /// A row's agent: in its pod (a tserver pod, a client pod, a node's host-network pod), or
    /// on this machine (the client).
    fn start_agent(&self, source: &Source, request: &Request) -> Result<Stream> {
        let at = self
            .layout
            .exec
            .get(&source.name)
            .ok_or_else(|| anyhow!("no probe pod for row {}", source.name))?;
        self.backend.start_agent(at, request)
    }

    async fn pool(&self) -> Option<BTreeSet<String>> {
        self.backend.pool().await
    }

    fn pool_slack(&self, poll: Duration) -> Duration {
        self.backend.pool_slack(poll)
    }

    async fn service_view(&self) -> Result<crate::zones::ServiceView> {
        self.backend.service_view().await
    }
}

impl<P: AgentRunner, H: AgentRunner> MatrixPlace for KubeMatrix<'_, P, H> {
    fn matrix_sources(&self) -> Result<Vec<MatrixSource>> {
        Ok(self.layout.rows.clone())
    }

    fn matrix_targets(&self, proto: Proto) -> Result<Vec<MatrixTarget>> {
        let st = self.state.lock().expect("matrix state");
        Ok(match proto {
            Proto::Tcp => st.targets.tcp.clone(),
            Proto::Udp => st.targets.udp.clone(),
        })
    }

    async fn apply(&self, variant: &Variant) -> Result<Applied> {
        self.apply_variant(variant).await
    }

    /// The scenario's Services go now (the next scenario has Services of its own names).
    async fn release(&self) -> Result<()> {
        let names = std::mem::take(&mut self.state.lock().expect("matrix state").scenario);
        let failed = self.delete(names).await;
        if !failed.is_empty() {
            eprintln!(
                "svclb: deleting a scenario's Services failed ({}): trying again at the end",
                failed.join("; ")
            );
        }
        Ok(())
    }

    async fn restore(&self) -> Result<()> {
        let names = {
            let mut st = self.state.lock().expect("matrix state");
            st.scenario.clear();
            st.made.clone()
        };
        let failed = self.delete(names).await;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "deleting the matrix Services failed ({}): `kubectl svclb cleanup -n {}` removes them",
                failed.join("; "),
                self.backend.view.namespace
            ))
        }
    }

    fn matrix_notes(&self) -> Vec<String> {
        self.state.lock().expect("matrix state").notes.clone()
    }
}
