//! The lab as a [`Backend`]: agents run in lab namespaces through `ip netns exec`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Applied, Backend, Endpoint, From, MatrixPlace, Meta, Path, Plan, Source, Stream, local_stream, union};
use crate::agent::{self, Request};
use crate::lab::{Conditions, Lab, LabChanges, Pod, Reach};
use crate::matrix::{Cluster, Variant};
use crate::record::{EndpointState, MatrixSource, MatrixTarget, SourceKind, TargetKind};
use crate::service::IpFamily;
use crate::storm::Proto;
use crate::zones::{Placed, ServiceView};

/// A lab backend over an open lab.
pub struct LabBackend {
    lab: Lab,
    program: std::path::PathBuf,
    /// The family of the addresses runs go to.
    family: IpFamily,
}

impl LabBackend {
    /// Runs go to the lab's primary family (IPv4 unless the lab is IPv6-only) until
    /// [`LabBackend::set_family`].
    pub fn new(lab: Lab) -> Result<Self> {
        let family = lab.families().families()[0];
        Ok(Self {
            lab,
            program: std::env::current_exe().context("cannot find this executable to run the storm agent")?,
            family,
        })
    }

    /// Runs go to the lab's addresses of `family`: a family its Service has
    /// ([`Lab::families`], `lab up --ip-family`).
    pub fn set_family(&mut self, family: IpFamily) -> Result<()> {
        let families = self.lab.families();
        if !families.has(family) {
            bail!(
                "lab {} is {}: its Service has no {family} addresses; build one with `kubectl svclb lab up --ip-family dual`",
                self.lab.name(),
                families.as_str()
            );
        }
        self.family = family;
        Ok(())
    }

    /// The family runs go to.
    pub fn family(&self) -> IpFamily {
        self.family
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    fn endpoint(&self, p: &Pod) -> Endpoint {
        Endpoint {
            name: p.name.clone(),
            ip: p.ip_of(self.family),
            node: p.node.clone(),
            zone: p.zone.clone(),
        }
    }

    /// The endpoints the kube-proxy of `node` picks for `reach`.
    fn selected(&self, node: &str, reach: Reach) -> Result<Vec<Endpoint>> {
        Ok(self
            .lab
            .endpoints(node, reach)?
            .into_iter()
            .map(|p| self.endpoint(p))
            .collect())
    }
}

impl Backend for LabBackend {
    fn meta(&self) -> Meta {
        let s = self.lab.status();
        Meta {
            mode: "lab".into(),
            name: Some(s.name),
            service: Some(format!("{}/{}", s.service.namespace, s.service.name)),
            proxy_mode: Some(format!("{:?}", s.proxy_mode).to_lowercase()),
            context: None,
            server_version: None,
            ip_family: Some(self.family),
        }
    }

    fn endpoints(&self) -> Result<Vec<Endpoint>> {
        Ok(self.lab.pods().iter().map(|p| self.endpoint(p)).collect())
    }

    fn plan(&self, from: &From, path: &Path, _proto: Proto) -> Result<Plan> {
        let status = self.lab.status();
        let svc = &status.service;
        let lab = self.lab.name();
        let f = self.family;
        let sources: Vec<Source> = match from {
            From::Host => vec![Source {
                name: "client".into(),
                node: String::new(),
                zone: String::new(),
            }],
            From::Pods { pod: Some(name), .. } => {
                let p = self.lab.pods().iter().find(|p| &p.name == name).with_context(|| {
                    format!("no pod named {name} in lab {lab}; see `kubectl svclb lab status --name {lab}`")
                })?;
                vec![Source {
                    name: p.name.clone(),
                    node: p.node.clone(),
                    zone: p.zone.clone(),
                }]
            }
            From::Pods { pod: None, per_node } => {
                let mut out = Vec::new();
                for n in self.lab.nodes() {
                    if let Some(p) = self.lab.pods().iter().find(|p| p.node == n.name) {
                        out.push(Source {
                            name: p.name.clone(),
                            node: p.node.clone(),
                            zone: p.zone.clone(),
                        });
                        if !per_node {
                            break;
                        }
                    }
                }
                if out.is_empty() {
                    bail!("lab {lab} has no pods to storm from: `kubectl svclb lab scale --name {lab} --pods N`");
                }
                out
            }
            From::Nodes { per_zone } => {
                let mut out: Vec<Source> = Vec::new();
                for n in self.lab.nodes() {
                    if *per_zone && out.iter().any(|s| s.zone == n.zone) {
                        continue;
                    }
                    // A pod on the node, else the node itself (a host-network client).
                    let name = self
                        .lab
                        .pods()
                        .iter()
                        .find(|p| p.node == n.name)
                        .map_or(n.name.clone(), |p| p.name.clone());
                    out.push(Source {
                        name,
                        node: n.name.clone(),
                        zone: n.zone.clone(),
                    });
                }
                out
            }
        };
        let http = match path {
            Path::ClusterIp => Some(SocketAddr::new(svc.cluster_ip_of(f), svc.http_port)),
            Path::NodePort(n) => self
                .lab
                .nodes()
                .iter()
                .find(|x| n.as_ref().is_none_or(|n| &x.name == n))
                .map(|node| SocketAddr::new(node.ip_of(f), svc.http_node_port)),
            Path::LoadBalancer => Some(SocketAddr::new(svc.lb_ip_of(f), svc.http_port)),
        };
        let (address, expected) = match path {
            Path::ClusterIp => {
                if *from == From::Host {
                    bail!(
                        "the clusterIP is not reachable from outside the cluster: use --node-port or --lb with --from host"
                    );
                }
                let mut expected = Vec::new();
                for s in &sources {
                    union(&mut expected, self.selected(&s.node, Reach::ClusterIp)?);
                }
                (SocketAddr::new(svc.cluster_ip_of(f), svc.port), expected)
            }
            Path::NodePort(node) => {
                let node = match node {
                    Some(n) => self.lab.nodes().iter().find(|x| &x.name == n).with_context(|| {
                        format!("no node named {n} in lab {lab}; see `kubectl svclb lab status --name {lab}`")
                    })?,
                    None => &self.lab.nodes()[0],
                };
                // The client is outside the cluster; a pod's packet to another node's IP is not
                // intercepted by its own node (NodePorts are on the node's own address), it
                // arrives at `node` from the cluster CIDR and is short-circuited there.
                let reach = if *from == From::Host {
                    Reach::FromOutside
                } else {
                    Reach::FromInside
                };
                (
                    SocketAddr::new(node.ip_of(f), svc.node_port),
                    self.selected(&node.name.clone(), reach)?,
                )
            }
            Path::LoadBalancer => {
                let mut expected = Vec::new();
                if *from == From::Host {
                    for hop in &svc.lb_next_hops {
                        union(&mut expected, self.selected(hop, Reach::FromOutside)?);
                    }
                } else {
                    // Every node has the LB IP in its rules: a pod's own node short-circuits it.
                    for s in &sources {
                        union(&mut expected, self.selected(&s.node, Reach::FromInside)?);
                    }
                }
                (SocketAddr::new(svc.lb_ip_of(f), svc.port), expected)
            }
        };
        Ok(Plan {
            address,
            http,
            sources,
            expected,
        })
    }

    fn start_agent(&self, source: &Source, request: &Request) -> Result<Stream> {
        let ns = self.lab.netns(&source.name)?;
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(&self.program)
            .args(agent::argv(request));
        local_stream(cmd, &format!("the agent in {ns} (is iproute2 installed?)"))
    }

    /// The lab's ready endpoints, as its state file has them now (`lab delete-pod` and `lab
    /// scale` from another process change it): a deleted pod leaves the pool when it becomes
    /// terminating, a new one joins when it is ready, as the cluster backend reads EndpointSlices.
    async fn pool(&self) -> Option<BTreeSet<String>> {
        Lab::open(self.lab.name()).ok().map(|lab| {
            lab.pods()
                .iter()
                .filter(|p| p.conditions.ready)
                .map(|p| p.name.clone())
                .collect()
        })
    }

    /// The lab's state as it is now: its Service options and the endpoints of its EndpointSlice
    /// (usable pods, with their conditions and hints).
    async fn service_view(&self) -> Result<ServiceView> {
        let lab = Lab::open(self.lab.name())?;
        Ok(ServiceView {
            options: lab.options().clone(),
            // The lab's Service is a LoadBalancer.
            externally_accessible: true,
            eps: lab
                .pods()
                .iter()
                .filter(|p| p.conditions.usable())
                .map(|p| p.ep())
                .collect(),
            endpoints: lab
                .pods()
                .iter()
                .map(|p| Placed {
                    name: p.name.clone(),
                    node: p.node.clone(),
                    zone: p.zone.clone(),
                })
                .collect(),
        })
    }

    /// The polling period plus the longest delay after which a node's kube-proxy applies a
    /// change (`--sync-delay`).
    fn pool_slack(&self, poll: Duration) -> Duration {
        let sync = Lab::open(self.lab.name()).map_or(self.lab.sync_delay(), |lab| lab.sync_delay());
        poll + Duration::from_millis(sync.max_ms)
    }
}

impl LabBackend {
    /// The probe pod of every node: its first pod (none on a node without pods).
    fn probes(&self) -> Vec<&Pod> {
        self.lab
            .nodes()
            .iter()
            .filter_map(|n| self.lab.pods().iter().find(|p| p.node == n.name))
            .collect()
    }

    /// Sets the Service options and every pod's conditions (one change, applied by every node).
    fn set_service(
        &self,
        options: &crate::service::ServiceOptions,
        conditions: Vec<(String, Conditions)>,
    ) -> Result<()> {
        let mut lab = Lab::open(self.lab.name())?;
        // Nothing when the lab has them already: its nodes' rules are then left as they are.
        let same = lab.options() == options
            && conditions
                .iter()
                .all(|(n, c)| lab.pods().iter().any(|p| &p.name == n && p.conditions == *c));
        if same {
            return Ok(());
        }
        lab.set(&LabChanges {
            affinity: Some(options.affinity),
            affinity_timeout: Some(options.affinity_timeout),
            external_traffic_policy: Some(options.external_traffic_policy),
            internal_traffic_policy: Some(options.internal_traffic_policy),
            traffic_distribution: Some(options.traffic_distribution),
            source_ranges: Some(options.source_ranges.clone()),
            conditions,
            ..LabChanges::default()
        })?;
        // With --ecmp the load balancer's health checks follow the change.
        lab.wait_lb(Duration::from_secs(10))
    }
}

impl MatrixPlace for LabBackend {
    fn matrix_sources(&self) -> Result<Vec<MatrixSource>> {
        let probes = self.probes();
        let mut out: Vec<MatrixSource> = probes
            .iter()
            .map(|p| MatrixSource {
                name: p.name.clone(),
                kind: SourceKind::Pod,
                node: p.node.clone(),
                zone: p.zone.clone(),
            })
            .collect();
        out.extend(self.lab.nodes().iter().map(|n| MatrixSource {
            name: n.name.clone(),
            kind: SourceKind::Node,
            node: n.name.clone(),
            zone: n.zone.clone(),
        }));
        out.push(MatrixSource {
            name: "client".into(),
            kind: SourceKind::Client,
            node: String::new(),
            zone: String::new(),
        });
        Ok(out)
    }

    /// The lab's Service has the same port and nodePort for TCP and UDP.
    fn matrix_targets(&self, _proto: crate::storm::Proto) -> Result<Vec<MatrixTarget>> {
        let svc = self.lab.status().service;
        let f = self.family;
        let t = |name: String, kind, ip: IpAddr, port, node: &str, pod: &str| MatrixTarget {
            name,
            kind,
            address: SocketAddr::new(ip, port),
            node: node.into(),
            pod: pod.into(),
            host: String::new(),
        };
        let mut out = vec![t(
            "cip".into(),
            TargetKind::ClusterIp,
            svc.cluster_ip_of(f),
            svc.port,
            "",
            "",
        )];
        for n in self.lab.nodes() {
            out.push(t(
                format!("np:{}", n.name),
                TargetKind::NodePort,
                n.ip_of(f),
                svc.node_port,
                &n.name,
                "",
            ));
        }
        out.push(t(
            "lb".into(),
            TargetKind::LoadBalancer,
            svc.lb_ip_of(f),
            svc.port,
            "",
            "",
        ));
        for p in self.probes() {
            out.push(t(
                format!("pod:{}", p.name),
                TargetKind::PodIp,
                p.ip_of(f),
                svc.port,
                &p.node,
                &p.name,
            ));
        }
        out.push(t(
            "hairpin".into(),
            TargetKind::Hairpin,
            svc.cluster_ip_of(f),
            svc.port,
            "",
            "",
        ));
        Ok(out)
    }

    async fn apply(&self, variant: &Variant) -> Result<Applied> {
        tokio::task::block_in_place(|| self.apply_now(variant)).map(Applied::Measure)
    }

    /// The lab keeps its one Service between scenarios.
    async fn release(&self) -> Result<()> {
        Ok(())
    }

    async fn restore(&self) -> Result<()> {
        let conditions = self.lab.pods().iter().map(|p| (p.name.clone(), p.conditions)).collect();
        tokio::task::block_in_place(|| self.set_service(self.lab.options(), conditions)).map_err(|e| {
            anyhow::anyhow!("the Service could not be restored: {e:#}; set it back with `kubectl svclb lab set`")
        })
    }
}

impl LabBackend {
    fn apply_now(&self, variant: &Variant) -> Result<Cluster> {
        let state = match variant.endpoints {
            EndpointState::Ready => Conditions::READY,
            EndpointState::None => Conditions::STARTING,
            EndpointState::Terminating => Conditions::TERMINATING,
        };
        let conditions = self.lab.pods().iter().map(|p| (p.name.clone(), state)).collect();
        self.set_service(&variant.options, conditions)?;
        let lab = Lab::open(self.lab.name())?;
        // Earlier scenarios' datagrams left entries that would steer this one's (kube-proxy
        // keeps them across a policy change); the probes' own source ports never repeat within
        // a run, but a run right after another could meet its entries (docs/matrix.md).
        lab.forget_udp_flows()?;
        let status = lab.status();
        Ok(Cluster {
            options: lab.options().clone(),
            // The lab's Service is a LoadBalancer.
            externally_accessible: true,
            // The EndpointSlice lists every pod, with its conditions (kube-proxy uses the
            // ready ones, or the serving terminating ones).
            eps: lab.pods().iter().map(|p| p.ep()).collect(),
            placement: lab
                .pods()
                .iter()
                .map(|p| (p.name.clone(), (p.node.clone(), p.zone.clone())))
                .collect(),
            zones: lab.nodes().iter().map(|n| (n.name.clone(), n.zone.clone())).collect(),
            lb_hops: status.service.lb_next_hops.clone(),
            host_lb_rejected: lab.proxy_mode() == crate::lab::ProxyMode::Nftables,
            // Pods reach other nodes from the pod CIDR: the lab's nodes masquerade nothing of it.
            pod_to_node_masquerade: Some(false),
            cluster_ip: Some(status.service.cluster_ip_of(self.family)),
            headless: Default::default(),
        })
    }
}
