//! Service rules written the way kube-proxy writes them, per node.
//!
//! The endpoint selection mirrors kube-proxy's `CategorizeEndpoints` (topology hints for
//! trafficDistribution PreferClose, internal/external traffic policy Local), and the two
//! writers mirror `pkg/proxy/nftables/proxier.go` and `pkg/proxy/iptables/proxier.go`:
//! same chain names (hash prefixes included), same rule shapes, same full-sync
//! transaction (flush what is kept, delete what is stale, never touch affinity state
//! that is still in use).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use super::{Affinity, Node, Pod, ServiceOptions, TrafficPolicy};

/// Namespace and name of the emulated Service.
pub const SERVICE_NAMESPACE: &str = "default";
pub const SERVICE_NAME: &str = "tserver";
/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000";

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One port of the Service.
#[derive(Clone, Copy, Debug)]
pub struct ServicePort {
    pub name: &'static str,
    pub proto: Proto,
    pub port: u16,
    pub target_port: u16,
    pub node_port: u16,
}

/// The Service's ports: the storm port over TCP and UDP, and HTTP.
pub const PORTS: [ServicePort; 3] = [
    ServicePort {
        name: "tcp",
        proto: Proto::Tcp,
        port: 5001,
        target_port: 5001,
        node_port: 30001,
    },
    ServicePort {
        name: "udp",
        proto: Proto::Udp,
        port: 5001,
        target_port: 5001,
        node_port: 30001,
    },
    ServicePort {
        name: "http",
        proto: Proto::Tcp,
        port: 8080,
        target_port: 8080,
        node_port: 30080,
    },
];

/// The cluster-wide facts every node's rules depend on.
pub struct Cluster<'a> {
    pub cluster_ip: Ipv4Addr,
    pub service_cidr: &'a str,
    pub cluster_cidr: &'a str,
    pub lb_ip: Ipv4Addr,
    pub options: &'a ServiceOptions,
    pub pods: &'a [Pod],
}

/// The endpoints one node's kube-proxy uses for one Service.
pub struct NodeEndpoints<'a> {
    /// Endpoints for "Cluster" policies, after topology filtering.
    pub cluster: Vec<&'a Pod>,
    /// Endpoints on this node.
    pub local: Vec<&'a Pod>,
    /// True when topology (zone hints) filtered `cluster`.
    pub topology: bool,
}

impl<'a> NodeEndpoints<'a> {
    /// kube-proxy's `CategorizeEndpoints` for one node.
    pub fn categorize(c: &Cluster<'a>, node: &Node) -> Self {
        let ready: Vec<&Pod> = c.pods.iter().collect();
        let local: Vec<&Pod> = ready.iter().copied().filter(|p| p.node == node.name).collect();
        // canUseTopology: PreferClose set, every endpoint has a hint, one hint matches.
        let topology = c.options.traffic_distribution.is_some()
            && !ready.is_empty()
            && ready.iter().all(|p| p.hint.is_some())
            && ready.iter().any(|p| p.hint.as_deref() == Some(node.zone.as_str()));
        let cluster = if topology {
            ready
                .iter()
                .copied()
                .filter(|p| p.hint.as_deref() == Some(node.zone.as_str()))
                .collect()
        } else {
            ready
        };
        NodeEndpoints {
            cluster,
            local,
            topology,
        }
    }

    /// Endpoints for traffic to the ClusterIP from this node and its pods.
    pub fn internal(&self, o: &ServiceOptions) -> &[&'a Pod] {
        match o.internal_traffic_policy {
            TrafficPolicy::Cluster => &self.cluster,
            TrafficPolicy::Local => &self.local,
        }
    }

    /// Endpoints for traffic to the NodePort / LoadBalancer IP arriving at this node.
    pub fn external(&self, o: &ServiceOptions) -> &[&'a Pod] {
        match o.external_traffic_policy {
            TrafficPolicy::Cluster => &self.cluster,
            TrafficPolicy::Local => &self.local,
        }
    }
}

/// The two policy chains of a service port, as both proxy modes use them: where ClusterIP traffic
/// and external traffic jump (by internal/externalTrafficPolicy), and which of the Cluster and Local
/// chains exist (a policy uses them and they have endpoints).
struct PolicyChains<'c> {
    internal: &'c str,
    external: &'c str,
    uses_cluster: bool,
    uses_local: bool,
}

impl<'c> PolicyChains<'c> {
    fn new(o: &ServiceOptions, eps: &NodeEndpoints, cluster: &'c str, local: &'c str) -> Self {
        let chain = |p: TrafficPolicy| match p {
            TrafficPolicy::Cluster => cluster,
            TrafficPolicy::Local => local,
        };
        let uses = |p: TrafficPolicy| o.internal_traffic_policy == p || o.external_traffic_policy == p;
        PolicyChains {
            internal: chain(o.internal_traffic_policy),
            external: chain(o.external_traffic_policy),
            uses_cluster: uses(TrafficPolicy::Cluster) && !eps.cluster.is_empty(),
            uses_local: uses(TrafficPolicy::Local) && !eps.local.is_empty(),
        }
    }
}

/// `ns/svc:port` as kube-proxy prints a ServicePortName.
fn service_port_name(sp: &ServicePort) -> String {
    format!("{SERVICE_NAMESPACE}/{SERVICE_NAME}:{}", sp.name)
}

fn endpoint_str(p: &Pod, sp: &ServicePort) -> String {
    format!("{}:{}", p.ip, sp.target_port)
}

/// RFC 4648 base32 (standard alphabet), as Go's `base32.StdEncoding`, without padding
/// (callers keep a prefix).
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn sha_b32(s: &str) -> String {
    base32(&Sha256::digest(s.as_bytes()))
}

// ---------------------------------------------------------------------------------
// nftables
// ---------------------------------------------------------------------------------

/// nftables proxier: `hashAndTruncate(ns/svc/proto/port)`.
fn nft_base(sp: &ServicePort) -> String {
    hash_and_truncate(&format!(
        "{SERVICE_NAMESPACE}/{SERVICE_NAME}/{}/{}",
        sp.proto.as_str(),
        sp.name
    ))
}

/// nftables proxier's `hashAndTruncate`: 8 base32 characters of SHA-256, `-`, the name
/// (our names stay far below its 256-character limit).
fn hash_and_truncate(name: &str) -> String {
    format!("{}-{name}", &sha_b32(name)[..8])
}

/// nftables proxier: `hashAndTruncate(ns/svc/proto/port__ip/port)`.
fn nft_ep_base(sp: &ServicePort, p: &Pod) -> String {
    hash_and_truncate(&format!(
        "{SERVICE_NAMESPACE}/{SERVICE_NAME}/{}/{}__{}/{}",
        sp.proto.as_str(),
        sp.name,
        p.ip,
        sp.target_port
    ))
}

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
    let affinity = o.affinity == Affinity::ClientIp;
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

// ---------------------------------------------------------------------------------
// iptables
// ---------------------------------------------------------------------------------

/// iptables proxier: `portProtoHash(servicePortName, protocol)`.
fn ipt_hash(sp: &ServicePort) -> String {
    port_proto_hash(&service_port_name(sp), sp.proto.as_str())
}

/// iptables proxier's `portProtoHash`: 16 base32 characters of SHA-256(name + protocol).
fn port_proto_hash(service_port_name: &str, proto: &str) -> String {
    sha_b32(&format!("{service_port_name}{proto}"))[..16].to_string()
}

fn ipt_sep(sp: &ServicePort, p: &Pod) -> String {
    sep_chain(&service_port_name(sp), sp.proto.as_str(), &endpoint_str(p, sp))
}

/// iptables proxier's `servicePortEndpointChainName`.
fn sep_chain(service_port_name: &str, proto: &str, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        &sha_b32(&format!("{service_port_name}{proto}{endpoint}"))[..16]
    )
}

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
    let affinity = o.affinity == Affinity::ClientIp;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_go_std_encoding() {
        // Go: base32.StdEncoding.EncodeToString([]byte("foobar")) == "MZXW6YTBOI======"
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
    }

    #[test]
    fn chain_names_match_kube_proxys_golden_output() {
        // From pkg/proxy/{iptables,nftables}/proxier_test.go (ns1/svc1 port p80, 10.180.0.1:80).
        assert_eq!(port_proto_hash("ns1/svc1:p80", "tcp"), "XPGD46QRK7WJZT7O");
        assert_eq!(
            sep_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(hash_and_truncate("ns1/svc1/tcp/p80"), "ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            hash_and_truncate("ns1/svc1/tcp/p80__10.180.0.1/80"),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    fn node(i: u8, zone: &str) -> Node {
        Node {
            name: format!("node{i}"),
            zone: zone.to_string(),
            ip: Ipv4Addr::new(172, 31, 0, 10 + i),
            pod_cidr: format!("10.244.{i}.0/24").parse().unwrap(),
            netns: format!("svclb-t.node{i}"),
        }
    }

    fn pod(n: u8, node: u8, zone: &str, hint: bool) -> Pod {
        Pod {
            name: format!("pod-{n:03}"),
            node: format!("node{node}"),
            zone: zone.to_string(),
            ip: Ipv4Addr::new(10, 244, node, n + 1),
            netns: format!("svclb-t.pod-{n:03}"),
            veth: format!("vp{n}"),
            pid: 0,
            hint: hint.then(|| zone.to_string()),
            hint_dropped: !hint,
        }
    }

    fn cluster<'a>(options: &'a ServiceOptions, pods: &'a [Pod]) -> Cluster<'a> {
        Cluster {
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            service_cidr: "10.96.0.0/16",
            cluster_cidr: "10.244.0.0/16",
            lb_ip: Ipv4Addr::new(172, 30, 0, 10),
            options,
            pods,
        }
    }

    fn names(ps: &[&Pod]) -> Vec<String> {
        ps.iter().map(|p| p.name.clone()).collect()
    }

    #[test]
    fn prefer_close_needs_every_hint_and_a_match() {
        let o = ServiceOptions {
            traffic_distribution: Some(super::super::TrafficDistribution::PreferClose),
            ..ServiceOptions::default()
        };
        let pods = vec![
            pod(1, 1, "zone-a", true),
            pod(2, 2, "zone-b", true),
            pod(3, 3, "zone-a", true),
        ];
        let c = cluster(&o, &pods);
        let a = NodeEndpoints::categorize(&c, &node(1, "zone-a"));
        assert!(a.topology);
        assert_eq!(names(&a.cluster), ["pod-001", "pod-003"]);
        // No endpoint hinted for zone-c: all endpoints.
        let z = NodeEndpoints::categorize(&c, &node(4, "zone-c"));
        assert!(!z.topology);
        assert_eq!(z.cluster.len(), 3);
        // One hint missing: all endpoints everywhere.
        let pods = vec![
            pod(1, 1, "zone-a", true),
            pod(2, 2, "zone-b", false),
            pod(3, 3, "zone-a", true),
        ];
        let c = cluster(&o, &pods);
        assert_eq!(NodeEndpoints::categorize(&c, &node(1, "zone-a")).cluster.len(), 3);
    }

    #[test]
    fn local_policies_use_local_endpoints() {
        let o = ServiceOptions {
            internal_traffic_policy: TrafficPolicy::Local,
            external_traffic_policy: TrafficPolicy::Local,
            ..ServiceOptions::default()
        };
        let pods = vec![
            pod(1, 1, "zone-a", false),
            pod(2, 2, "zone-b", false),
            pod(3, 1, "zone-a", false),
        ];
        let c = cluster(&o, &pods);
        let e = NodeEndpoints::categorize(&c, &node(1, "zone-a"));
        assert_eq!(names(e.internal(&o)), ["pod-001", "pod-003"]);
        assert_eq!(names(e.external(&o)), ["pod-001", "pod-003"]);
        let empty = NodeEndpoints::categorize(&c, &node(3, "zone-c"));
        assert!(empty.internal(&o).is_empty());
        // ...and such a node drops (not rejects) the traffic.
        let tx = nft_transaction(&c, &node(3, "zone-c"), &NftExisting::default(), false);
        assert!(tx.contains("no-endpoint-services { 10.96.0.10 . tcp . 5001 comment \"default/tserver:tcp\" : drop }"));
        assert!(tx.contains("no-endpoint-nodeports { tcp . 30001 comment \"default/tserver:tcp\" : drop }"));
        let ipt = iptables_restore(&c, &node(3, "zone-c"), &BTreeSet::new(), false);
        assert!(ipt.contains("default/tserver:tcp has no local endpoints"), "{ipt}");
    }

    #[test]
    fn nft_sync_deletes_stale_objects_and_keeps_affinity_sets() {
        let o = ServiceOptions {
            affinity: Affinity::ClientIp,
            ..ServiceOptions::default()
        };
        let pods = vec![pod(1, 1, "zone-a", false), pod(2, 2, "zone-b", false)];
        let c = cluster(&o, &pods);
        let n = node(1, "zone-a");
        let full = nft_transaction(&c, &n, &NftExisting::default(), false);
        assert!(full.contains("numgen random mod 2 vmap"));
        let grab = |kw: &str| -> BTreeSet<String> {
            full.lines()
                .filter_map(|l| l.strip_prefix(&format!("add {kw} ip kube-proxy ")))
                .map(|r| r.split_whitespace().next().unwrap().to_string())
                .collect()
        };
        let existing = NftExisting {
            chains: grab("chain"),
            sets: grab("set"),
        };
        // pod-002 goes away.
        let c1 = cluster(&o, &pods[..1]);
        let tx = nft_transaction(&c1, &n, &existing, false);
        let gone = nft_ep_base(&PORTS[0], &pods[1]);
        let kept = nft_ep_base(&PORTS[0], &pods[0]);
        assert!(tx.contains(&format!("delete chain ip kube-proxy endpoint-{gone}")));
        assert!(tx.contains(&format!("delete set ip kube-proxy affinity-{gone}")));
        assert!(!tx.contains(&format!("delete set ip kube-proxy affinity-{kept}")));
        assert!(!tx.contains("delete chain ip kube-proxy services"));
        assert!(tx.contains("numgen random mod 1 vmap"));
        // A new timeout recreates every affinity set.
        let tx = nft_transaction(&c1, &n, &existing, true);
        assert!(tx.contains(&format!("delete set ip kube-proxy affinity-{kept}")));
    }

    #[test]
    fn iptables_sync_flushes_and_deletes_stale_chains() {
        let o = ServiceOptions::default();
        let pods = vec![
            pod(1, 1, "zone-a", false),
            pod(2, 2, "zone-b", false),
            pod(3, 1, "zone-a", false),
        ];
        let c = cluster(&o, &pods);
        let n = node(1, "zone-a");
        let full = iptables_restore(&c, &n, &BTreeSet::new(), true);
        assert!(full.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"));
        assert!(full.contains("--probability 0.3333333333"));
        assert!(full.contains("--probability 0.5000000000"));
        let existing = ipt_existing(&full);
        let c1 = cluster(&o, &pods[..2]);
        let tx = iptables_restore(&c1, &n, &existing, false);
        let gone = ipt_sep(&PORTS[0], &pods[2]);
        assert!(
            tx.contains(&format!(":{gone} - [0:0]")),
            "stale chain declared (flushed)"
        );
        assert!(tx.contains(&format!("-X {gone}")));
        assert!(!tx.contains("-A PREROUTING"), "built-in jumps only on the first sync");
    }

    #[test]
    fn probability_format_is_kube_proxys() {
        assert_eq!(format!("{:.10}", 1.0 / 3.0_f64), "0.3333333333");
    }

    #[test]
    fn parses_existing_nft_objects() {
        let e = NftExisting::parse(
            "table ip kube-proxy {\n\tchain services {\n\t}\n\tchain endpoint-AB-x/y {\n\t}\n}\n",
            "table ip kube-proxy {\n\tset affinity-XY-a/b {\n\t\ttype ipv4_addr\n\t}\n\tmap service-ips {\n\t}\n}\n",
        );
        assert!(e.chains.contains("endpoint-AB-x/y"));
        assert!(e.sets.contains("affinity-XY-a/b"));
    }
}
