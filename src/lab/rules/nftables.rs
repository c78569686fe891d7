//! The nftables writer: one `nft -f` transaction per node that brings its `ip kube-proxy`
//! table to the desired state, mirroring `pkg/proxy/nftables/proxier.go` (same chain and
//! set names, same rule shapes, same full sync).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::select::{NodeEndpoints, PolicyChains};
use super::service::{endpoint_str, nft_base, nft_ep_base, service_port_name};
use super::{Cluster, PORTS};
use crate::lab::{Node, Pod};
use crate::service::{SessionAffinity, TrafficPolicy};

/// Chains and sets currently in a node's `ip kube-proxy` table.
#[derive(Default, Debug)]
pub struct NftExisting {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

impl NftExisting {
    /// Parses `nft list chains ip kube-proxy` / `nft list sets ip kube-proxy` output.
    pub fn parse(chains: &str, sets: &str) -> Self {
        let grab = |text: &str, kw: &str| -> BTreeSet<String> {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix(kw))
                .filter_map(|rest| rest.split_whitespace().next())
                .map(str::to_string)
                .collect()
        };
        NftExisting {
            chains: grab(chains, "chain "),
            sets: grab(sets, "set "),
        }
    }
}

/// Prefixes of the per-service chains the nftables proxier owns (and deletes when stale).
const NFT_SERVICE_CHAIN_PREFIXES: [&str; 4] = ["service-", "local-", "external-", "endpoint-"];

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
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
flush set ip kube-proxy cluster-ips
flush set ip kube-proxy nodeport-ips
flush map ip kube-proxy no-endpoint-nodeports
flush map ip kube-proxy no-endpoint-services
flush map ip kube-proxy service-ips
flush map ip kube-proxy service-nodeports
add chain ip kube-proxy cluster-ips-check
flush chain ip kube-proxy cluster-ips-check
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr SERVICE_CIDR drop comment "Drop traffic to unallocated ClusterIPs"
add chain ip kube-proxy service-endpoints-check
flush chain ip kube-proxy service-endpoints-check
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add chain ip kube-proxy nodeport-endpoints-check
flush chain ip kube-proxy nodeport-endpoints-check
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add chain ip kube-proxy services
flush chain ip kube-proxy services
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }
flush chain ip kube-proxy filter-forward
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add chain ip kube-proxy filter-input { type filter hook input priority -110 ; }
flush chain ip kube-proxy filter-input
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add chain ip kube-proxy filter-output { type filter hook output priority -110 ; }
flush chain ip kube-proxy filter-output
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add chain ip kube-proxy filter-output-post-dnat { type filter hook output priority -90 ; }
flush chain ip kube-proxy filter-output-post-dnat
add rule ip kube-proxy filter-output-post-dnat ct state new jump cluster-ips-check
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

/// One `nft -f` transaction that brings a node's `ip kube-proxy` table to the desired
/// state: kept chains are flushed and refilled, stale ones deleted, affinity sets that
/// stay in use are left alone (their entries survive), `reset_affinity` drops them all
/// (the timeout changed).
pub fn nft_transaction(c: &Cluster, node: &Node, existing: &NftExisting, reset_affinity: bool) -> String {
    let o = c.options;
    let eps = NodeEndpoints::categorize(c, node);
    let affinity = o.affinity == SessionAffinity::ClientIp;
    let mut chains = String::new(); // per-service chains and rules
    let mut elements = String::new();
    let mut want_chains = BTreeSet::new();
    let mut want_sets = BTreeSet::new();
    let local_ctx = format!("ip saddr {}", c.cluster_cidr);

    let _ = writeln!(elements, "add element ip kube-proxy cluster-ips {{ {} }}", c.cluster_ip);
    let _ = writeln!(elements, "add element ip kube-proxy nodeport-ips {{ {} }}", node.ip);

    for sp in &PORTS {
        let base = nft_base(sp);
        let proto = sp.proto.as_str();
        let svc_chain = format!("service-{base}");
        let local_chain = format!("local-{base}");
        let ext_chain = format!("external-{base}");
        let (cip, lb, port, np) = (c.cluster_ip, c.lb_ip, sp.port, sp.node_port);

        let internal = eps.internal(o);
        let external = eps.external(o);
        let PolicyChains {
            internal: internal_chain,
            external: external_policy_chain,
            uses_cluster,
            uses_local,
        } = PolicyChains::new(o, &eps, &svc_chain, &local_chain);

        let _ = writeln!(chains, "# {}", service_port_name(sp));
        // Endpoint chains (and affinity sets) for every endpoint a policy chain uses.
        let mut used: Vec<&Pod> = Vec::new();
        if uses_cluster {
            used.extend(eps.cluster.iter().copied());
        }
        if uses_local {
            for p in &eps.local {
                if !used.iter().any(|u| u.name == p.name) {
                    used.push(p);
                }
            }
        }
        for p in &used {
            let ep_base = nft_ep_base(sp, p);
            let ep_chain = format!("endpoint-{ep_base}");
            let _ = writeln!(chains, "add chain ip kube-proxy {ep_chain}");
            let _ = writeln!(
                chains,
                "add rule ip kube-proxy {ep_chain} ip saddr {} jump mark-for-masquerade",
                p.ip
            );
            if affinity {
                let set = format!("affinity-{ep_base}");
                let _ = writeln!(
                    chains,
                    "add set ip kube-proxy {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {}s ; }}",
                    o.affinity_timeout
                );
                let _ = writeln!(chains, "add rule ip kube-proxy {ep_chain} update @{set} {{ ip saddr }}");
                want_sets.insert(set);
            }
            let _ = writeln!(
                chains,
                "add rule ip kube-proxy {ep_chain} meta l4proto {proto} dnat to {}",
                endpoint_str(p, sp)
            );
            want_chains.insert(ep_chain);
        }
        // Policy chains: the load-balancing rules (writeServiceToEndpointRules).
        let mut policy = |chain: &str, list: &[&Pod], masq_cluster_ip: bool| {
            let _ = writeln!(chains, "add chain ip kube-proxy {chain}");
            if masq_cluster_ip {
                let _ = writeln!(
                    chains,
                    "add rule ip kube-proxy {chain} ip daddr {cip} {proto} dport {port} ip saddr != {} jump mark-for-masquerade",
                    c.cluster_cidr
                );
            }
            if affinity {
                for p in list {
                    let ep_base = nft_ep_base(sp, p);
                    let _ = writeln!(
                        chains,
                        "add rule ip kube-proxy {chain} ip saddr @affinity-{ep_base} goto endpoint-{ep_base}"
                    );
                }
            }
            let arms: Vec<String> = list
                .iter()
                .enumerate()
                .map(|(i, p)| format!("{i} : goto endpoint-{}", nft_ep_base(sp, p)))
                .collect();
            let _ = writeln!(
                chains,
                "add rule ip kube-proxy {chain} numgen random mod {} vmap {{ {} }}",
                list.len(),
                arms.join(" , ")
            );
            want_chains.insert(chain.to_string());
        };
        if uses_cluster {
            policy(&svc_chain, &eps.cluster, internal_chain == svc_chain);
        }
        if uses_local {
            policy(&local_chain, &eps.local, internal_chain == local_chain);
        }

        // ClusterIP.
        if internal.is_empty() {
            let verdict = match o.internal_traffic_policy {
                TrafficPolicy::Local if !c.pods.is_empty() => "drop",
                _ => "goto reject-chain",
            };
            let _ = writeln!(
                elements,
                "add element ip kube-proxy no-endpoint-services {{ {cip} . {proto} . {port} comment \"{}\" : {verdict} }}",
                service_port_name(sp)
            );
        } else {
            let _ = writeln!(
                elements,
                "add element ip kube-proxy service-ips {{ {cip} . {proto} . {port} : goto {internal_chain} }}"
            );
        }
        // NodePort and LoadBalancer IP.
        if external.is_empty() {
            let verdict = match o.external_traffic_policy {
                TrafficPolicy::Local if !c.pods.is_empty() => "drop",
                _ => "goto reject-chain",
            };
            let _ = writeln!(
                elements,
                "add element ip kube-proxy no-endpoint-nodeports {{ {proto} . {np} comment \"{}\" : {verdict} }}",
                service_port_name(sp)
            );
            let _ = writeln!(
                elements,
                "add element ip kube-proxy no-endpoint-services {{ {lb} . {proto} . {port} comment \"{}\" : {verdict} }}",
                service_port_name(sp)
            );
        } else {
            let _ = writeln!(chains, "add chain ip kube-proxy {ext_chain}");
            match o.external_traffic_policy {
                TrafficPolicy::Cluster => {
                    let _ = writeln!(
                        chains,
                        "add rule ip kube-proxy {ext_chain} jump mark-for-masquerade comment \"masquerade traffic for {} external destinations\"",
                        service_port_name(sp)
                    );
                }
                TrafficPolicy::Local if !internal.is_empty() => {
                    let _ = writeln!(
                        chains,
                        "add rule ip kube-proxy {ext_chain} {local_ctx} goto {internal_chain} comment \"short-circuit pod traffic\""
                    );
                    let _ = writeln!(
                        chains,
                        "add rule ip kube-proxy {ext_chain} fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""
                    );
                    let _ = writeln!(
                        chains,
                        "add rule ip kube-proxy {ext_chain} fib saddr type local goto {internal_chain} comment \"route local traffic to cluster IP\""
                    );
                }
                TrafficPolicy::Local => {}
            }
            let _ = writeln!(
                chains,
                "add rule ip kube-proxy {ext_chain} goto {external_policy_chain}"
            );
            want_chains.insert(ext_chain.clone());
            let _ = writeln!(
                elements,
                "add element ip kube-proxy service-ips {{ {lb} . {proto} . {port} : goto {ext_chain} }}"
            );
            let _ = writeln!(
                elements,
                "add element ip kube-proxy service-nodeports {{ {proto} . {np} : goto {ext_chain} }}"
            );
        }
    }

    // Assemble: flush every per-service chain that exists (drops references), delete the
    // stale ones, then (re)write base and service objects.
    let mut tx = String::new();
    let owned = |n: &&String| nft_is_service_object(n, &NFT_SERVICE_CHAIN_PREFIXES);
    if !existing.chains.is_empty() {
        tx.push_str("add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n");
        // Maps reference service chains; flush them before deleting chains.
        tx.push_str("flush map ip kube-proxy service-ips\nflush map ip kube-proxy service-nodeports\n");
    }
    for ch in existing.chains.iter().filter(owned) {
        let _ = writeln!(tx, "flush chain ip kube-proxy {ch}");
    }
    for ch in existing.chains.iter().filter(owned) {
        if !want_chains.contains(ch) {
            let _ = writeln!(tx, "delete chain ip kube-proxy {ch}");
        }
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
    tx.push_str(&chains);
    tx.push_str(&elements);
    tx
}
