//! Pods coming and going as Kubernetes has them: a new pod enters the rules once its server
//! answers (plus the ready delay); a deleted pod is terminating while its server drains, stops
//! serving when the server closes its listeners, and is removed once the server has exited or
//! the grace period ended. Every step is a change of the lab's state (under its lock) that each
//! node's kube-proxy applies at its own time ([`super::kube_proxy`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::ipv6;
use super::kube_proxy::Syncs;
use super::rules::PORTS;
use super::state::{Changed, State};
use super::timeline::{EndpointEvent, Timeline};
use super::topology::{Conditions, MAX_PODS_PER_NODE, MacOf, POD_GATEWAY, POD_GATEWAY_V6, mac, mac_text, v6};
use super::{
    Lab, LabTiming, Node, Pod, THREADS, check_cancelled, lifecycle::require_host, netns, netns_prefix, rtnetlink,
};
use crate::server::{LOG_DRAINING, LOG_LISTENING};

/// How long a new server may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How often new servers are looked at (listening, exited): the readiness probe's period (a
/// lab comes up with a hundred of them, which this reads /proc for each time).
const READY_PROBE: Duration = Duration::from_millis(20);
/// How often deleted pods' servers are looked at (still listening, exited).
const END_PROBE: Duration = Duration::from_millis(10);

impl State {
    /// EndpointSlice hints, as the EndpointSlice controller gives them: with a trafficDistribution
    /// every endpoint gets its zone (and with PreferSameNode also its node), unless its hints were
    /// dropped.
    pub(super) fn refresh_hints(&mut self) {
        let td = self.options.traffic_distribution;
        for p in &mut self.pods {
            let hinted = td.filter(|_| !p.hint_dropped);
            p.hint = hinted.map(|_| p.zone.clone());
            p.node_hint = hinted.filter(|t| t.hints_nodes()).map(|_| p.node.clone());
        }
    }

    /// Sets the conditions of those of `pods` that are still in the lab with conditions `from`;
    /// the ones changed, and a new generation if there are any.
    fn set_conditions(
        &mut self,
        pods: &[String],
        from: Conditions,
        to: Conditions,
    ) -> (Vec<String>, Option<Vec<(String, Duration)>>) {
        let mut changed = Vec::new();
        for p in self.pods.iter_mut() {
            if pods.contains(&p.name) && p.conditions == from {
                p.conditions = to;
                changed.push(p.name.clone());
            }
        }
        let delays = (!changed.is_empty()).then(|| self.bump(Changed::Endpoints));
        (changed, delays)
    }
}

impl Lab {
    /// Deletes a pod as Kubernetes does, with the default [`LabTiming`].
    pub fn delete_pod(&mut self, pod: &str) -> Result<Timeline> {
        self.delete_pod_with(pod, &LabTiming::default())
    }

    /// Deletes a pod as Kubernetes does: it becomes terminating (not ready, serving) and its
    /// server gets SIGTERM at once, carrying the drain delay; the server keeps accepting for the
    /// drain delay, then closes its listeners (not serving) and finishes its open connections;
    /// once it has exited, or when the grace period ends (then it is killed), the endpoint is
    /// removed and the namespace deleted. Each step is applied by every node's kube-proxy after
    /// its own sync delay; this returns when all of them applied the removal, with the timeline.
    /// Safe to call from another thread with its own [`Lab::open`] while traffic runs.
    pub fn delete_pod_with(&mut self, pod: &str, timing: &LabTiming) -> Result<Timeline> {
        self.delete_pods_with(&[pod.to_string()], timing)
    }

    /// Deletes `pods` together, each as [`Lab::delete_pod_with`] (an eviction of a node's pods,
    /// a ReplicaSet scaled down); returns when every node applied their removal.
    pub fn delete_pods_with(&mut self, pods: &[String], timing: &LabTiming) -> Result<Timeline> {
        require_host()?;
        let mut tl = Timeline::new(Instant::now());
        let mut syncs = Syncs::new(self, tl.start);
        let deleted = self.delete_pods(pods, timing, &mut tl, &mut syncs);
        let synced = syncs.finish(&mut tl);
        self.reload()?;
        deleted.and(synced)?;
        Ok(tl)
    }

    /// Scales the pods with the default [`LabTiming`].
    pub fn scale(&mut self, pods: usize) -> Result<Timeline> {
        self.scale_with(pods, &LabTiming::default())
    }

    /// Scales to `pods` pods (terminating ones do not count): new pods go to the nodes with the
    /// fewest pods and become ready one by one (`timing.ready_delay` after their server
    /// answers); scaling down deletes the newest pods, all at once, as [`Lab::delete_pod_with`].
    pub fn scale_with(&mut self, pods: usize, timing: &LabTiming) -> Result<Timeline> {
        self.scale_avoiding(pods, timing, &[])
    }

    /// [`Lab::scale_with`], placing no new pod on the nodes in `avoid` (cordoned ones, as a
    /// scheduler would: a node being drained).
    pub fn scale_avoiding(&mut self, pods: usize, timing: &LabTiming, avoid: &[String]) -> Result<Timeline> {
        require_host()?;
        if !avoid.is_empty() && self.state.nodes.iter().all(|n| avoid.contains(&n.name)) {
            bail!(
                "every node of lab {} is cordoned: no node to place pods on",
                self.state.name
            );
        }
        if pods > self.state.nodes.len() * MAX_PODS_PER_NODE {
            bail!("--pods must be at most {}", self.state.nodes.len() * MAX_PODS_PER_NODE);
        }
        self.reload()?;
        let live_now = self.state.pods.iter().filter(|p| !p.conditions.terminating).count();
        super::lifecycle::check_capacity(pods.saturating_sub(live_now), 0)?;
        let mut tl = Timeline::new(Instant::now());
        let mut syncs = Syncs::new(self, tl.start);
        let live: Vec<String> = self
            .state
            .pods
            .iter()
            .filter(|p| !p.conditions.terminating)
            .map(|p| p.name.clone())
            .collect();
        let done = if pods > live.len() {
            // Marked until every new pod is ready: an interrupted scale leaves an incomplete lab.
            self.mark_building(Some("lab scale"))?;
            self.add_pods_avoiding(pods - live.len(), timing.ready_delay, false, avoid, &mut tl, &mut syncs)
                .and_then(|()| self.mark_building(None))
        } else {
            self.delete_pods(&live[pods..], timing, &mut tl, &mut syncs)
        };
        let synced = syncs.finish(&mut tl);
        self.reload()?;
        done.and(synced)?;
        Ok(tl)
    }

    /// Adds `count` pods: namespaces, links, servers; each becomes ready `ready_delay` after its
    /// server listens (all together when `together`: the first rules of `lab up`).
    pub(super) fn add_pods(
        &mut self,
        count: usize,
        ready_delay: Duration,
        together: bool,
        tl: &mut Timeline,
        syncs: &mut Syncs,
    ) -> Result<()> {
        self.add_pods_avoiding(count, ready_delay, together, &[], tl, syncs)
    }

    /// [`Lab::add_pods`] on the nodes not in `avoid`.
    fn add_pods_avoiding(
        &mut self,
        count: usize,
        ready_delay: Duration,
        together: bool,
        avoid: &[String],
        tl: &mut Timeline,
        syncs: &mut Syncs,
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let prefix = netns_prefix(&self.state.name);
        // Recorded at once (not ready yet), so a failure below still tears them down.
        let new: Vec<Pod> = self.change(|s| {
            let mut new: Vec<Pod> = Vec::new();
            for _ in 0..count {
                // The node with the fewest pods (round-robin when balanced).
                let node = s
                    .nodes
                    .iter()
                    .filter(|n| !avoid.contains(&n.name))
                    .min_by_key(|n| s.pods.iter().chain(&new).filter(|p| p.node == n.name).count())
                    .expect("a lab has nodes")
                    .clone();
                let used: HashSet<Ipv4Addr> = s.pods.iter().chain(&new).map(|p| p.ip).collect();
                // The next free address after the last one this node handed out (as the
                // host-local IPAM does): a pod's address is not reused while the sandbox of the
                // pod that had it may still be going away (its route and veth on the node).
                let hosts: Vec<Ipv4Addr> = node.pod_cidr.hosts().skip(1).collect();
                let ip = next_ip(&hosts, s.last_ip.get(&node.name), &used)
                    .with_context(|| format!("node {} has no free pod address", node.name))?;
                s.last_ip.insert(node.name.clone(), ip);
                let idx = s.next_pod;
                s.next_pod += 1;
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
                    conditions: Conditions::STARTING,
                });
            }
            s.pods.extend(new.iter().cloned());
            s.refresh_hints();
            Ok(new)
        })?;
        let add: String = new.iter().map(|p| format!("netns add {}\n", p.netns)).collect();
        netns::ip_batch(None, &add, false)?;
        check_cancelled()?;
        self.wire_pods(&new)?;
        check_cancelled()?;
        let pids = Mutex::new(BTreeMap::new());
        netns::par_each(&new, THREADS, |p| {
            check_cancelled()?;
            let pid = self.spawn_server(p)?;
            pids.lock().expect("no panic holding it").insert(p.name.clone(), pid);
            Ok(())
        })?;
        let pids = pids.into_inner().expect("no panic holding it");
        self.change(|s| {
            for p in s.pods.iter_mut() {
                if let Some(pid) = pids.get(&p.name) {
                    p.pid = *pid;
                }
            }
            Ok(())
        })?;
        self.become_ready(&pids, ready_delay, together, tl, syncs)
    }

    /// Pod veths and routes on the nodes (one `ip -batch` per node), then addresses and the
    /// default route inside each pod (rtnetlink from a thread in its namespace).
    fn wire_pods(&self, new: &[Pod]) -> Result<()> {
        let with_v6 = self.state.families.ipv6();
        let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
        for p in new {
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
                    "link add {} address {} type veth peer name eth0 address {} netns {}\n",
                    p.veth,
                    mac_text(MacOf::PodGateway, p.ip),
                    mac_text(MacOf::Pod, p.ip),
                    p.netns
                ));
                b.push_str(&format!("link set {} up\n", p.veth));
                b.push_str(&format!(
                    "neigh add {} lladdr {} dev {} nud permanent\n",
                    p.ip,
                    mac_text(MacOf::Pod, p.ip),
                    p.veth
                ));
                b.push_str(&format!("route add {}/32 dev {} scope link\n", p.ip, p.veth));
                if with_v6 {
                    ipv6::node_side_of_pod(&mut b, p);
                }
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
        netns::par_each(new, THREADS, |p| {
            let gateway = mac(MacOf::PodGateway, p.ip);
            let v6 = with_v6.then(|| (v6(p.ip), POD_GATEWAY_V6));
            netns::in_netns(&p.netns, || rtnetlink::configure_pod(p.ip, POD_GATEWAY, gateway, v6))
                .with_context(|| format!("cannot configure pod {}", p.name))
        })
    }

    /// What the server of `pod` wrote so far (its stdout and stderr).
    fn server_log(&self, pod: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{pod}.log"))).unwrap_or_default()
    }

    fn spawn_server(&self, p: &Pod) -> Result<u32> {
        let args = [
            "serve",
            "--address",
            "[::]:5001",
            "--http",
            "[::]:8080",
            "--name",
            &p.name,
            "--node",
            &p.node,
            "--zone",
            &p.zone,
            "--workers",
            "1",
        ];
        self.spawn_in(&p.netns, &p.name, &args)
            .with_context(|| format!("cannot start {} serve for {}", self.state.server.display(), p.name))
    }

    /// The readiness probe of new pods: each becomes ready (and enters the rules) `ready_delay`
    /// after its server listens; all at once when `together`.
    fn become_ready(
        &mut self,
        pids: &BTreeMap<String, u32>,
        ready_delay: Duration,
        together: bool,
        tl: &mut Timeline,
        syncs: &mut Syncs,
    ) -> Result<()> {
        let start = Instant::now();
        let mut listening: HashMap<&str, Instant> = HashMap::new();
        let mut waiting: Vec<&str> = pids.keys().map(String::as_str).collect();
        while !waiting.is_empty() {
            check_cancelled()?;
            let now = Instant::now();
            for &p in &waiting {
                let pid = pids[p];
                if !netns::alive(pid) {
                    let log = self.server_log(p);
                    let last = log.lines().last().unwrap_or("(no output)");
                    bail!("the server of pod {p} exited: {last}");
                }
                if !listening.contains_key(p) && said_listening(&self.server_log(p), p) {
                    listening.insert(p, now);
                }
            }
            let is_due = |p: &&str| listening.get(p).is_some_and(|at| now >= *at + ready_delay);
            let due: Vec<String> = if together && !waiting.iter().all(is_due) {
                Vec::new()
            } else {
                waiting.iter().filter(|p| is_due(p)).map(|p| p.to_string()).collect()
            };
            if !due.is_empty() {
                let (ready, delays) =
                    self.change(|s| Ok(s.set_conditions(&due, Conditions::STARTING, Conditions::READY)))?;
                tl.push(ready.iter().map(String::as_str), EndpointEvent::Ready, now);
                syncs.start(delays.unwrap_or_default());
                waiting.retain(|p| !due.iter().any(|d| d == p));
            }
            let silent: Vec<&str> = waiting.iter().copied().filter(|p| !listening.contains_key(p)).collect();
            // Thousands of servers starting on a few CPUs take a while: 20 s plus 20 ms a pod.
            let timeout = LISTEN_TIMEOUT + Duration::from_millis(20) * pids.len() as u32;
            if !silent.is_empty() && start.elapsed() > timeout {
                bail!(
                    "pods not listening on :{} after {}s: {}",
                    PORTS[0].target_port,
                    timeout.as_secs(),
                    silent.join(" ")
                );
            }
            if !waiting.is_empty() {
                std::thread::sleep(READY_PROBE);
            }
        }
        Ok(())
    }

    /// Deletes `pods` together (see [`Lab::delete_pod_with`]). A pod already terminating (its
    /// deletion was interrupted, or another command deletes it) is not signalled again: it is
    /// watched until it is gone, killed when this deletion's grace period ends (a second
    /// deletion shortens the grace period, as in Kubernetes).
    fn delete_pods(&mut self, pods: &[String], timing: &LabTiming, tl: &mut Timeline, syncs: &mut Syncs) -> Result<()> {
        if pods.is_empty() {
            return Ok(());
        }
        let (gone, fresh, delays) = self.change(|s| {
            let lab = &s.name;
            let mut gone = Vec::new();
            for name in pods {
                let Some(p) = s.pods.iter().find(|p| &p.name == name) else {
                    bail!("no pod named {name} in lab {lab}; see `kubectl svclb lab status --name {lab}`");
                };
                gone.push(p.clone());
            }
            // Not ready any more; serving if it was (a pod deleted before it was ready is not).
            let mut fresh = Vec::new();
            for p in s.pods.iter_mut() {
                if pods.contains(&p.name) && !p.conditions.terminating {
                    p.conditions = Conditions {
                        ready: false,
                        terminating: true,
                        ..p.conditions
                    };
                    fresh.push(p.name.clone());
                }
            }
            let delays = (!fresh.is_empty()).then(|| s.bump(Changed::Endpoints));
            Ok((gone, fresh, delays))
        })?;
        tl.push(
            fresh.iter().map(String::as_str),
            EndpointEvent::Terminating,
            Instant::now(),
        );
        let kill_at = Instant::now() + timing.grace_period;
        let mut killed = timing.grace_period.is_zero();
        if killed {
            // No grace: killed at once; the endpoint goes from terminating to removed in one
            // sync, as kube-proxy sees a pod deleted with --grace-period 0.
            kill(&gone);
        } else {
            for p in gone.iter().filter(|p| p.pid != 0 && fresh.contains(&p.name)) {
                // Gone already (ESRCH) is what the loop below finds out too.
                let _ = crate::server::terminate(p.pid, timing.drain_delay);
            }
            syncs.start(delays.unwrap_or_default());
        }
        // Watched for their listeners closing: those still serving.
        let mut serving: Vec<String> = gone
            .iter()
            .filter(|p| p.conditions.serving)
            .map(|p| p.name.clone())
            .collect();
        let mut running = gone;
        while !running.is_empty() {
            if !killed && Instant::now() >= kill_at {
                kill(&running);
                killed = true;
            }
            for p in &running {
                reap(p);
            }
            let exited: Vec<String> = running
                .iter()
                .filter(|p| !server_running(p))
                .map(|p| p.name.clone())
                .collect();
            // A server that closed its listeners, or exited on its own: its readiness fails.
            // One killed at the end of the grace period goes straight to removed.
            let stopped: Vec<String> = if killed {
                Vec::new()
            } else {
                running
                    .iter()
                    .filter(|p| serving.contains(&p.name) && said_draining(&self.server_log(&p.name)))
                    .map(|p| p.name.clone())
                    .collect()
            };
            // Recorded as seen now, right after the probes (not when the lock is had).
            let seen = Instant::now();
            if !stopped.is_empty() {
                let (changed, delays) =
                    self.change(|s| Ok(s.set_conditions(&stopped, Conditions::TERMINATING, Conditions::NOT_SERVING)))?;
                tl.push(changed.iter().map(String::as_str), EndpointEvent::NotServing, seen);
                syncs.start(delays.unwrap_or_default());
                serving.retain(|p| !stopped.contains(p));
            }
            if !exited.is_empty() {
                let (removed, delays) = self.change(|s| {
                    let removed: Vec<Pod> = s.pods.iter().filter(|p| exited.contains(&p.name)).cloned().collect();
                    s.pods.retain(|p| !exited.contains(&p.name));
                    let delays = (!removed.is_empty()).then(|| s.bump(Changed::Endpoints));
                    Ok((removed, delays))
                })?;
                tl.push(removed.iter().map(|p| p.name.as_str()), EndpointEvent::Removed, seen);
                syncs.start(delays.unwrap_or_default());
                // The pod's sandbox goes with it (nodes that have not synced yet send into
                // nothing, as on a real cluster). Another command that removed it first
                // removes it.
                if !removed.is_empty() {
                    remove_pods(&removed)?;
                }
                running.retain(|p| !exited.contains(&p.name));
                serving.retain(|p| !exited.contains(p));
            }
            if !running.is_empty() {
                std::thread::sleep(END_PROBE);
            }
        }
        Ok(())
    }
}

/// The first address of `hosts` after `last` (wrapping around) that is not `used`.
fn next_ip(hosts: &[Ipv4Addr], last: Option<&Ipv4Addr>, used: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let after = last
        .and_then(|last| hosts.iter().position(|h| h == last))
        .map_or(0, |i| i + 1);
    hosts[after..]
        .iter()
        .chain(&hosts[..after])
        .copied()
        .find(|ip| !used.contains(ip))
}

/// SIGKILLs every process in the pods' namespaces.
/// True when a server's log says it listens: its readiness probe (see [`LOG_LISTENING`]).
fn said_listening(log: &str, pod: &str) -> bool {
    log.lines().any(|l| {
        l.strip_prefix("svclb serve: ")
            .and_then(|rest| rest.strip_prefix(pod))
            .is_some_and(|rest| rest.starts_with(LOG_LISTENING))
    })
}

/// True when a server's log says it closed its listeners to drain.
fn said_draining(log: &str) -> bool {
    log.lines().any(|l| l.starts_with(LOG_DRAINING))
}

fn kill(pods: &[Pod]) {
    let inodes: HashSet<u64> = pods.iter().filter_map(|p| netns::netns_inode(&p.netns)).collect();
    let mut pids = netns::pids_in(&inodes);
    pids.retain(|&pid| pid != std::process::id());
    netns::kill_and_reap(&pids);
}

/// The pod's server still runs: alive, and still in the pod's namespace (a recorded pid that
/// was reused by another process is not the server).
fn server_running(p: &Pod) -> bool {
    p.pid != 0
        && netns::alive(p.pid)
        && netns::pid_netns_inode(p.pid).is_some_and(|ino| Some(ino) == netns::netns_inode(&p.netns))
}

/// Reaps the pod's server if it exited as a child of this process (a lab this process built).
fn reap(p: &Pod) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).unwrap_or_default();
    // "pid (comm) state ppid ...": a zombie whose parent is us.
    let mut rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace())
        .into_iter()
        .flatten();
    let zombie_child = rest.next() == Some("Z") && rest.next() == Some(&std::process::id().to_string());
    if zombie_child {
        let mut status = 0;
        // SAFETY: waitpid on our own exited child.
        unsafe {
            libc::waitpid(p.pid as libc::pid_t, &mut status, libc::WNOHANG);
        }
    }
}

/// Kills the pods' processes and deletes their namespaces (their veths go with them).
pub(super) fn remove_pods(pods: &[Pod]) -> Result<()> {
    kill(pods);
    let del: String = pods.iter().map(|p| format!("netns del {}\n", p.netns)).collect();
    netns::ip_batch(None, &del, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_handed_out_in_turn_and_not_reused_at_once() {
        let hosts: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect();
        let used = |ips: &[u8]| {
            ips.iter()
                .map(|i| Ipv4Addr::new(10, 244, 1, *i))
                .collect::<HashSet<_>>()
        };
        let ip = |i: u8| Ipv4Addr::new(10, 244, 1, i);
        // A fresh node: the first address.
        assert_eq!(next_ip(&hosts, None, &used(&[])), Some(ip(2)));
        // .3 was just freed (its pod is going away), .4 was handed out last: .5, not .3.
        assert_eq!(next_ip(&hosts, Some(&ip(4)), &used(&[2, 4])), Some(ip(5)));
        // Wrapping around past the end, skipping what is in use.
        assert_eq!(next_ip(&hosts, Some(&ip(6)), &used(&[2, 6])), Some(ip(3)));
        assert_eq!(next_ip(&hosts, Some(&ip(3)), &used(&[2, 3, 4, 5, 6])), None);
    }
}
