//! Building, changing and removing a lab: `up` (namespaces, links, routes, rules, pod
//! servers), adding and deleting pods, `set`, and `down` (also from the namespace prefix
//! alone, when the state is gone).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;

use super::ProxyMode;
use super::rules::PORTS;
use super::state::{DirLock, State, state_path};
use super::topology::{
    CLIENT_IP, LB_IP, MAX_NODES, MAX_PODS_PER_NODE, NODE_NET_PREFIX, NODE_NET_ROUTER, POD_GATEWAY, node_ip,
};
use super::{Lab, LabChanges, LabConfig, Node, Pod, THREADS, labs_dir, netns, netns_prefix, validate_name};

const READY_TIMEOUT: Duration = Duration::from_secs(20);

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

/// The programs a lab of `mode` runs, and the Debian/Ubuntu package of each.
fn tools(mode: ProxyMode) -> &'static [(&'static str, &'static str)] {
    match mode {
        ProxyMode::Nftables => &[("ip", "iproute2"), ("nft", "nftables")],
        ProxyMode::Iptables => &[
            ("ip", "iproute2"),
            ("iptables-restore", "iptables"),
            ("iptables-save", "iptables"),
        ],
    }
}

/// Fails in one line naming the packages to install when a program the lab runs is missing.
fn require_tools(mode: ProxyMode) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = |prog: &str| std::env::split_paths(&path).any(|d| d.join(prog).is_file());
    let mut missing: Vec<(&str, &str)> = tools(mode).iter().copied().filter(|(p, _)| !found(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let progs: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
    missing.dedup_by_key(|(_, pkg)| *pkg);
    let pkgs: Vec<&str> = missing.iter().map(|(_, pkg)| *pkg).collect();
    bail!(
        "the lab runs {} and this machine has not got it: install {} (Debian/Ubuntu: apt-get install {})",
        progs.join(", "),
        pkgs.join(" and "),
        pkgs.join(" ")
    )
}

impl Lab {
    /// Builds a lab: namespaces, links, routes, kube-proxy rules, pod servers.
    /// On failure everything built so far is removed.
    pub fn up(cfg: &LabConfig) -> Result<Lab> {
        require_host()?;
        require_tools(cfg.proxy_mode)?;
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
                node_hint: None,
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

    /// EndpointSlice hints, as the EndpointSlice controller gives them: with a trafficDistribution
    /// every endpoint gets its zone (and with PreferSameNode also its node), unless its hints were
    /// dropped.
    fn refresh_hints(&mut self) {
        let td = self.state.options.traffic_distribution;
        for p in &mut self.state.pods {
            let hinted = td.filter(|_| !p.hint_dropped);
            p.hint = hinted.map(|_| p.zone.clone());
            p.node_hint = hinted.filter(|t| t.hints_nodes()).map(|_| p.node.clone());
        }
    }

    /// Deletes a pod as Kubernetes would: its endpoint leaves every node's rules first
    /// (one atomic rewrite per node), then the server is killed and the namespace removed.
    pub fn delete_pod(&mut self, pod: &str) -> Result<()> {
        require_host()?;
        let _lock = self.lock()?;
        let Some(i) = self.state.pods.iter().position(|p| p.name == pod) else {
            let n = &self.state.name;
            bail!("no pod named {pod} in lab {n}; see `kubectl svclb lab status --name {n}`");
        };
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
        let _lock = self.lock()?;
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

    /// Changes Service options or endpoint hints and rewrites the rules.
    pub fn set(&mut self, ch: &LabChanges) -> Result<()> {
        require_host()?;
        let _lock = self.lock()?;
        for p in &ch.drop_hints {
            if !self.state.pods.iter().any(|q| &q.name == p) {
                let n = &self.state.name;
                bail!("no pod named {p} in lab {n}; see `kubectl svclb lab status --name {n}`");
            }
        }
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
