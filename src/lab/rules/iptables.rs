//! The iptables writer: one `iptables-restore --noflush` transaction per node, mirroring
//! `pkg/proxy/iptables/proxier.go` (same chain names, same rule shapes, same full sync).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::select::{NoEndpoint, PortPlan};
use super::service::{Endpoint, endpoint_str};
use super::{Cluster, RulesSync, Written, to_rewrite};
use crate::lab::Node;
use crate::service::{IpFamily, SessionAffinity};

/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000";

/// Chain-name prefixes the iptables proxier owns per service (deleted when stale).
const IPT_SERVICE_CHAIN_PREFIXES: [&str; 5] = ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-"];

/// Parses `iptables-save -t nat` output into the chain names it declares.
pub fn ipt_existing(save: &str) -> BTreeSet<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// kube-proxy's `largeClusterEndpointsThreshold`: above this many endpoints in total it
/// leaves out the per-endpoint comments (iptables-restore time grows with every byte).
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

fn target(v: NoEndpoint) -> (&'static str, &'static str) {
    match v {
        NoEndpoint::Reject => ("has no endpoints", "REJECT"),
        NoEndpoint::Drop => ("has no local endpoints", "DROP"),
    }
}

/// iptables-restore --noflush input for one node, one atomic transaction: every KUBE-*
/// chain this proxier writes is declared (so iptables-restore flushes and refills it), except
/// the per-service chains that `written` says hold the same rules already (those in
/// `existing` with the same hash), and stale service chains are declared and deleted (`-X`).
/// `initial` adds the jumps from the
/// built-in chains (kube-proxy's EnsureChain/EnsureRule at startup). NodePorts are served on
/// every local address, 127.0.0.1 included (kube-proxy's iptables defaults:
/// `--nodeport-addresses` unset, `localhostNodePorts` true, with `route_localnet=1`).
pub fn iptables_restore(
    c: &Cluster,
    node: &Node,
    existing: &BTreeSet<String>,
    written: &Written,
    initial: bool,
) -> RulesSync {
    let total_endpoints: usize = c.services.iter().map(|s| s.endpoints.len() * s.ports.len()).sum();
    let large = total_endpoints > LARGE_CLUSTER_ENDPOINTS;

    // filter table
    let mut f_nodeports = String::new();
    let mut f_services = String::new();
    let mut f_external = String::new();
    let mut f_firewall = String::new();
    // nat table
    let mut nat_chains: Vec<String> = Vec::new();
    let mut nat = String::new();
    let mut services = String::new();
    let mut nodeports = String::new();

    for svc in &c.services {
        let o = svc.options;
        let affinity = o.affinity == SessionAffinity::ClientIp;
        let cip = svc.cluster_ip;
        for sp in svc.ports {
            let plan = PortPlan::new(svc, sp, node);
            let spn = svc.port_name(sp);
            let h = svc.ipt_hash(sp);
            let (cluster_chain, local_chain, ext, fw) = (
                format!("KUBE-SVC-{h}"),
                format!("KUBE-SVL-{h}"),
                format!("KUBE-EXT-{h}"),
                format!("KUBE-FW-{h}"),
            );
            let (internal_chain, external_policy_chain) = plan.policy_chains(&cluster_chain, &local_chain);
            let proto = sp.proto.as_str();
            let (port, np) = (sp.port, sp.node_port);
            let ranges = svc.source_ranges();
            let uses_fw = plan.has_endpoints && !svc.lb_ips.is_empty() && !ranges.is_empty();

            // ClusterIP.
            match plan.internal_verdict() {
                None => {
                    let _ = writeln!(
                        services,
                        "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {cip} --dport {port} -j {internal_chain}"
                    );
                }
                Some(v) => {
                    let (why, t) = target(v);
                    let _ = writeln!(
                        f_services,
                        "-A KUBE-SERVICES -m comment --comment \"{spn} {why}\" -m {proto} -p {proto} -d {cip} --dport {port} -j {t}"
                    );
                }
            }
            // External IPs, LoadBalancer IPs, NodePort.
            let external_verdict = plan.external_verdict();
            let mut no_external = |dest: String| {
                if let Some(v) = external_verdict {
                    let (why, t) = target(v);
                    let _ = writeln!(
                        f_external,
                        "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{spn} {why}\" {dest} -j {t}"
                    );
                }
            };
            for ip in &svc.external_ips {
                if plan.has_endpoints {
                    let _ = writeln!(
                        services,
                        "-A KUBE-SERVICES -m comment --comment \"{spn} external IP\" -m {proto} -p {proto} -d {ip} --dport {port} -j {ext}"
                    );
                }
                no_external(format!("-m {proto} -p {proto} -d {ip} --dport {port}"));
            }
            for ip in &svc.lb_ips {
                if plan.has_endpoints {
                    let to = if uses_fw { &fw } else { &ext };
                    let _ = writeln!(
                        services,
                        "-A KUBE-SERVICES -m comment --comment \"{spn} loadbalancer IP\" -m {proto} -p {proto} -d {ip} --dport {port} -j {to}"
                    );
                }
                if uses_fw {
                    let _ = writeln!(
                        f_firewall,
                        "-A KUBE-PROXY-FIREWALL -m comment --comment \"{spn} traffic not accepted by {fw}\" -m {proto} -p {proto} -d {ip} --dport {port} -j DROP"
                    );
                }
                no_external(format!("-m {proto} -p {proto} -d {ip} --dport {port}"));
            }
            if np != 0 {
                if plan.has_endpoints {
                    let _ = writeln!(
                        nodeports,
                        "-A KUBE-NODEPORTS -m comment --comment {spn} -m {proto} -p {proto} --dport {np} -j {ext}"
                    );
                }
                no_external(format!(
                    "-m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np}"
                ));
            }
            if let Some(hc) = svc.health_check_port() {
                let _ = writeln!(
                    f_nodeports,
                    "-A KUBE-NODEPORTS -m comment --comment \"{spn} health check node port\" -m tcp -p tcp --dport {hc} -j ACCEPT"
                );
            }

            // The external chain.
            if plan.uses_external_chain {
                nat_chains.push(ext.clone());
                if !plan.external_local {
                    let _ = writeln!(
                        nat,
                        "-A {ext} -m comment --comment \"masquerade traffic for {spn} external destinations\" -j KUBE-MARK-MASQ"
                    );
                } else {
                    let _ = writeln!(
                        nat,
                        "-A {ext} -m comment --comment \"pod traffic for {spn} external destinations\" -s {} -j {cluster_chain}",
                        c.cluster_cidr
                    );
                    let _ = writeln!(
                        nat,
                        "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {spn} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
                    );
                    let _ = writeln!(
                        nat,
                        "-A {ext} -m comment --comment \"route LOCAL traffic for {spn} external destinations\" -m addrtype --src-type LOCAL -j {cluster_chain}"
                    );
                }
                if plan.has_external {
                    let _ = writeln!(nat, "-A {ext} -j {external_policy_chain}");
                }
            }
            // The firewall chain (loadBalancerSourceRanges): allowed sources go on to the
            // external chain; the rest are not DNATed and KUBE-PROXY-FIREWALL drops them.
            if uses_fw {
                nat_chains.push(fw.clone());
                for r in &ranges {
                    let _ = writeln!(
                        nat,
                        "-A {fw} -m comment --comment \"{spn} loadbalancer IP\" -s {r} -j {ext}"
                    );
                }
                if ranges.iter().any(|r| r.contains(&node.ip_of(c.family))) {
                    for ip in &svc.lb_ips {
                        let _ = writeln!(
                            nat,
                            "-A {fw} -m comment --comment \"{spn} loadbalancer IP\" -s {ip} -j {ext}"
                        );
                    }
                }
                let _ = writeln!(
                    nat,
                    "-A {fw} -m comment --comment \"other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL\""
                );
            }

            // Policy chains (KUBE-SVC-* / KUBE-SVL-*) and their endpoints.
            let mut policy = |chain: &str, list: &[&Endpoint]| {
                nat_chains.push(chain.to_string());
                if chain == internal_chain && plan.has_internal {
                    let _ = writeln!(
                        nat,
                        "-A {chain} -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {cip} --dport {port} ! -s {} -j KUBE-MARK-MASQ",
                        c.cluster_cidr
                    );
                }
                let comment = |e: &Endpoint| {
                    if large {
                        String::new()
                    } else {
                        format!(" -m comment --comment \"{spn} -> {}\"", endpoint_str(e.ip, sp))
                    }
                };
                if affinity {
                    for e in list {
                        let sep = svc.ipt_sep(sp, e.ip);
                        let _ = writeln!(
                            nat,
                            "-A {chain}{} -m recent --name {sep} --rcheck --seconds {} --reap -j {sep}",
                            comment(e),
                            o.affinity_timeout
                        );
                    }
                }
                let n = list.len();
                for (i, e) in list.iter().enumerate() {
                    let stat = if i < n - 1 {
                        format!(" -m statistic --mode random --probability {:.10}", 1.0 / (n - i) as f64)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(nat, "-A {chain}{}{stat} -j {}", comment(e), svc.ipt_sep(sp, e.ip));
                }
            };
            if plan.uses_cluster_chain {
                policy(&cluster_chain, &plan.cluster);
            }
            if plan.uses_local_chain {
                policy(&local_chain, &plan.local);
            }
            for e in &plan.reachable {
                let sep = svc.ipt_sep(sp, e.ip);
                nat_chains.push(sep.clone());
                let comment = if large {
                    String::new()
                } else {
                    format!(" -m comment --comment {spn}")
                };
                let _ = writeln!(nat, "-A {sep}{comment} -s {} -j KUBE-MARK-MASQ", e.ip);
                let recent = if affinity {
                    format!(" -m recent --name {sep} --set")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    nat,
                    "-A {sep}{comment}{recent} -m {proto} -p {proto} -j DNAT --to-destination {}",
                    endpoint_str(e.ip, sp)
                );
            }
        }
    }

    let mut out = String::new();
    out.push_str("*filter\n");
    for ch in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(out, ":{ch} - [0:0]");
    }
    if initial {
        out.push_str(concat!(
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n",
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
            "-A INPUT -j KUBE-FIREWALL\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
            "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
            "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A OUTPUT -j KUBE-FIREWALL\n",
        ));
    }
    out.push_str(&f_nodeports);
    out.push_str(&f_services);
    out.push_str(&f_external);
    // Localhost NodePorts are IPv4 only (route_localnet has no IPv6 equivalent): kube-proxy
    // writes this rule in its IPv4 proxier only.
    if c.family == IpFamily::Ipv4 {
        out.push_str(
            "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n",
        );
    }
    out.push_str(concat!(
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
    ));
    out.push_str(&f_firewall);
    out.push_str("COMMIT\n*nat\n");
    for ch in ["KUBE-NODEPORTS", "KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"] {
        let _ = writeln!(out, ":{ch} - [0:0]");
    }
    let stale: Vec<&String> = existing
        .iter()
        .filter(|ch| IPT_SERVICE_CHAIN_PREFIXES.iter().any(|p| ch.starts_with(p)) && !nat_chains.contains(ch))
        .collect();
    // Each per-service chain's rules (`-A CHAIN ...` lines, in order): the chains that exist
    // with the same rules are neither declared (which would flush them) nor written.
    let mut bodies: BTreeMap<&str, String> = BTreeMap::new();
    for line in nat.lines() {
        let chain = line.split_whitespace().nth(1).unwrap_or_default();
        let body = bodies.entry(chain).or_default();
        body.push_str(line);
        body.push('\n');
    }
    let (rewrite, now_written) = to_rewrite(
        nat_chains
            .iter()
            .map(|ch| (ch.as_str(), bodies.get(ch.as_str()).map_or("", String::as_str))),
        existing,
        written,
        false,
    );
    for ch in nat_chains
        .iter()
        .filter(|ch| rewrite.contains(ch.as_str()))
        .chain(stale.iter().copied())
    {
        let _ = writeln!(out, ":{ch} - [0:0]");
    }
    if initial {
        out.push_str(concat!(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        ));
    }
    out.push_str(&nodeports);
    out.push_str(&services);
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    let _ = writeln!(out, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(out, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    out.push_str(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    for ch in nat_chains.iter().filter(|ch| rewrite.contains(ch.as_str())) {
        out.push_str(bodies.get(ch.as_str()).map_or("", String::as_str));
    }
    // Stale service chains: declared (so they are flushed) and deleted, in the same
    // transaction, as kube-proxy does (a chain must be empty to be deleted).
    for ch in &stale {
        let _ = writeln!(out, "-X {ch}");
    }
    out.push_str("COMMIT\n");
    RulesSync {
        tx: out,
        written: now_written,
    }
}
