//! Service rules written the way kube-proxy writes them, per node.
//!
//! * `select`: the endpoints a node's kube-proxy uses (its `CategorizeEndpoints`: topology
//!   hints for trafficDistribution PreferClose, internal/external traffic policy Local),
//!   and the policy chains both proxy modes jump to;
//! * `nftables`, `iptables`: the two writers, each mirroring its proxier: same chain names
//!   (hash prefixes included), same rule shapes, same full-sync transaction (flush what is
//!   kept, delete what is stale, never touch affinity state that is still in use);
//! * `service`: the emulated Service (name, ports), the cluster-wide facts the rules
//!   depend on, and the names kube-proxy derives from them (hashed chain names).

mod iptables;
mod nftables;
mod select;
mod service;
#[cfg(test)]
mod tests;

pub use iptables::{ipt_existing, iptables_restore};
pub use nftables::{NftExisting, nft_transaction};
pub use select::NodeEndpoints;
pub use service::{Cluster, PORTS, Proto, SERVICE_NAME, SERVICE_NAMESPACE, ServicePort};
