//! The lab: an emulated Kubernetes cluster in Linux network namespaces.
//!
//! A lab named `x` is made of namespaces that all start with `svclb-x.` (the dot cannot
//! appear in a lab name, so one lab's prefix never matches another's):
//!
//! * `svclb-x.net`: the node network, a bridge `br0` joining nodes and the client;
//! * `svclb-x.nodeN`: one router per node, with its zone, pod CIDR and kube-proxy rules;
//! * `svclb-x.pod-NNN`: one per pod, running the project's own server;
//! * `svclb-x.client`: an external client on the node network.
//!
//! Nothing is ever added to the root namespace. See docs/lab.md.

mod conntrack;
mod netns;
pub mod rules;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use rules::{Cluster, NftExisting, PORTS};

/// How each node's kube-proxy programs Services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Nftables,
    Iptables,
}

/// Service `sessionAffinity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Affinity {
    #[value(name = "none", alias = "None")]
    None,
    #[serde(rename = "ClientIP")]
    #[value(name = "clientip", alias = "ClientIP")]
    ClientIp,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum TrafficPolicy {
    #[value(name = "Cluster", alias = "cluster")]
    Cluster,
    #[value(name = "Local", alias = "local")]
    Local,
}

/// `trafficDistribution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum TrafficDistribution {
    #[value(name = "PreferClose", alias = "preferclose")]
    PreferClose,
}

/// The Service's spec fields that change how kube-proxy writes its rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOptions {
    pub affinity: Affinity,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub affinity_timeout: u32,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub traffic_distribution: Option<TrafficDistribution>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            affinity: Affinity::None,
            affinity_timeout: 10800,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            traffic_distribution: None,
        }
    }
}

/// Everything `lab up` takes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabConfig {
    /// Lab name: 1-16 of [a-z0-9-], starting and ending with a letter or digit.
    pub name: String,
    pub nodes: usize,
    pub pods: usize,
    pub zones: usize,
    pub proxy_mode: ProxyMode,
    /// Route the LoadBalancer IP from the client over every node (ECMP, L4 hash)
    /// instead of via the first node.
    pub ecmp: bool,
    pub options: ServiceOptions,
    /// The program pods run as `PROGRAM serve ...`; `None` = this executable.
    pub server: Option<PathBuf>,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            name: "lab".to_string(),
            nodes: 10,
            pods: 100,
            zones: 3,
            proxy_mode: ProxyMode::Nftables,
            ecmp: false,
            options: ServiceOptions::default(),
            server: None,
        }
    }
}

/// One emulated node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub zone: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub netns: String,
}

/// One emulated pod.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub zone: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    /// Node-side end of the pod's veth.
    pub veth: String,
    pub pid: u32,
    /// The EndpointSlice zone hint (`hints.forZones`) kube-proxy sees for this endpoint.
    pub hint: Option<String>,
    /// The hint was removed with `lab set --drop-hint`.
    #[serde(default)]
    pub hint_dropped: bool,
}

/// The saved state of a lab (`state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    kind: String,
    version: u32,
    name: String,
    created: jiff::Timestamp,
    proxy_mode: ProxyMode,
    ecmp: bool,
    zones: usize,
    server: PathBuf,
    options: ServiceOptions,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    next_pod: usize,
}

/// A running lab, as loaded from its state.
pub struct Lab {
    dir: PathBuf,
    state: State,
}

/// `lab status`: what a caller needs to drive the lab.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabStatus {
    pub name: String,
    pub proxy_mode: ProxyMode,
    pub created: jiff::Timestamp,
    pub state_dir: PathBuf,
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodStatus>,
    pub client: ClientStatus,
    pub service: ServiceStatus,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub zone: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub netns: String,
    pub pods: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodStatus {
    pub name: String,
    pub node: String,
    pub zone: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub pid: u32,
    pub alive: bool,
    pub hint: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientStatus {
    pub netns: String,
    pub ip: Ipv4Addr,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    /// TCP and UDP.
    pub port: u16,
    pub http_port: u16,
    /// TCP and UDP, on every node IP.
    pub node_port: u16,
    pub http_node_port: u16,
    pub node_ips: Vec<Ipv4Addr>,
    pub lb_ip: Ipv4Addr,
    /// Nodes the client routes the LoadBalancer IP to (all of them with ECMP).
    pub lb_next_hops: Vec<String>,
    pub ecmp: bool,
    pub options: ServiceOptions,
}

/// Changes `lab set` applies to a running lab (None = keep).
#[derive(Clone, Debug, Default)]
pub struct LabChanges {
    pub affinity: Option<Affinity>,
    pub affinity_timeout: Option<u32>,
    pub external_traffic_policy: Option<TrafficPolicy>,
    pub internal_traffic_policy: Option<TrafficPolicy>,
    /// Some(None) removes trafficDistribution.
    pub traffic_distribution: Option<Option<TrafficDistribution>>,
    /// Remove the zone hint of these pods' endpoints.
    pub drop_hints: Vec<String>,
    /// Give every endpoint its hint back.
    pub restore_hints: bool,
}

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SERVICE_CIDR: &str = "10.96.0.0/16";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const NODE_NET_PREFIX: u8 = 24;
/// The node network's router (on the bridge in the `net` namespace).
const NODE_NET_ROUTER: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);
const LB_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 10);
/// The pods' default gateway (Calico-style): answered by proxy ARP on the node's veth.
const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const MAX_NODES: usize = 200;
const MAX_PODS_PER_NODE: usize = 250;
const MAX_NAME_LEN: usize = 16;
/// Threads for per-namespace setup (mostly waiting on `ip` / `nft` processes).
const THREADS: usize = 8;
const READY_TIMEOUT: Duration = Duration::from_secs(20);

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 31, 0, 10 + i as u8)
}

/// Where lab state lives: `$SVCLB_LAB_DIR` or /run/svclb/labs.
pub fn labs_dir() -> PathBuf {
    std::env::var_os("SVCLB_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/svclb/labs"))
}

/// The namespace-name prefix of lab `name`.
pub fn netns_prefix(name: &str) -> String {
    format!("svclb-{name}.")
}

/// Checks a lab name: short, [a-z0-9-], no leading/trailing hyphen.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "invalid lab name {name:?}: use 1-{MAX_NAME_LEN} characters of [a-z0-9-], not starting or ending with '-'"
        );
    }
    Ok(())
}

/// The lab needs Linux (network namespaces, netfilter) and root for namespaces, links and rules.
pub fn require_host() -> Result<()> {
    if !cfg!(target_os = "linux") {
        bail!(
            "the lab emulates nodes in Linux network namespaces and this is {}: run it on a Linux machine or VM, or storm a cluster or an --address from here",
            std::env::consts::OS
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN): run with sudo");
    }
    Ok(())
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// An exclusive lock on a lab's directory, held while its namespaces or rules change.
struct DirLock(File);

impl DirLock {
    fn take(dir: &Path) -> Result<DirLock> {
        let f = File::create(dir.join("lock")).with_context(|| format!("cannot lock {}", dir.display()))?;
        // SAFETY: flock on a valid fd; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("cannot lock {}: {}", dir.display(), std::io::Error::last_os_error());
        }
        Ok(DirLock(f))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // SAFETY: unlocking the fd we locked; closing would release it too.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

impl Lab {
    /// Builds a lab: namespaces, links, routes, kube-proxy rules, pod servers.
    /// On failure everything built so far is removed.
    pub fn up(cfg: &LabConfig) -> Result<Lab> {
        require_host()?;
        validate_name(&cfg.name)?;
        if cfg.nodes == 0 || cfg.nodes > MAX_NODES {
            bail!("--nodes must be 1..={MAX_NODES}");
        }
        if cfg.zones == 0 || cfg.zones > 26 {
            bail!("--zones must be 1..=26");
        }
        if cfg.pods > cfg.nodes * MAX_PODS_PER_NODE {
            bail!(
                "--pods must be at most {} for {} nodes",
                cfg.nodes * MAX_PODS_PER_NODE,
                cfg.nodes
            );
        }
        let name = &cfg.name;
        if cfg.options.affinity_timeout == 0 || cfg.options.affinity_timeout > 86400 {
            bail!("--affinity-timeout must be 1..=86400 seconds");
        }
        let server = match &cfg.server {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("cannot find this executable")?,
        };
        let dir = labs_dir().join(name);
        std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("cannot create {}", dir.display()))?;
        // Locked before the check, so two `lab up` of one name cannot both build.
        let lock = DirLock::take(&dir)?;
        if state_path(&dir).exists() || !netns::list_with_prefix(&netns_prefix(name)).is_empty() {
            bail!("a lab named {name} already exists; run `kubectl svclb lab down --name {name}` first");
        }
        let prefix = netns_prefix(name);
        let nodes: Vec<Node> = (0..cfg.nodes)
            .map(|i| Node {
                name: format!("node{}", i + 1),
                zone: format!("zone-{}", (b'a' + (i % cfg.zones) as u8) as char),
                ip: node_ip(i + 1),
                pod_cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, (i + 1) as u8, 0), 24).expect("valid /24"),
                netns: format!("{prefix}node{}", i + 1),
            })
            .collect();
        let mut lab = Lab {
            dir,
            state: State {
                kind: "SvclbLab".to_string(),
                version: 1,
                name: name.clone(),
                created: jiff::Timestamp::now(),
                proxy_mode: cfg.proxy_mode,
                ecmp: cfg.ecmp,
                zones: cfg.zones,
                server,
                options: cfg.options.clone(),
                nodes,
                pods: Vec::new(),
                next_pod: 1,
            },
        };
        lab.save()?;
        let built = lab.build(cfg.pods);
        drop(lock);
        match built {
            Ok(()) => Ok(lab),
            Err(e) => {
                let _ = down_by_name(name);
                Err(e)
            }
        }
    }

    fn build(&mut self, pods: usize) -> Result<()> {
        let s = &self.state;
        let net = self.netns_of("net");
        let client = self.netns_of("client");
        let mut add = format!("netns add {net}\nnetns add {client}\n");
        for n in &s.nodes {
            add.push_str(&format!("netns add {}\n", n.netns));
        }
        netns::ip_batch(None, &add, false)?;

        // The node network: a bridge in its own namespace.
        netns::ip_batch(
            Some(&net),
            &format!(
                "link set lo up\nlink add br0 type bridge\naddr add {NODE_NET_ROUTER}/{NODE_NET_PREFIX} dev br0\n\
                 link set br0 up\n"
            ),
            false,
        )?;
        let nodes = s.nodes.clone();
        netns::par_each(&nodes, THREADS, |n| {
            netns::sysctls(
                &n.netns,
                &[
                    ("net/ipv4/ip_forward", "1"),
                    ("net/ipv4/conf/all/rp_filter", "0"),
                    ("net/ipv4/conf/default/rp_filter", "0"),
                ],
            )?;
            let mut b = String::from("link set lo up\n");
            b.push_str(&format!("link add eth0 type veth peer name {} netns {net}\n", n.name));
            b.push_str(&format!("addr add {}/{NODE_NET_PREFIX} dev eth0\n", n.ip));
            b.push_str("link set eth0 up\n");
            for other in nodes.iter().filter(|o| o.name != n.name) {
                b.push_str(&format!("route add {} via {} dev eth0\n", other.pod_cidr, other.ip));
            }
            // The node network's router: gives nodes a default route (so the ClusterIP and
            // LB IP resolve before nat-output DNAT, as on a real node) and lets proxy_arp
            // answer for the pods' gateway. The router is the `net` namespace; it does not
            // forward, so nothing leaves the lab.
            b.push_str(&format!("route add default via {NODE_NET_ROUTER} dev eth0\n"));
            netns::ip_batch(Some(&n.netns), &b, false)
        })?;
        let mut c = String::from("link set lo up\n");
        c.push_str(&format!("link add eth0 type veth peer name client netns {net}\n"));
        c.push_str(&format!(
            "addr add {CLIENT_IP}/{NODE_NET_PREFIX} dev eth0\nlink set eth0 up\n"
        ));
        if s.ecmp {
            netns::sysctls(&client, &[("net/ipv4/fib_multipath_hash_policy", "1")])?;
            let hops: Vec<String> = nodes.iter().map(|n| format!("nexthop via {} dev eth0", n.ip)).collect();
            c.push_str(&format!("route add {LB_IP}/32 {}\n", hops.join(" ")));
        } else {
            c.push_str(&format!("route add {LB_IP}/32 via {} dev eth0\n", nodes[0].ip));
        }
        netns::ip_batch(Some(&client), &c, false)?;
        let mut b = String::new();
        for port in nodes.iter().map(|n| n.name.as_str()).chain(["client"]) {
            b.push_str(&format!("link set {port} master br0\nlink set {port} up\n"));
        }
        netns::ip_batch(Some(&net), &b, false)?;

        self.write_rules(true, false)?;
        self.add_pods(pods)
    }

    /// Adds `count` pods: namespaces, links, servers; waits until they listen, then
    /// rewrites the rules (the endpoints become ready).
    fn add_pods(&mut self, count: usize) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let prefix = netns_prefix(&self.state.name);
        let mut new: Vec<Pod> = Vec::new();
        for _ in 0..count {
            // The node with the fewest pods (round-robin when balanced).
            let node = self
                .state
                .nodes
                .iter()
                .min_by_key(|n| self.state.pods.iter().chain(&new).filter(|p| p.node == n.name).count())
                .expect("a lab has nodes")
                .clone();
            let used: HashSet<Ipv4Addr> = self.state.pods.iter().chain(&new).map(|p| p.ip).collect();
            let ip = node
                .pod_cidr
                .hosts()
                .skip(1)
                .find(|ip| !used.contains(ip))
                .with_context(|| format!("node {} has no free pod address", node.name))?;
            let idx = self.state.next_pod;
            self.state.next_pod += 1;
            let name = format!("pod-{idx:03}");
            new.push(Pod {
                netns: format!("{prefix}{name}"),
                veth: format!("vp{idx}"),
                name,
                node: node.name.clone(),
                zone: node.zone.clone(),
                ip,
                pid: 0,
                hint: None,
                hint_dropped: false,
            });
        }
        let add: String = new.iter().map(|p| format!("netns add {}\n", p.netns)).collect();
        netns::ip_batch(None, &add, false)?;
        // Record them now so a failure below still tears them down.
        self.state.pods.extend(new.iter().cloned());
        self.save()?;

        let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
        for p in &new {
            by_node.entry(p.node.clone()).or_default().push(p);
        }
        let groups: Vec<(Node, Vec<&Pod>)> = by_node
            .into_iter()
            .map(|(n, ps)| (self.node(&n).expect("pod's node exists").clone(), ps))
            .collect();
        netns::par_each(&groups, THREADS, |(node, pods)| {
            let mut b = String::new();
            for p in pods {
                b.push_str(&format!(
                    "link add {} type veth peer name eth0 netns {}\n",
                    p.veth, p.netns
                ));
                b.push_str(&format!("link set {} up\n", p.veth));
                b.push_str(&format!("route add {}/32 dev {} scope link\n", p.ip, p.veth));
            }
            netns::ip_batch(Some(&node.netns), &b, false)?;
            // Calico's settings: answer every ARP from the pod, and at once (the default
            // proxy_delay of up to 0.8 s stalls a pod's first burst of connections).
            let keys: Vec<String> = pods
                .iter()
                .flat_map(|p| {
                    [
                        format!("net/ipv4/conf/{}/proxy_arp", p.veth),
                        format!("net/ipv4/neigh/{}/proxy_delay", p.veth),
                    ]
                })
                .collect();
            let kv: Vec<(&str, &str)> = keys
                .iter()
                .map(|k| (k.as_str(), if k.ends_with("proxy_arp") { "1" } else { "0" }))
                .collect();
            netns::sysctls(&node.netns, &kv)
        })?;
        netns::par_each(&new, THREADS, |p| {
            let b = format!(
                "link set lo up\naddr add {}/32 dev eth0\nlink set eth0 up\n\
                 route add default via {POD_GATEWAY} dev eth0 onlink\n",
                p.ip
            );
            netns::ip_batch(Some(&p.netns), &b, false)
        })?;

        for p in &new {
            let pid = self.spawn_server(p)?;
            if let Some(sp) = self.state.pods.iter_mut().find(|q| q.name == p.name) {
                sp.pid = pid;
            }
        }
        self.save()?;
        self.wait_ready(&new)?;
        self.refresh_hints();
        self.write_rules(false, false)?;
        self.save()
    }

    fn spawn_server(&self, p: &Pod) -> Result<u32> {
        let log_path = self.dir.join("logs").join(format!("{}.log", p.name));
        let log = File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let ns = File::open(netns::netns_path(&p.netns)).with_context(|| format!("no namespace {}", p.netns))?;
        let fd = ns.as_raw_fd();
        let mut cmd = Command::new(&self.state.server);
        cmd.args(["serve", "--address", "[::]:5001", "--http", "[::]:8080"])
            .args([
                "--name",
                &p.name,
                "--node",
                &p.node,
                "--zone",
                &p.zone,
                "--workers",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .current_dir("/");
        // SAFETY: between fork and exec we only call setns and setsid, both
        // async-signal-safe; `ns` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                netns::enter(fd)?;
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} serve for {}", self.state.server.display(), p.name))?;
        drop(ns);
        Ok(child.id())
    }

    fn wait_ready(&self, pods: &[Pod]) -> Result<()> {
        let start = Instant::now();
        let pids: BTreeMap<&str, u32> = self.state.pods.iter().map(|p| (p.name.as_str(), p.pid)).collect();
        let mut waiting: Vec<&Pod> = pods.iter().collect();
        while !waiting.is_empty() {
            for p in &waiting {
                let pid = pids[p.name.as_str()];
                if !netns::alive(pid) {
                    let log = std::fs::read_to_string(self.dir.join("logs").join(format!("{}.log", p.name)))
                        .unwrap_or_default();
                    let last = log.lines().last().unwrap_or("(no output)");
                    bail!("the server of pod {} exited: {last}", p.name);
                }
            }
            waiting.retain(|p| !netns::listening(pids[p.name.as_str()], PORTS[0].target_port));
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "pods not listening on :{} after {}s: {}",
                    PORTS[0].target_port,
                    READY_TIMEOUT.as_secs(),
                    waiting.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(" ")
                );
            }
            if !waiting.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// EndpointSlice hints: with trafficDistribution PreferClose every endpoint gets its
    /// own zone, unless the hint was dropped.
    fn refresh_hints(&mut self) {
        let td = self.state.options.traffic_distribution.is_some();
        for p in &mut self.state.pods {
            p.hint = (td && !p.hint_dropped).then(|| p.zone.clone());
        }
    }

    /// Writes every node's rules (in parallel), as each node's kube-proxy would after an
    /// EndpointSlice or Service change: one atomic transaction per node.
    fn write_rules(&self, initial: bool, reset_affinity: bool) -> Result<()> {
        let cluster = self.cluster();
        netns::par_each(&self.state.nodes, THREADS, |n| match self.state.proxy_mode {
            ProxyMode::Nftables => {
                let existing = if initial {
                    NftExisting::default()
                } else {
                    NftExisting::parse(
                        &netns::exec_output(&n.netns, "nft", &["list", "chains", "ip"])?,
                        &netns::exec_output(&n.netns, "nft", &["list", "sets", "ip"])?,
                    )
                };
                let tx = rules::nft_transaction(&cluster, n, &existing, reset_affinity);
                netns::exec_with_stdin(&n.netns, "nft", &["-f", "-"], &tx)
            }
            ProxyMode::Iptables => {
                let existing = if initial {
                    Default::default()
                } else {
                    rules::ipt_existing(&netns::exec_output(&n.netns, "iptables-save", &["-t", "nat"])?)
                };
                let input = rules::iptables_restore(&cluster, n, &existing, initial);
                netns::exec_with_stdin(&n.netns, "iptables-restore", &["--noflush"], &input)
            }
        })
    }

    fn cluster(&self) -> Cluster<'_> {
        Cluster {
            cluster_ip: CLUSTER_IP,
            service_cidr: SERVICE_CIDR,
            cluster_cidr: CLUSTER_CIDR,
            lb_ip: LB_IP,
            options: &self.state.options,
            pods: &self.state.pods,
        }
    }

    /// The endpoints `node`'s kube-proxy balances over: ClusterIP traffic from the node and
    /// its pods (`external` false) or NodePort / LoadBalancer traffic arriving at the node
    /// (`external` true), after traffic policies and zone hints.
    pub fn endpoints(&self, node: &str, external: bool) -> Result<Vec<&Pod>> {
        let n = self.node(node).with_context(|| self.unknown(node))?;
        let c = self.cluster();
        let eps = rules::NodeEndpoints::categorize(&c, n);
        let o = &self.state.options;
        Ok(if external { eps.external(o) } else { eps.internal(o) }.to_vec())
    }

    /// The generated rules for `node` (what the lab feeds to `nft -f` / `iptables-restore`).
    pub fn generated_rules(&self, node: &str) -> Result<String> {
        let n = self.node(node).with_context(|| self.unknown(node))?;
        let c = self.cluster();
        Ok(match self.state.proxy_mode {
            ProxyMode::Nftables => rules::nft_transaction(&c, n, &NftExisting::default(), false),
            ProxyMode::Iptables => rules::iptables_restore(&c, n, &Default::default(), true),
        })
    }

    /// The rules as the kernel has them on `node` (`nft list table ip kube-proxy` or
    /// `iptables-save`).
    pub fn rules(&self, node: &str) -> Result<String> {
        let n = self.node(node).with_context(|| self.unknown(node))?;
        match self.state.proxy_mode {
            ProxyMode::Nftables => netns::exec_output(&n.netns, "nft", &["list", "table", "ip", "kube-proxy"]),
            ProxyMode::Iptables => netns::exec_output(&n.netns, "iptables-save", &[]),
        }
    }

    fn save(&self) -> Result<()> {
        let path = state_path(&self.dir);
        let tmp = self.dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.state)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Loads a running lab.
    pub fn open(name: &str) -> Result<Lab> {
        validate_name(name)?;
        let dir = labs_dir().join(name);
        let text = std::fs::read_to_string(state_path(&dir))
            .map_err(|_| anyhow::anyhow!("no lab named {name}; run `kubectl svclb lab up --name {name}`"))?;
        let state: State =
            serde_json::from_str(&text).with_context(|| format!("corrupt lab state {}", state_path(&dir).display()))?;
        Ok(Lab { dir, state })
    }

    /// Names of the labs that can be opened: those with state under [`labs_dir`], sorted.
    pub fn saved() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(labs_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("state.json").exists())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Names of the labs on this machine (with state or with namespaces left).
    pub fn list() -> Result<Vec<String>> {
        let mut names = Lab::saved();
        for ns in netns::list_with_prefix("svclb-") {
            if let Some((lab, _)) = ns["svclb-".len()..].split_once('.') {
                names.push(lab.to_string());
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn proxy_mode(&self) -> ProxyMode {
        self.state.proxy_mode
    }

    pub fn nodes(&self) -> &[Node] {
        &self.state.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.state.pods
    }

    pub fn options(&self) -> &ServiceOptions {
        &self.state.options
    }

    fn node(&self, name: &str) -> Option<&Node> {
        self.state.nodes.iter().find(|n| n.name == name)
    }

    fn netns_of(&self, suffix: &str) -> String {
        format!("{}{suffix}", netns_prefix(&self.state.name))
    }

    fn unknown(&self, who: &str) -> String {
        let n = &self.state.name;
        format!("no node or pod named {who} in lab {n}; see `kubectl svclb lab status --name {n}`")
    }

    pub fn status(&self) -> LabStatus {
        let s = &self.state;
        LabStatus {
            name: s.name.clone(),
            proxy_mode: s.proxy_mode,
            created: s.created,
            state_dir: self.dir.clone(),
            nodes: s
                .nodes
                .iter()
                .map(|n| NodeStatus {
                    name: n.name.clone(),
                    zone: n.zone.clone(),
                    ip: n.ip,
                    pod_cidr: n.pod_cidr,
                    netns: n.netns.clone(),
                    pods: s.pods.iter().filter(|p| p.node == n.name).count(),
                })
                .collect(),
            pods: s
                .pods
                .iter()
                .map(|p| PodStatus {
                    name: p.name.clone(),
                    node: p.node.clone(),
                    zone: p.zone.clone(),
                    ip: p.ip,
                    netns: p.netns.clone(),
                    pid: p.pid,
                    alive: p.pid != 0
                        && netns::alive(p.pid)
                        && netns::pid_netns_inode(p.pid).is_some()
                        && netns::pid_netns_inode(p.pid) == netns::netns_inode(&p.netns),
                    hint: p.hint.clone(),
                })
                .collect(),
            client: ClientStatus {
                netns: self.netns_of("client"),
                ip: CLIENT_IP,
            },
            service: ServiceStatus {
                namespace: rules::SERVICE_NAMESPACE.to_string(),
                name: rules::SERVICE_NAME.to_string(),
                cluster_ip: CLUSTER_IP,
                port: PORTS[0].port,
                http_port: PORTS[2].port,
                node_port: PORTS[0].node_port,
                http_node_port: PORTS[2].node_port,
                node_ips: s.nodes.iter().map(|n| n.ip).collect(),
                lb_ip: LB_IP,
                lb_next_hops: if s.ecmp {
                    s.nodes.iter().map(|n| n.name.clone()).collect()
                } else {
                    vec![s.nodes[0].name.clone()]
                },
                ecmp: s.ecmp,
                options: s.options.clone(),
            },
        }
    }

    /// The namespace of `who`: "client", "net", a node name or a pod name.
    pub fn netns(&self, who: &str) -> Result<String> {
        if who == "client" || who == "net" {
            return Ok(self.netns_of(who));
        }
        if let Some(n) = self.node(who) {
            return Ok(n.netns.clone());
        }
        if let Some(p) = self.state.pods.iter().find(|p| p.name == who) {
            return Ok(p.netns.clone());
        }
        bail!("{}", self.unknown(who))
    }

    /// `ip netns exec <ns> program`: add arguments and run it.
    pub fn command(&self, who: &str, program: &Path) -> Result<Command> {
        let ns = self.netns(who)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns]).arg(program);
        Ok(cmd)
    }

    /// Deletes a pod as Kubernetes would: its endpoint leaves every node's rules first
    /// (one atomic rewrite per node), then the server is killed and the namespace removed.
    pub fn delete_pod(&mut self, pod: &str) -> Result<()> {
        require_host()?;
        let Some(i) = self.state.pods.iter().position(|p| p.name == pod) else {
            let n = &self.state.name;
            bail!("no pod named {pod} in lab {n}; see `kubectl svclb lab status --name {n}`");
        };
        let _lock = DirLock::take(&self.dir)?;
        let gone = self.state.pods.remove(i);
        self.write_rules(false, false)?;
        self.save()?;
        self.clear_udp_conntrack(std::slice::from_ref(&gone))?;
        remove_pods(&[gone])
    }

    /// Scales the pods to `pods`: new pods go to the nodes with the fewest pods; scaling
    /// down removes the newest pods.
    pub fn scale(&mut self, pods: usize) -> Result<()> {
        require_host()?;
        if pods > self.state.nodes.len() * MAX_PODS_PER_NODE {
            bail!("--pods must be at most {}", self.state.nodes.len() * MAX_PODS_PER_NODE);
        }
        let _lock = DirLock::take(&self.dir)?;
        let have = self.state.pods.len();
        if pods > have {
            return self.add_pods(pods - have);
        }
        let gone: Vec<Pod> = self.state.pods.drain(pods..).collect();
        if gone.is_empty() {
            return Ok(());
        }
        self.write_rules(false, false)?;
        self.save()?;
        self.clear_udp_conntrack(&gone)?;
        remove_pods(&gone)
    }

    /// After endpoints left the rules, kube-proxy deletes the UDP conntrack entries that
    /// still point at them (UDP has no close to end them; they would blackhole the flow until
    /// they time out). TCP entries are left alone, as kube-proxy does.
    fn clear_udp_conntrack(&self, gone: &[Pod]) -> Result<()> {
        let ips: HashSet<Ipv4Addr> = gone.iter().map(|p| p.ip).collect();
        netns::par_each(&self.state.nodes, THREADS, |n| {
            netns::in_netns(&n.netns, || conntrack::delete_udp_to(&ips)).map(|_| ())
        })
    }

    /// Changes Service options or endpoint hints and rewrites the rules.
    pub fn set(&mut self, ch: &LabChanges) -> Result<()> {
        require_host()?;
        for p in &ch.drop_hints {
            if !self.state.pods.iter().any(|q| &q.name == p) {
                let n = &self.state.name;
                bail!("no pod named {p} in lab {n}; see `kubectl svclb lab status --name {n}`");
            }
        }
        let _lock = DirLock::take(&self.dir)?;
        let before = self.state.options.clone();
        let o = &mut self.state.options;
        if let Some(a) = ch.affinity {
            o.affinity = a;
        }
        if let Some(t) = ch.affinity_timeout {
            if t == 0 || t > 86400 {
                bail!("--affinity-timeout must be 1..=86400 seconds");
            }
            o.affinity_timeout = t;
        }
        if let Some(p) = ch.external_traffic_policy {
            o.external_traffic_policy = p;
        }
        if let Some(p) = ch.internal_traffic_policy {
            o.internal_traffic_policy = p;
        }
        if let Some(td) = ch.traffic_distribution {
            o.traffic_distribution = td;
        }
        for p in &mut self.state.pods {
            if ch.restore_hints {
                p.hint_dropped = false;
            }
            if ch.drop_hints.contains(&p.name) {
                p.hint_dropped = true;
            }
        }
        self.refresh_hints();
        let reset = before.affinity_timeout != self.state.options.affinity_timeout;
        self.write_rules(false, reset)?;
        self.save()
    }

    /// Removes the whole lab.
    pub fn down(self) -> Result<()> {
        down_by_name(&self.state.name)
    }
}

/// Kills the pods' processes and deletes their namespaces (their veths go with them).
fn remove_pods(pods: &[Pod]) -> Result<()> {
    let inodes: HashSet<u64> = pods.iter().filter_map(|p| netns::netns_inode(&p.netns)).collect();
    let mut pids = netns::pids_in(&inodes);
    pids.retain(|&pid| pid != std::process::id());
    netns::kill_and_reap(&pids);
    let del: String = pods.iter().map(|p| format!("netns del {}\n", p.netns)).collect();
    netns::ip_batch(None, &del, true)
}

/// Removes lab `name` from its namespace prefix alone: kills every process in its
/// namespaces (and the recorded servers), deletes the namespaces and the state. Works
/// when the state file is gone.
pub fn down_by_name(name: &str) -> Result<()> {
    require_host()?;
    validate_name(name)?;
    let dir = labs_dir().join(name);
    let namespaces = netns::list_with_prefix(&netns_prefix(name));
    if namespaces.is_empty() && !dir.exists() {
        bail!("no lab named {name}; run `kubectl svclb lab list` to see the labs");
    }
    let inodes: HashSet<u64> = namespaces.iter().filter_map(|ns| netns::netns_inode(ns)).collect();
    let mut pids = netns::pids_in(&inodes);
    // Recorded servers whose namespace mount is gone: kill them only if they still are
    // our server for that pod (a pid may have been reused).
    let mut recorded = Vec::new();
    if let Ok(text) = std::fs::read_to_string(state_path(&dir))
        && let Ok(state) = serde_json::from_str::<State>(&text)
    {
        for p in state.pods.iter().filter(|p| p.pid != 0 && !pids.contains(&p.pid)) {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_ours = args.windows(2).any(|w| w[0] == b"--name" && w[1] == p.name.as_bytes())
                && args.contains(&b"serve".as_slice());
            if is_ours {
                recorded.push(p.pid);
            }
        }
    }
    pids.extend(recorded);
    pids.retain(|&pid| pid != std::process::id());
    netns::kill_and_reap(&pids);
    if !namespaces.is_empty() {
        let del: String = namespaces.iter().map(|ns| format!("netns del {ns}\n")).collect();
        netns::ip_batch(None, &del, true)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}
