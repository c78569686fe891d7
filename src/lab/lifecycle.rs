//! Building, changing and removing a lab: `up` (namespaces, links, routes, rules, pod
//! servers), `set`, and `down` (also from the namespace prefix alone, when the state is gone).
//! Pods coming and going are in [`super::pods`].

use std::collections::HashSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;

use crate::service::IpFamily;

use super::ipv6;
use super::kube_proxy::Syncs;
use super::state::{Changed, DirLock, Owner, State, state_path};
use super::timeline::Timeline;
use super::topology::{
    CLIENT_IP, MAX_NODES, MAX_PODS_PER_NODE, MacOf, NODE_NET_PREFIX, NODE_NET_ROUTER, capacity_problem, lb_route,
    mac_text, node_ip,
};
use super::{Lab, LabChanges, LabConfig, Node, THREADS, check_cancelled, labs_dir, netns, netns_prefix, validate_name};
use super::{LabFamilies, ProxyMode};

/// How long `lab up --ecmp` waits for the load balancer's first health checks to settle
/// (a node without endpoints needs two failed probes, one second apart).
const LB_CONVERGE: Duration = Duration::from_secs(10);

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
        check_source_ranges(&cfg.options, cfg.families)?;
        check_capacity(cfg.pods, cfg.nodes)?;
        let server = match &cfg.server {
            Some(p) => resolve_program(p, std::env::var_os("PATH").as_deref())?,
            None => std::env::current_exe().context("cannot find this executable")?,
        };
        let dir = labs_dir().join(name);
        std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("cannot create {}", dir.display()))?;
        // Locked from the check until the state is saved, so two `lab up` of one name cannot
        // both build (the second finds the state). Each change of the build takes it again.
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
                families: cfg.families,
                ecmp: cfg.ecmp,
                zones: cfg.zones,
                server,
                options: cfg.options.clone(),
                nodes,
                pods: Vec::new(),
                next_pod: 1,
                generation: 0,
                applied: Default::default(),
                sync_delay: cfg.sync_delay,
                endpoints_generation: 0,
                building: Some("lab up".to_string()),
                owner: if cfg.ephemeral { Owner::this_process() } else { None },
                last_ip: Default::default(),
            },
        };
        lab.save()?;
        drop(lock);
        let built = lab
            .build(cfg.pods, cfg.ready_delay)
            .and_then(|()| lab.mark_building(None));
        match built {
            Ok(()) => Ok(lab),
            Err(e) => {
                let _ = down_by_name(name);
                Err(e)
            }
        }
    }

    fn build(&mut self, pods: usize, ready_delay: Duration) -> Result<()> {
        let s = &self.state;
        let with_v6 = s.families.ipv6();
        let net = self.netns_of("net");
        let client = self.netns_of("client");
        let mut add = format!("netns add {net}\nnetns add {client}\n");
        for n in &s.nodes {
            add.push_str(&format!("netns add {}\n", n.netns));
        }
        netns::ip_batch(None, &add, false)?;
        check_cancelled()?;

        // The node network: a bridge in its own namespace.
        let mut r = format!(
            "link set lo up\nlink add br0 address {} type bridge\n\
             addr add {NODE_NET_ROUTER}/{NODE_NET_PREFIX} dev br0\nlink set br0 up\n",
            mac_text(MacOf::NodeNet, NODE_NET_ROUTER)
        );
        if with_v6 {
            ipv6::router(&mut r);
        }
        netns::ip_batch(Some(&net), &r, false)?;
        let nodes = s.nodes.clone();
        netns::par_each(&nodes, THREADS, |n| {
            netns::sysctls(
                &n.netns,
                &[
                    ("net/ipv4/ip_forward", "1"),
                    ("net/ipv4/conf/all/rp_filter", "0"),
                    ("net/ipv4/conf/default/rp_filter", "0"),
                    // No ICMP redirects: the client shares the node network, so a node
                    // forwarding its NodePort/LB traffic to another node would redirect it, and
                    // redirects spend the per-peer ICMP budget that rejections need (docs/lab.md).
                    ("net/ipv4/conf/all/send_redirects", "0"),
                    ("net/ipv4/conf/default/send_redirects", "0"),
                ],
            )?;
            if with_v6 {
                netns::sysctls(&n.netns, &ipv6::NODE_SYSCTLS)?;
            }
            let mut b = String::from("link set lo up\n");
            b.push_str(&format!(
                "link add eth0 address {} type veth peer name {} netns {net}\n",
                mac_text(MacOf::NodeNet, n.ip),
                n.name
            ));
            b.push_str(&format!("addr add {}/{NODE_NET_PREFIX} dev eth0\n", n.ip));
            b.push_str("link set eth0 up\n");
            // Neighbours written, not learned (see [`MacOf`]).
            let others = nodes.iter().filter(|o| o.name != n.name).map(|o| o.ip);
            for ip in others.chain([NODE_NET_ROUTER, CLIENT_IP]) {
                let mac = mac_text(MacOf::NodeNet, ip);
                b.push_str(&format!("neigh add {ip} lladdr {mac} dev eth0 nud permanent\n"));
            }
            for other in nodes.iter().filter(|o| o.name != n.name) {
                b.push_str(&format!("route add {} via {} dev eth0\n", other.pod_cidr, other.ip));
            }
            // The node network's router: gives nodes a default route (so the ClusterIP and
            // LB IP resolve before nat-output DNAT, as on a real node) and lets proxy_arp
            // answer for the pods' gateway. The router is the `net` namespace; it does not
            // forward, so nothing leaves the lab.
            b.push_str(&format!("route add default via {NODE_NET_ROUTER} dev eth0\n"));
            if with_v6 {
                ipv6::node(&mut b, n, &nodes);
            }
            netns::ip_batch(Some(&n.netns), &b, false)
        })?;
        let mut c = String::from("link set lo up\n");
        c.push_str(&format!(
            "link add eth0 address {} type veth peer name client netns {net}\n",
            mac_text(MacOf::NodeNet, CLIENT_IP)
        ));
        c.push_str(&format!(
            "addr add {CLIENT_IP}/{NODE_NET_PREFIX} dev eth0\nlink set eth0 up\n"
        ));
        for ip in nodes.iter().map(|n| n.ip).chain([NODE_NET_ROUTER]) {
            let mac = mac_text(MacOf::NodeNet, ip);
            c.push_str(&format!("neigh add {ip} lladdr {mac} dev eth0 nud permanent\n"));
        }
        let hops: Vec<Ipv4Addr> = if s.ecmp {
            nodes.iter().map(|n| n.ip).collect()
        } else {
            vec![nodes[0].ip]
        };
        if s.ecmp {
            // The flow's addresses and ports pick the next hop (L4 hash), in both families.
            netns::sysctls(
                &client,
                &[
                    ("net/ipv4/fib_multipath_hash_policy", "1"),
                    ("net/ipv6/fib_multipath_hash_policy", "1"),
                ],
            )?;
        }
        c.push_str(&format!("route add {}\n", lb_route(IpFamily::Ipv4, &hops)));
        if with_v6 {
            netns::sysctls(&client, &ipv6::CLIENT_SYSCTLS)?;
            ipv6::client(&mut c, &nodes, s.ecmp);
        }
        netns::ip_batch(Some(&client), &c, false)?;
        let mut b = String::new();
        for port in nodes.iter().map(|n| n.name.as_str()).chain(["client"]) {
            b.push_str(&format!("link set {port} master br0\nlink set {port} up\n"));
        }
        netns::ip_batch(Some(&net), &b, false)?;
        check_cancelled()?;
        self.spawn_agents()?;

        // Every kube-proxy's first sync (the Service without endpoints), at once.
        let start = Instant::now();
        let first = self.change(|s| Ok(s.bump(Changed::Service)))?;
        let mut syncs = Syncs::new(self, start);
        syncs.start(first.into_iter().map(|(n, _)| (n, Duration::ZERO)).collect());
        // The pods, ready together: nothing sends traffic before `up` returns.
        let mut tl = Timeline::new(start);
        let added = self.add_pods(pods, ready_delay, true, &mut tl, &mut syncs);
        let synced = syncs.finish(&mut tl);
        self.reload()?;
        added.and(synced)?;
        self.wait_lb(LB_CONVERGE)
    }

    /// Starts the health agents: kube-proxy's health servers on every node and, with ECMP, the
    /// health-checked load balancer in the client's namespace (see [`super::health`]).
    fn spawn_agents(&self) -> Result<()> {
        let name = self.state.name.clone();
        for n in &self.state.nodes {
            let args = ["lab", "agent", "node", "--name", &name, "--node", &n.name];
            self.spawn_in(&n.netns, &format!("{}-agent", n.name), &args)
                .with_context(|| format!("cannot start the health agent of {}", n.name))?;
        }
        if self.state.ecmp {
            let args = ["lab", "agent", "lb", "--name", &name];
            self.spawn_in(&self.netns_of("client"), "lb-agent", &args)
                .context("cannot start the load balancer's health checks")?;
        }
        Ok(())
    }

    /// Runs the lab's program (`kubectl-svclb`) with `args` in namespace `ns`, in its own process
    /// group (a Ctrl-C at the terminal does not reach it), logging to `logs/<log>.log`; returns
    /// its pid. Spawned from a thread inside `ns`, so the child starts there with nothing to run
    /// between fork and exec, and std spawns it with posix_spawn (vfork): a fork copies this
    /// process's page tables, ~5 ms a pod at 2,000 pods.
    pub(super) fn spawn_in(&self, ns: &str, log: &str, args: &[&str]) -> Result<u32> {
        let log_path = self.dir.join("logs").join(format!("{log}.log"));
        let log = File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = Command::new(&self.state.server);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .current_dir("/")
            .process_group(0);
        let child = netns::in_netns(ns, || Ok(cmd.spawn()?))?;
        Ok(child.id())
    }

    /// Changes Service options, endpoint hints or the sync delay; every node's kube-proxy
    /// applies the change after its own delay. Returns when all of them have, with their syncs.
    pub fn set(&mut self, ch: &LabChanges) -> Result<Timeline> {
        require_host()?;
        let mut tl = Timeline::new(Instant::now());
        let delays = self.change(|s| {
            for p in ch.drop_hints.iter().chain(ch.conditions.iter().map(|(p, _)| p)) {
                if !s.pods.iter().any(|q| &q.name == p) {
                    let n = &s.name;
                    bail!("no pod named {p} in lab {n}; see `kubectl svclb lab status --name {n}`");
                }
            }
            let o = &mut s.options;
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
            if let Some(r) = &ch.source_ranges {
                o.source_ranges = r.clone();
            }
            check_source_ranges(o, s.families)?;
            let slices = |s: &State| s.pods.iter().map(|p| p.ep()).collect::<Vec<_>>();
            let before = slices(s);
            for p in &mut s.pods {
                if ch.restore_hints {
                    p.hint_dropped = false;
                }
                if ch.drop_hints.contains(&p.name) {
                    p.hint_dropped = true;
                }
                if let Some((_, c)) = ch.conditions.iter().find(|(n, _)| n == &p.name) {
                    p.conditions = *c;
                }
            }
            s.refresh_hints();
            if let Some(d) = ch.sync_delay {
                s.sync_delay = d;
            }
            // New hints are an EndpointSlice change; the rest changes the Service only.
            let what = if slices(s) == before {
                Changed::Service
            } else {
                Changed::Endpoints
            };
            Ok(ch.changes_rules().then(|| s.bump(what)))
        })?;
        if let Some(delays) = delays {
            let mut syncs = Syncs::new(self, tl.start);
            syncs.start(delays);
            syncs.finish(&mut tl)?;
            self.reload()?;
        }
        Ok(tl)
    }

    /// Removes the whole lab.
    pub fn down(self) -> Result<()> {
        down_by_name(&self.state.name)
    }
}

/// Refuses, in one line, a size this machine cannot serve (see [`capacity_problem`]), read
/// from /proc: `MemAvailable`, and `kernel.pid_max` less the tasks that exist (/proc/loadavg).
pub(super) fn check_capacity(pods: usize, nodes: usize) -> Result<()> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let available_kib: Option<u64> = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok());
    let pid_max: Option<u64> = read("/proc/sys/kernel/pid_max").trim().parse().ok();
    // "0.52 0.58 0.59 2/389 12345": 389 tasks exist.
    let tasks: Option<u64> = read("/proc/loadavg")
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/')?.1.parse().ok());
    let (Some(kib), Some(max), Some(tasks)) = (available_kib, pid_max, tasks) else {
        return Ok(());
    };
    match capacity_problem(pods, nodes, kib / 1024, max.saturating_sub(tasks)) {
        Some(why) => bail!("{why}"),
        None => Ok(()),
    }
}

/// `--server PROGRAM` as an absolute path, checked before anything is built: the lab starts it
/// later from other threads and records it for `lab scale`, whose working directory may differ.
/// A path with a `/` is taken from the current directory (`./kubectl-svclb`), a bare name from
/// `PATH` (as a shell does).
fn resolve_program(program: &std::path::Path, path_var: Option<&std::ffi::OsStr>) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let shown = program.display();
    let bare = program.components().count() == 1 && !program.is_absolute();
    let found = if bare {
        path_var
            .map(std::env::split_paths)
            .into_iter()
            .flatten()
            // An empty entry would mean the current directory: not taken, as `sudo` does not.
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow::anyhow!("--server {shown}: no such program on PATH; give its path, e.g. ./{shown}")
            })?
    } else {
        std::path::absolute(program).with_context(|| format!("--server {shown}: cannot resolve the path"))?
    };
    let meta = std::fs::metadata(&found).map_err(|e| anyhow::anyhow!("--server {shown}: {e}"))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("--server {shown}: {} is not an executable file", found.display());
    }
    Ok(found)
}

/// The Service's source ranges must be of its families.
fn check_source_ranges(o: &crate::service::ServiceOptions, families: LabFamilies) -> Result<()> {
    use crate::service::IpFamily;
    if let Some(r) = o.source_ranges.iter().find(|r| !families.has(IpFamily::of(&r.addr()))) {
        bail!(
            "--lb-source-ranges {r}: the lab's Service is {}, give CIDRs of its families",
            families.as_str()
        );
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::resolve_program;

    #[test]
    fn server_programs_resolve_to_absolute_paths_before_the_build() {
        // Unit tests run in the package directory: a relative path is taken from it.
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            resolve_program(Path::new("./scripts/bench.sh"), None).unwrap(),
            here.join("scripts/bench.sh")
        );
        assert_eq!(
            resolve_program(Path::new("scripts/bench.sh"), None).unwrap(),
            here.join("scripts/bench.sh")
        );
        // A bare name is looked up on PATH, not in the current directory.
        let path = std::env::join_paths(["/nonexistent", here.join("scripts").to_str().unwrap()]).unwrap();
        assert_eq!(
            resolve_program(Path::new("bench.sh"), Some(&path)).unwrap(),
            here.join("scripts/bench.sh")
        );
        let e = resolve_program(Path::new("bench.sh"), Some(std::ffi::OsStr::new("/nonexistent")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--server bench.sh: no such program on PATH; give its path, e.g. ./bench.sh"
        );
        // Missing, or not executable: one line naming it.
        let e = resolve_program(Path::new("./no-such-server"), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--server ./no-such-server: No such file"), "{e}");
        let e = resolve_program(Path::new("./Cargo.toml"), None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "--server ./Cargo.toml: {} is not an executable file",
                here.join("Cargo.toml").display()
            )
        );
        let e = resolve_program(Path::new("Cargo.toml"), Some(std::ffi::OsStr::new(":/nonexistent")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such program on PATH"), "{e}");
    }
}
