//! The nftables writer: one `nft -f` transaction per node that brings its `ip kube-proxy`
//! table to the desired state, mirroring `pkg/proxy/nftables/proxier.go` (same chain and
//! set names, same rule shapes, same full sync).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::select::{NoEndpoint, PortPlan};
use super::service::{Endpoint, endpoint_str};
use super::{Cluster, RulesSync, Written, to_rewrite};
use crate::lab::Node;
use crate::service::{IpFamily, SessionAffinity};

/// The chains and sets (maps too) currently in a node's `ip kube-proxy` table, and what the
/// lab's last sync of the node wrote into each per-service chain ([`Written`]).
#[derive(Default, Debug)]
pub struct NftExisting {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
    pub written: Written,
}

/// Prefixes of the per-service chains the nftables proxier owns (and deletes when stale).
const NFT_SERVICE_CHAIN_PREFIXES: [&str; 5] = ["service-", "local-", "external-", "endpoint-", "firewall-"];

/// The base chains of the layout before v1.34 (all filter chains at priority -110 and a
/// post-DNAT output chain): a lab written by an older version has them, and a base chain's
/// priority cannot change in place, so they are deleted and written again.
const NFT_OLD_LAYOUT: [&str; 4] = [
    "filter-output-post-dnat",
    "filter-input",
    "filter-forward",
    "filter-output",
];

/// The static part of kube-proxy's table (`setupNFTables`) as of v1.34: `--nodeport-addresses
/// primary` (the default: NodePorts on the node IP only, never on localhost).
const NFT_BASE: &str = r#"add table ip kube-proxy { comment "rules for kube-proxy" ; }
add chain ip kube-proxy mark-for-masquerade
flush chain ip kube-proxy mark-for-masquerade
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add chain ip kube-proxy masquerading
flush chain ip kube-proxy masquerading
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add chain ip kube-proxy reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }
flush chain ip kube-proxy reject-chain
add rule ip kube-proxy reject-chain reject
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
flush set ip kube-proxy cluster-ips
flush set ip kube-proxy nodeport-ips
flush map ip kube-proxy firewall-ips
flush map ip kube-proxy no-endpoint-nodeports
flush map ip kube-proxy no-endpoint-services
flush map ip kube-proxy service-ips
flush map ip kube-proxy service-nodeports
add chain ip kube-proxy cluster-ips-check
flush chain ip kube-proxy cluster-ips-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr { SERVICE_CIDR } drop comment "Drop traffic to unallocated ClusterIPs"
add chain ip kube-proxy firewall-check
flush chain ip kube-proxy firewall-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add chain ip kube-proxy service-endpoints-check
flush chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add chain ip kube-proxy nodeport-endpoints-check
flush chain ip kube-proxy nodeport-endpoints-check
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add chain ip kube-proxy services
flush chain ip kube-proxy services
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }
flush chain ip kube-proxy filter-prerouting-pre-dnat
add rule ip kube-proxy filter-prerouting-pre-dnat ct state new jump firewall-check
add chain ip kube-proxy filter-output-pre-dnat { type filter hook output priority -110 ; }
flush chain ip kube-proxy filter-output-pre-dnat
add rule ip kube-proxy filter-output-pre-dnat ct state new jump firewall-check
add chain ip kube-proxy filter-input { type filter hook input priority 0 ; }
flush chain ip kube-proxy filter-input
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add chain ip kube-proxy filter-forward { type filter hook forward priority 0 ; }
flush chain ip kube-proxy filter-forward
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add chain ip kube-proxy filter-output { type filter hook output priority 0 ; }
flush chain ip kube-proxy filter-output
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump cluster-ips-check
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
flush chain ip kube-proxy nat-output
add rule ip kube-proxy nat-output jump services
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
flush chain ip kube-proxy nat-postrouting
add rule ip kube-proxy nat-postrouting jump masquerading
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
flush chain ip kube-proxy nat-prerouting
add rule ip kube-proxy nat-prerouting jump services
"#;

/// True for `PREFIX` + 8-character hash + `-` names (per-service objects, as opposed to
/// base chains such as `service-endpoints-check`).
fn nft_is_service_object(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| {
        name.strip_prefix(p).is_some_and(|rest| {
            let b = rest.as_bytes();
            b.len() > 9
                && b[..8]
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(c))
                && b[8] == b'-'
        })
    })
}

fn verdict(v: NoEndpoint) -> &'static str {
    match v {
        NoEndpoint::Reject => "goto reject-chain",
        NoEndpoint::Drop => "drop",
    }
}

/// One `nft -f` transaction that brings a node's `ip kube-proxy` table to the desired
/// state, as kube-proxy's sync does: chains whose rules change are flushed and refilled
/// (those `existing.written` says hold the same rules are left as they are), stale ones
/// deleted, affinity sets that stay in use are left alone (their entries survive),
/// `reset_affinity` drops them all (the timeout changed).
pub fn nft_transaction(c: &Cluster, node: &Node, existing: &NftExisting, reset_affinity: bool) -> RulesSync {
    let mut sets = String::new(); // affinity sets, before the rules that use them
    // Per-service chains in the order they are written, endpoint chains first: (name, rules);
    // a port's name comment has no rules.
    let mut chains: Vec<(String, String)> = Vec::new();
    let mut body = String::new();
    let mut elements = String::new();
    let mut want_chains = BTreeSet::new();
    let mut want_sets = BTreeSet::new();
    let local_ctx = format!("ip saddr {}", c.cluster_cidr);

    let node_ip = node.ip_of(c.family);
    let _ = writeln!(elements, "add element ip kube-proxy nodeport-ips {{ {node_ip} }}");
    for svc in &c.services {
        let o = svc.options;
        let affinity = o.affinity == SessionAffinity::ClientIp;
        let cip = svc.cluster_ip;
        let _ = writeln!(elements, "add element ip kube-proxy cluster-ips {{ {cip} }}");
        for sp in svc.ports {
            let plan = PortPlan::new(svc, sp, node);
            let base = svc.nft_base(sp);
            let spn = svc.port_name(sp);
            let proto = sp.proto.as_str();
            let (port, np) = (sp.port, sp.node_port);
            let cluster_chain = format!("service-{base}");
            let local_chain = format!("local-{base}");
            let ext_chain = format!("external-{base}");
            let fw_chain = format!("firewall-{base}");
            let (internal_chain, external_policy_chain) = plan.policy_chains(&cluster_chain, &local_chain);
            chains.push((format!("# {spn}"), String::new()));

            // Endpoint chains (and affinity sets) for every endpoint a policy chain reaches.
            for e in &plan.reachable {
                let ep_base = svc.nft_ep_base(sp, e.ip);
                let ep_chain = format!("endpoint-{ep_base}");
                let _ = writeln!(
                    body,
                    "add rule ip kube-proxy {ep_chain} ip saddr {} jump mark-for-masquerade",
                    e.ip
                );
                if affinity {
                    let set = format!("affinity-{ep_base}");
                    // Kept as it is when it exists (its entries survive), unless reset.
                    if reset_affinity || !existing.sets.contains(&set) {
                        let _ = writeln!(
                            sets,
                            "add set ip kube-proxy {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {}s ; }}",
                            o.affinity_timeout
                        );
                    }
                    let _ = writeln!(body, "add rule ip kube-proxy {ep_chain} update @{set} {{ ip saddr }}");
                    want_sets.insert(set);
                }
                let _ = writeln!(
                    body,
                    "add rule ip kube-proxy {ep_chain} meta l4proto {proto} dnat to {}",
                    endpoint_str(e.ip, sp)
                );
                want_chains.insert(ep_chain.clone());
                chains.push((ep_chain, std::mem::take(&mut body)));
            }
            // Policy chains: the ClusterIP masquerade rule in the internal one, then the
            // load-balancing rules (writeServiceToEndpointRules).
            let mut policy = |chain: &str, list: &[&Endpoint]| {
                let mut body = String::new();
                if chain == internal_chain && plan.has_internal {
                    let _ = writeln!(
                        body,
                        "add rule ip kube-proxy {chain} ip daddr {cip} ip saddr != {} jump mark-for-masquerade",
                        c.cluster_cidr
                    );
                }
                if affinity {
                    for e in list {
                        let ep_base = svc.nft_ep_base(sp, e.ip);
                        let _ = writeln!(
                            body,
                            "add rule ip kube-proxy {chain} ip saddr @affinity-{ep_base} goto endpoint-{ep_base}"
                        );
                    }
                }
                let arms: Vec<String> = list
                    .iter()
                    .enumerate()
                    .map(|(i, e)| format!("{i} : goto endpoint-{}", svc.nft_ep_base(sp, e.ip)))
                    .collect();
                let _ = writeln!(
                    body,
                    "add rule ip kube-proxy {chain} numgen random mod {} vmap {{ {} }}",
                    list.len(),
                    arms.join(" , ")
                );
                want_chains.insert(chain.to_string());
                chains.push((chain.to_string(), body));
            };
            if plan.uses_cluster_chain {
                policy(&cluster_chain, &plan.cluster);
            }
            if plan.uses_local_chain {
                policy(&local_chain, &plan.local);
            }
            // The external chain: masquerade (eTP Cluster) or the pod and host short-circuits to
            // the cluster chain (eTP Local), then the external policy chain if it has endpoints.
            if plan.uses_external_chain {
                if !plan.external_local {
                    let _ = writeln!(body, "add rule ip kube-proxy {ext_chain} jump mark-for-masquerade");
                } else {
                    let _ = writeln!(
                        body,
                        "add rule ip kube-proxy {ext_chain} {local_ctx} goto {cluster_chain} comment \"short-circuit pod traffic\""
                    );
                    let _ = writeln!(
                        body,
                        "add rule ip kube-proxy {ext_chain} fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""
                    );
                    let _ = writeln!(
                        body,
                        "add rule ip kube-proxy {ext_chain} fib saddr type local goto {cluster_chain} comment \"short-circuit local traffic\""
                    );
                }
                if plan.has_external {
                    let _ = writeln!(body, "add rule ip kube-proxy {ext_chain} goto {external_policy_chain}");
                }
                want_chains.insert(ext_chain.clone());
                chains.push((ext_chain.clone(), std::mem::take(&mut body)));
            }
            // loadBalancerSourceRanges: checked before DNAT, on the LoadBalancer IPs only.
            let ranges = svc.source_ranges();
            let uses_fw = !svc.lb_ips.is_empty() && !ranges.is_empty();
            if uses_fw {
                let mut allowed: Vec<String> = ranges.iter().map(|r| r.to_string()).collect();
                // A node inside a range reaches the LB IP from itself (often a local address).
                if ranges.iter().any(|r| r.contains(&node_ip)) {
                    allowed.extend(svc.lb_ips.iter().map(|ip| ip.to_string()));
                }
                let _ = writeln!(
                    body,
                    "add rule ip kube-proxy {fw_chain} ip saddr != {{ {} }} drop",
                    allowed.join(" , ")
                );
                want_chains.insert(fw_chain.clone());
                chains.push((fw_chain.clone(), std::mem::take(&mut body)));
            }

            // The dispatch maps.
            match plan.internal_verdict() {
                None => {
                    let _ = writeln!(
                        elements,
                        "add element ip kube-proxy service-ips {{ {cip} . {proto} . {port} : goto {internal_chain} }}"
                    );
                }
                Some(v) => {
                    let _ = writeln!(
                        elements,
                        "add element ip kube-proxy no-endpoint-services {{ {cip} . {proto} . {port} comment \"{spn}\" : {} }}",
                        verdict(v)
                    );
                }
            }
            let external_verdict = plan.external_verdict();
            for ip in svc.external_ips.iter().chain(&svc.lb_ips) {
                if plan.has_endpoints {
                    let _ = writeln!(
                        elements,
                        "add element ip kube-proxy service-ips {{ {ip} . {proto} . {port} : goto {ext_chain} }}"
                    );
                }
                if let Some(v) = external_verdict {
                    let _ = writeln!(
                        elements,
                        "add element ip kube-proxy no-endpoint-services {{ {ip} . {proto} . {port} comment \"{spn}\" : {} }}",
                        verdict(v)
                    );
                }
            }
            if uses_fw {
                for ip in &svc.lb_ips {
                    let _ = writeln!(
                        elements,
                        "add element ip kube-proxy firewall-ips {{ {ip} . {proto} . {port} : goto {fw_chain} }}"
                    );
                }
            }
            if np != 0 {
                if plan.has_endpoints {
                    let _ = writeln!(
                        elements,
                        "add element ip kube-proxy service-nodeports {{ {proto} . {np} : goto {ext_chain} }}"
                    );
                }
                if let Some(v) = external_verdict {
                    let _ = writeln!(
                        elements,
                        "add element ip kube-proxy no-endpoint-nodeports {{ {proto} . {np} comment \"{spn}\" : {} }}",
                        verdict(v)
                    );
                }
            }
        }
    }

    // Which chains to (re)write: all but those that exist holding the same rules already
    // (all of them when the affinity sets are recreated: their rules refer to the sets).
    let (rewrite, written) = to_rewrite(
        chains
            .iter()
            .filter(|(n, _)| !n.starts_with('#'))
            .map(|(n, r)| (n.as_str(), r.as_str())),
        &existing.chains,
        &existing.written,
        reset_affinity,
    );

    // Assemble: flush the per-service chains that exist and change or go (drops their
    // references to stale chains; maps are flushed too), delete the stale ones, then
    // (re)write base and service objects.
    let mut tx = String::new();
    let owned = |n: &&String| nft_is_service_object(n, &NFT_SERVICE_CHAIN_PREFIXES);
    if !existing.chains.is_empty() {
        tx.push_str("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n");
        // Maps reference service chains; flush them before deleting chains.
        tx.push_str("flush map ip kube-proxy service-ips\nflush map ip kube-proxy service-nodeports\n");
        if existing.chains.contains(NFT_OLD_LAYOUT[0]) {
            for ch in NFT_OLD_LAYOUT {
                let _ = writeln!(tx, "flush chain ip kube-proxy {ch}\ndelete chain ip kube-proxy {ch}");
            }
        } else {
            tx.push_str("flush map ip kube-proxy firewall-ips\n");
        }
    }
    let stale = |ch: &&String| !want_chains.contains(*ch);
    for ch in existing.chains.iter().filter(owned) {
        if rewrite.contains(ch.as_str()) || stale(&ch) {
            let _ = writeln!(tx, "flush chain ip kube-proxy {ch}");
        }
    }
    for ch in existing.chains.iter().filter(owned).filter(stale) {
        let _ = writeln!(tx, "delete chain ip kube-proxy {ch}");
    }
    for set in existing
        .sets
        .iter()
        .filter(|s| nft_is_service_object(s, &["affinity-"]))
    {
        if reset_affinity || !want_sets.contains(set) {
            let _ = writeln!(tx, "delete set ip kube-proxy {set}");
        }
    }
    tx.push_str(&NFT_BASE.replace("SERVICE_CIDR", c.service_cidr));
    tx.push_str(&sets);
    for (name, rules) in &chains {
        if name.starts_with('#') {
            let _ = writeln!(tx, "{name}");
        } else if rewrite.contains(name.as_str()) {
            let _ = writeln!(tx, "add chain ip kube-proxy {name}");
            tx.push_str(rules);
        }
    }
    tx.push_str(&elements);
    RulesSync {
        tx: in_family(tx, c.family),
        written,
    }
}

/// The transaction in `family`: kube-proxy's nftables proxier writes `ipX` and `ipvX_addr`,
/// `ip` / `ipv4_addr` in IPv4 and `ip6` / `ipv6_addr` in IPv6, into the same rules (its table
/// is `ip kube-proxy` or `ip6 kube-proxy`). The writer above writes the IPv4 words; these are
/// all the places they occur.
fn in_family(tx: String, family: IpFamily) -> String {
    match family {
        IpFamily::Ipv4 => tx,
        IpFamily::Ipv6 => tx
            .replace(" ip kube-proxy", " ip6 kube-proxy")
            .replace("ip saddr", "ip6 saddr")
            .replace("ip daddr", "ip6 daddr")
            .replace("ipv4_addr", "ipv6_addr"),
    }
}
