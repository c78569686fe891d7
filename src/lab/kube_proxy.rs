//! Each node's kube-proxy: applying a change after its own delay (its rules, one atomic
//! transaction from [`super::rules`], then its UDP conntrack cleanup), recording the generation
//! it applied, and the views of its work (the endpoints it chose, the rules it generated, the
//! rules the kernel has).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::conntrack::{self, UdpServices};
use super::health::{self, node_sync};
use super::nfnetlink;
use super::rules::{self, Cluster, Endpoint, NftExisting, PORTS, PortPlan, Proto, Service, Written};
use super::state::{Applied, DirLock, read_state, write_atomic};
use super::timeline::{NodeSync, Timeline};
use super::topology::{
    CLUSTER_CIDR, CLUSTER_CIDR_V6, CLUSTER_IP, HEALTH_CHECK_NODE_PORT, LB_IP, SERVICE_CIDR, SERVICE_CIDR_V6, in_family,
};
use super::{Lab, Node, Pod, ProxyMode, THREADS, netns};
use crate::service::{IpFamily, ServiceType};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Which traffic to a Service: to its ClusterIP, or to a NodePort / the LoadBalancer IP from
/// outside the cluster, or from a node or pod (eTP Local short-circuits that to all endpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    ClusterIp,
    FromOutside,
    FromInside,
}

/// When each node applies a change made at `changed`: (due, node), soonest first.
fn schedule(changed: Instant, delays: Vec<(String, Duration)>) -> Vec<(Instant, String)> {
    let mut due: Vec<(Instant, String)> = delays.into_iter().map(|(n, d)| (changed + d, n)).collect();
    due.sort();
    due
}

/// The nodes of `due` whose kube-proxy has not applied `generation` yet: one that did (an
/// earlier change's sync ran after this change) has nothing left to do.
fn behind<'a>(
    state_nodes: &'a [Node],
    due: &[String],
    applied: impl Fn(&str) -> u64,
    generation: u64,
) -> Vec<&'a Node> {
    state_nodes
        .iter()
        .filter(|n| due.contains(&n.name) && applied(&n.name) < generation)
        .collect()
}

/// Each node's kube-proxy after a change: at its own delay (from `delays`, node by node) it
/// applies the lab's state *as it is then* (kube-proxy syncs the latest state, so a later
/// change may be applied in the same sync), writes its rules, cleans its UDP conntrack entries
/// and records the generation. Nodes due together are written in parallel under one hold of
/// the lab's lock. Returns when every node has applied; the syncs are timed from `start`.
pub(super) fn sync_nodes(
    dir: &Path,
    name: &str,
    start: Instant,
    delays: Vec<(String, Duration)>,
) -> Result<Vec<NodeSync>> {
    let mut pending = schedule(Instant::now(), delays);
    let mut done = Vec::new();
    while let Some((first, _)) = pending.first() {
        std::thread::sleep(first.saturating_duration_since(Instant::now()));
        let _lock = DirLock::take(dir)?;
        let mut lab = Lab {
            dir: dir.to_path_buf(),
            state: read_state(dir, name)?,
        };
        let now = Instant::now();
        let due: Vec<String> = pending
            .drain(..pending.partition_point(|(at, _)| *at <= now))
            .map(|(_, n)| n)
            .collect();
        let generation = lab.state.generation;
        let nodes = behind(&lab.state.nodes, &due, |n| lab.state.applied_generation(n), generation);
        let synced = Mutex::new(Vec::new());
        netns::par_each(&nodes, THREADS, |n| {
            lab.write_node(n)?;
            if lab.state.endpoints_changed_for(&n.name) {
                lab.clean_conntrack(n)?;
            }
            synced.lock().expect("no panic holding it").push(NodeSync {
                at: start.elapsed(),
                node: n.name.clone(),
                generation,
            });
            Ok(())
        })?;
        let synced = synced.into_inner().expect("no panic holding it");
        let timeout = lab.state.options.affinity_timeout;
        for s in &synced {
            lab.state.applied.insert(
                s.node.clone(),
                Applied {
                    generation,
                    affinity_timeout: Some(timeout),
                },
            );
        }
        lab.save()?;
        done.extend(synced);
    }
    Ok(done)
}

/// The node syncs a command started, running in the background while it goes on (a deletion
/// goes through three changes; each node applies each at its own time).
pub(super) struct Syncs {
    dir: PathBuf,
    name: String,
    start: Instant,
    running: Vec<JoinHandle<Result<Vec<NodeSync>>>>,
}

impl Syncs {
    /// Syncs of `lab`, timed from `start`.
    pub(super) fn new(lab: &Lab, start: Instant) -> Syncs {
        Syncs {
            dir: lab.dir.clone(),
            name: lab.state.name.clone(),
            start,
            running: Vec::new(),
        }
    }

    /// Every node applies the change that picked `delays`, each after its delay (none: no
    /// change to apply).
    pub(super) fn start(&mut self, delays: Vec<(String, Duration)>) {
        if delays.is_empty() {
            return;
        }
        let (dir, name, start) = (self.dir.clone(), self.name.clone(), self.start);
        self.running
            .push(std::thread::spawn(move || sync_nodes(&dir, &name, start, delays)));
    }

    /// Waits until every node applied every change; their syncs go to `tl`.
    pub(super) fn finish(self, tl: &mut Timeline) -> Result<()> {
        let mut first_error = None;
        for h in self.running {
            match h.join() {
                Ok(Ok(syncs)) => tl.add_syncs(syncs),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(anyhow::anyhow!("a node sync panicked"));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Lab {
    /// Writes `n`'s rules as its kube-proxy would after an EndpointSlice or Service change: one
    /// atomic transaction (flush what is kept, delete what is stale); then what its health
    /// servers answer.
    /// A dual-stack lab's node runs one kube-proxy proxier per family, from the same endpoints.
    fn write_node(&self, n: &Node) -> Result<()> {
        let pods = self.usable_pods();
        for &family in self.state.families.families() {
            self.write_rules_of(&self.cluster_of(&pods, family), n)?;
        }
        health::record_sync(&self.dir, &n.name, &node_sync(&self.cluster(&pods), n))
    }

    /// Writes `n`'s rules in one transaction: what exists is listed as kube-proxy lists it
    /// before each sync (chain and set names); the chains whose rules this lab's last sync of
    /// the node wrote already (`nodes/<node>.rules.json`) are left as they are.
    fn write_rules_of(&self, cluster: &Cluster, n: &Node) -> Result<()> {
        let v6 = cluster.family == IpFamily::Ipv6;
        let record = self
            .dir
            .join("nodes")
            .join(format!("{}.rules{}.json", n.name, if v6 { "6" } else { "" }));
        // None (first sync, a failed one, or unreadable): every chain is written.
        let recorded: Option<Written> = std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let (sync, program, args) = match self.state.proxy_mode {
            ProxyMode::Nftables => {
                let (chains, sets) =
                    netns::in_netns(&n.netns, || nfnetlink::nft_objects("kube-proxy", cluster.family))?;
                let existing = NftExisting {
                    chains: chains.into_iter().collect(),
                    sets: sets.into_iter().collect(),
                    written: recorded.unwrap_or_default(),
                };
                // Affinity sets carry their timeout: a new one needs new sets.
                let reset_affinity = self
                    .state
                    .applied
                    .get(&n.name)
                    .and_then(|a| a.affinity_timeout)
                    .is_some_and(|t| t != self.state.options.affinity_timeout);
                let sync = rules::nft_transaction(cluster, n, &existing, reset_affinity);
                (sync, "nft", ["-f", "-"].as_slice())
            }
            ProxyMode::Iptables => {
                // kube-proxy lists the nat table (iptables-save) before a sync to find stale
                // chains, except in large clusters where that costs seconds. After a sync that
                // succeeded, this lab knows the table: the chains it wrote (the built-in ones,
                // KUBE-SERVICES among them, exist since the first sync). It lists the table only
                // without that record; iptables-save cost twice what the restore did.
                let existing = match &recorded {
                    Some(w) => w.keys().cloned().chain(["KUBE-SERVICES".to_string()]).collect(),
                    None => rules::ipt_existing(&netns::exec_output(&n.netns, ipt_tool(v6, "save"), &["-t", "nat"])?),
                };
                let written = recorded.unwrap_or_default();
                // The jumps from the built-in chains are added once, by the first sync.
                let initial = !existing.contains("KUBE-SERVICES");
                if initial && !v6 {
                    // kube-proxy's iptables mode serves NodePorts on 127.0.0.1 (localhostNodePorts)
                    // and sets this so the kernel routes the DNATed packets.
                    netns::sysctls(&n.netns, &[("net/ipv4/conf/all/route_localnet", "1")])?;
                }
                let sync = rules::iptables_restore(cluster, n, &existing, &written, initial);
                (sync, ipt_tool(v6, "restore"), ["--noflush"].as_slice())
            }
        };
        // Forgotten first: should the transaction fail, the next sync writes every chain.
        let _ = std::fs::remove_file(&record);
        netns::exec_with_stdin(&n.netns, program, args, &sync.tx)?;
        std::fs::create_dir_all(record.parent().expect("nodes dir"))?;
        write_atomic(&record, &serde_json::to_vec(&sync.written)?)
    }

    /// After a sync that applied an endpoint change, a node's kube-proxy deletes the UDP
    /// conntrack entries no serving endpoint answers any more (`pkg/proxy/conntrack/cleanup.go`;
    /// see [`conntrack`]): UDP has no close to end them, and they would keep a flow on a gone
    /// endpoint until they time out. TCP entries are left alone, as kube-proxy does.
    fn clean_conntrack(&self, n: &Node) -> Result<()> {
        let services = self.udp_services();
        netns::in_netns(&n.netns, || {
            // A dump walks the kernel's whole conntrack table (all namespaces share it); a node
            // that tracks nothing has nothing to clean.
            if conntrack::tracked() == Some(0) {
                return Ok(0);
            }
            conntrack::delete_stale_udp(&services)
        })
        .map(|_| ())
    }

    /// Deletes every UDP conntrack entry to the Service on every node, whichever endpoint it
    /// leads to. kube-proxy never does this; it is for a caller whose own earlier datagrams
    /// must not steer later ones (the matrix between scenarios, docs/matrix.md). Returns how
    /// many entries went.
    pub fn forget_udp_flows(&self) -> Result<usize> {
        let services = self.udp_services_serving(|_| false);
        let deleted = AtomicUsize::new(0);
        netns::par_each(&self.state.nodes, THREADS, |n| {
            let gone = netns::in_netns(&n.netns, || {
                if conntrack::tracked() == Some(0) {
                    return Ok(0);
                }
                conntrack::delete_stale_udp(&services)
            })?;
            deleted.fetch_add(gone, Ordering::Relaxed);
            Ok(())
        })?;
        Ok(deleted.into_inner())
    }

    /// The Service's UDP ports as the conntrack cleanup indexes them: every serving endpoint
    /// counts, whatever the traffic policies, topology or terminating state.
    fn udp_services(&self) -> UdpServices {
        self.udp_services_serving(|p| p.conditions.serving)
    }

    /// The Service's UDP ports, with the pods `serving` picks as the endpoints that still answer.
    fn udp_services_serving(&self, serving: impl Fn(&Pod) -> bool) -> UdpServices {
        let mut services = UdpServices::default();
        for sp in PORTS.iter().filter(|sp| sp.proto == Proto::Udp) {
            for &f in self.state.families.families() {
                let serving: HashSet<SocketAddr> = self
                    .state
                    .pods
                    .iter()
                    .filter(|p| serving(p))
                    .map(|p| SocketAddr::new(p.ip_of(f), sp.target_port))
                    .collect();
                let addresses = [
                    SocketAddr::new(in_family(CLUSTER_IP, f), sp.port),
                    SocketAddr::new(in_family(LB_IP, f), sp.port),
                ];
                services.add(&addresses, sp.node_port, f, &serving);
            }
        }
        services
    }

    /// The endpoints kube-proxy can use at all: ready ones, and serving terminating ones (its
    /// fallback). The others (starting, or terminating and no longer serving) change no rule.
    pub(super) fn usable_pods(&self) -> Vec<Pod> {
        self.state
            .pods
            .iter()
            .filter(|p| p.conditions.usable())
            .cloned()
            .collect()
    }

    /// What every node's kube-proxy is given in the lab's primary family (see [`Lab::cluster_of`]).
    pub(super) fn cluster<'a>(&'a self, pods: &'a [Pod]) -> Cluster<'a> {
        self.cluster_of(pods, self.state.families.families()[0])
    }

    /// What every node's kube-proxy proxier of `family` is given: the lab's one Service (a
    /// LoadBalancer with a NodePort per port) and `pods` as its endpoints, in that family.
    pub(super) fn cluster_of<'a>(&'a self, pods: &'a [Pod], family: IpFamily) -> Cluster<'a> {
        let (service_cidr, cluster_cidr) = match family {
            IpFamily::Ipv4 => (SERVICE_CIDR, CLUSTER_CIDR),
            IpFamily::Ipv6 => (SERVICE_CIDR_V6, CLUSTER_CIDR_V6),
        };
        Cluster {
            family,
            service_cidr,
            cluster_cidr,
            services: vec![Service {
                namespace: rules::SERVICE_NAMESPACE,
                name: rules::SERVICE_NAME,
                kind: ServiceType::LoadBalancer,
                cluster_ip: in_family(CLUSTER_IP, family),
                ports: &PORTS,
                lb_ips: vec![in_family(LB_IP, family)],
                external_ips: Vec::new(),
                health_check_node_port: HEALTH_CHECK_NODE_PORT,
                options: &self.state.options,
                endpoints: pods
                    .iter()
                    .map(|p| Endpoint {
                        ip: p.ip_of(family),
                        ep: p.ep(),
                    })
                    .collect(),
            }],
        }
    }

    /// The endpoints `node`'s kube-proxy balances `reach` over (the Service's first port; all
    /// ports have the same endpoints), after traffic policies, topology hints and endpoint
    /// conditions (a terminating endpoint only when no ready one is left for that traffic).
    pub fn endpoints(&self, node: &str, reach: Reach) -> Result<Vec<&Pod>> {
        let n = self.node(node).with_context(|| self.unknown(node))?;
        let pods = self.usable_pods();
        let c = self.cluster(&pods);
        let svc = &c.services[0];
        let plan = PortPlan::new(svc, &PORTS[0], n);
        let chosen = match reach {
            Reach::ClusterIp => plan.internal(),
            Reach::FromOutside => plan.external(),
            Reach::FromInside => plan.external_from_inside(),
        };
        Ok(chosen
            .iter()
            .filter_map(|e| self.state.pods.iter().find(|p| p.name == e.ep.name))
            .collect())
    }

    /// The generated rules for `node` (what the lab feeds to `nft -f` / `iptables-restore`,
    /// then, in a dual-stack lab, to `ip6tables-restore`).
    pub fn generated_rules(&self, node: &str) -> Result<String> {
        let n = self.node(node).with_context(|| self.unknown(node))?;
        let pods = self.usable_pods();
        let mut out = String::new();
        for &f in self.state.families.families() {
            let c = self.cluster_of(&pods, f);
            out.push_str(&match self.state.proxy_mode {
                ProxyMode::Nftables => rules::nft_transaction(&c, n, &NftExisting::default(), false).tx,
                ProxyMode::Iptables => rules::iptables_restore(&c, n, &Default::default(), &Written::new(), true).tx,
            });
        }
        Ok(out)
    }

    /// The rules as the kernel has them on `node` (`nft list table ip kube-proxy` or
    /// `iptables-save`; `ip6` and `ip6tables-save` for IPv6, one after the other in dual-stack).
    pub fn rules(&self, node: &str) -> Result<String> {
        let n = self.node(node).with_context(|| self.unknown(node))?;
        let mut out = String::new();
        for &f in self.state.families.families() {
            let v6 = f == IpFamily::Ipv6;
            out.push_str(&match self.state.proxy_mode {
                ProxyMode::Nftables => {
                    let family = if v6 { "ip6" } else { "ip" };
                    netns::exec_output(&n.netns, "nft", &["list", "table", family, "kube-proxy"])?
                }
                ProxyMode::Iptables => netns::exec_output(&n.netns, ipt_tool(v6, "save"), &[])?,
            });
        }
        Ok(out)
    }
}

/// `iptables-save`, `ip6tables-restore`, ...
fn ipt_tool(v6: bool, what: &str) -> &'static str {
    match (v6, what) {
        (false, "save") => "iptables-save",
        (true, "save") => "ip6tables-save",
        (false, _) => "iptables-restore",
        (true, _) => "ip6tables-restore",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> Node {
        Node {
            name: format!("node{i}"),
            zone: "zone-a".into(),
            ip: std::net::Ipv4Addr::new(172, 31, 0, 10 + i),
            pod_cidr: format!("10.244.{i}.0/24").parse().unwrap(),
            netns: format!("svclb-t.node{i}"),
        }
    }

    #[test]
    fn nodes_are_due_in_the_order_of_their_delays() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let due = schedule(
            t,
            vec![
                ("node1".into(), ms(300)),
                ("node2".into(), ms(0)),
                ("node3".into(), ms(100)),
            ],
        );
        let order: Vec<(Duration, &str)> = due.iter().map(|(at, n)| (*at - t, n.as_str())).collect();
        assert_eq!(order, [(ms(0), "node2"), (ms(100), "node3"), (ms(300), "node1")]);
    }

    #[test]
    fn only_due_nodes_behind_the_generation_are_synced() {
        let nodes = [node(1), node(2), node(3)];
        let applied = |n: &str| if n == "node2" { 7 } else { 6 };
        let due = ["node1".to_string(), "node2".to_string()];
        let names = |ns: Vec<&Node>| ns.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        // node2 already applied 7 (a later sync of an earlier change took it); node3 is not due.
        assert_eq!(names(behind(&nodes, &due, applied, 7)), ["node1"]);
        assert_eq!(names(behind(&nodes, &due, applied, 8)), ["node1", "node2"]);
        assert!(behind(&nodes, &due, applied, 6).is_empty());
    }
}
