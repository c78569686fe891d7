//! The iptables writer: one `iptables-restore --noflush` transaction per node, mirroring
//! `pkg/proxy/iptables/proxier.go` (same chain names, same rule shapes, same full sync).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::select::{NodeEndpoints, PolicyChains};
use super::service::{endpoint_str, ipt_hash, ipt_sep, service_port_name};
use super::{Cluster, PORTS};
use crate::lab::{Node, Pod};
use crate::service::{SessionAffinity, TrafficPolicy};

/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000";

/// Chain-name prefixes the iptables proxier owns per service (deleted when stale).
const IPT_SERVICE_CHAIN_PREFIXES: [&str; 4] = ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-SEP-"];

/// Parses `iptables-save -t nat` output into the chain names it declares.
pub fn ipt_existing(save: &str) -> BTreeSet<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// iptables-restore --noflush input for one node, one atomic transaction: every KUBE-*
/// chain this proxier writes is declared (so iptables-restore flushes and refills it), and
/// stale service chains are declared and deleted (`-X`). `initial` adds the jumps from the
/// built-in chains (kube-proxy's EnsureChain/EnsureRule at startup).
pub fn iptables_restore<'a>(c: &Cluster<'a>, node: &Node, existing: &BTreeSet<String>, initial: bool) -> String {
    let o = c.options;
    let eps = NodeEndpoints::categorize(c, node);
    let affinity = o.affinity == SessionAffinity::ClientIp;
    let (cip, lb) = (c.cluster_ip, c.lb_ip);

    let mut filter = String::new();
    let mut nat_chains: Vec<String> = Vec::new();
    let mut nat = String::new();
    let mut services = String::new();
    let mut nodeports = String::new();

    for sp in &PORTS {
        let spn = service_port_name(sp);
        let h = ipt_hash(sp);
        let (svc, svl, ext) = (
            format!("KUBE-SVC-{h}"),
            format!("KUBE-SVL-{h}"),
            format!("KUBE-EXT-{h}"),
        );
        let proto = sp.proto.as_str();
        let (port, np) = (sp.port, sp.node_port);
        let internal = eps.internal(o);
        let external = eps.external(o);
        let PolicyChains {
            internal: internal_chain,
            external: external_policy_chain,
            uses_cluster,
            uses_local,
        } = PolicyChains::new(o, &eps, &svc, &svl);

        // ClusterIP.
        if internal.is_empty() {
            let (why, target) = match o.internal_traffic_policy {
                TrafficPolicy::Local if !c.pods.is_empty() => ("has no local endpoints", "DROP"),
                _ => ("has no endpoints", "REJECT"),
            };
            let _ = writeln!(
                filter,
                "-A KUBE-SERVICES -m comment --comment \"{spn} {why}\" -m {proto} -p {proto} -d {cip} --dport {port} -j {target}"
            );
        } else {
            let _ = writeln!(
                services,
                "-A KUBE-SERVICES -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {cip} --dport {port} -j {internal_chain}"
            );
        }
        // NodePort and LoadBalancer IP.
        if external.is_empty() {
            let (why, target) = match o.external_traffic_policy {
                TrafficPolicy::Local if !c.pods.is_empty() => ("has no local endpoints", "DROP"),
                _ => ("has no endpoints", "REJECT"),
            };
            let _ = writeln!(
                filter,
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{spn} {why}\" -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j {target}"
            );
            let _ = writeln!(
                filter,
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{spn} {why}\" -m {proto} -p {proto} -d {lb} --dport {port} -j {target}"
            );
        } else {
            let _ = writeln!(
                services,
                "-A KUBE-SERVICES -m comment --comment \"{spn} loadbalancer IP\" -m {proto} -p {proto} -d {lb} --dport {port} -j {ext}"
            );
            let _ = writeln!(
                nodeports,
                "-A KUBE-NODEPORTS -m comment --comment {spn} -m {proto} -p {proto} --dport {np} -j {ext}"
            );
            nat_chains.push(ext.clone());
            match o.external_traffic_policy {
                TrafficPolicy::Cluster => {
                    let _ = writeln!(
                        nat,
                        "-A {ext} -m comment --comment \"masquerade traffic for {spn} external destinations\" -j KUBE-MARK-MASQ"
                    );
                }
                TrafficPolicy::Local if !internal.is_empty() => {
                    let _ = writeln!(
                        nat,
                        "-A {ext} -m comment --comment \"pod traffic for {spn} external destinations\" -s {} -j {internal_chain}",
                        c.cluster_cidr
                    );
                    let _ = writeln!(
                        nat,
                        "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {spn} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
                    );
                    let _ = writeln!(
                        nat,
                        "-A {ext} -m comment --comment \"route LOCAL traffic for {spn} external destinations\" -m addrtype --src-type LOCAL -j {internal_chain}"
                    );
                }
                TrafficPolicy::Local => {}
            }
            let _ = writeln!(nat, "-A {ext} -j {external_policy_chain}");
        }

        // Policy chains (KUBE-SVC-* / KUBE-SVL-*) and their endpoints.
        let mut seps: Vec<&'a Pod> = Vec::new();
        let mut policy = |chain: &str, list: &[&'a Pod], masq_cluster_ip: bool| {
            nat_chains.push(chain.to_string());
            if masq_cluster_ip {
                let _ = writeln!(
                    nat,
                    "-A {chain} -m comment --comment \"{spn} cluster IP\" -m {proto} -p {proto} -d {cip} --dport {port} ! -s {} -j KUBE-MARK-MASQ",
                    c.cluster_cidr
                );
            }
            if affinity {
                for p in list {
                    let sep = ipt_sep(sp, p);
                    let _ = writeln!(
                        nat,
                        "-A {chain} -m comment --comment \"{spn} -> {}\" -m recent --name {sep} --rcheck --seconds {} --reap -j {sep}",
                        endpoint_str(p, sp),
                        o.affinity_timeout
                    );
                }
            }
            let n = list.len();
            for (i, p) in list.iter().enumerate() {
                let sep = ipt_sep(sp, p);
                let stat = if i < n - 1 {
                    format!(" -m statistic --mode random --probability {:.10}", 1.0 / (n - i) as f64)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    nat,
                    "-A {chain} -m comment --comment \"{spn} -> {}\"{stat} -j {sep}",
                    endpoint_str(p, sp)
                );
                if !seps.iter().any(|s| s.name == p.name) {
                    seps.push(p);
                }
            }
        };
        if uses_cluster {
            policy(&svc, &eps.cluster, internal_chain == svc);
        }
        if uses_local {
            policy(&svl, &eps.local, internal_chain == svl);
        }
        for p in seps {
            let sep = ipt_sep(sp, p);
            nat_chains.push(sep.clone());
            let _ = writeln!(nat, "-A {sep} -m comment --comment {spn} -s {} -j KUBE-MARK-MASQ", p.ip);
            let recent = if affinity {
                format!(" -m recent --name {sep} --set")
            } else {
                String::new()
            };
            let _ = writeln!(
                nat,
                "-A {sep} -m comment --comment {spn}{recent} -m {proto} -p {proto} -j DNAT --to-destination {}",
                endpoint_str(p, sp)
            );
        }
    }

    let mut out = String::new();
    out.push_str("*filter\n");
    for ch in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
    ] {
        let _ = writeln!(out, ":{ch} - [0:0]");
    }
    if initial {
        out.push_str(concat!(
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
            "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n",
            "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
            "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        ));
    }
    out.push_str(&filter);
    out.push_str(concat!(
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
        "COMMIT\n",
    ));
    out.push_str("*nat\n");
    for ch in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        let _ = writeln!(out, ":{ch} - [0:0]");
    }
    let stale: Vec<&String> = existing
        .iter()
        .filter(|ch| IPT_SERVICE_CHAIN_PREFIXES.iter().any(|p| ch.starts_with(p)) && !nat_chains.contains(ch))
        .collect();
    for ch in nat_chains.iter().chain(stale.iter().copied()) {
        let _ = writeln!(out, ":{ch} - [0:0]");
    }
    if initial {
        out.push_str(concat!(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        ));
    }
    out.push_str(&services);
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    out.push_str(&nodeports);
    let _ = writeln!(out, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(out, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    out.push_str(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    out.push_str(&nat);
    // Stale service chains: declared (so they are flushed) and deleted, in the same
    // transaction, as kube-proxy does (a chain must be empty to be deleted).
    for ch in &stale {
        let _ = writeln!(out, "-X {ch}");
    }
    out.push_str("COMMIT\n");
    out
}
