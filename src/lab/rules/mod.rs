//! Service rules written the way kube-proxy writes them, per node.
//!
//! * `select`: what a node's kube-proxy decides per service port before writing a rule (its
//!   `CategorizeEndpoints`: topology hints, traffic policies, terminating fallback; which policy
//!   chains exist; what traffic without endpoints gets), the same for both proxy modes;
//! * `nftables`, `iptables`: the two writers, each mirroring its proxier: same chain names
//!   (hash prefixes included), same rule shapes, same full-sync transaction (flush what is
//!   kept, delete what is stale, never touch affinity state that is still in use);
//! * `service`: what kube-proxy is given ([`Cluster`]: settings and Services with their
//!   endpoints, any number of them, as in kube-proxy's own tests), the lab's Service's name and
//!   ports, and the names kube-proxy derives (hashed chain names).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};

mod iptables;
mod nftables;
mod select;
mod service;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod upstream_tests;

pub use iptables::{ipt_existing, iptables_restore};
pub use nftables::{NftExisting, nft_transaction};
pub use select::{NoEndpoint, PortPlan};
pub use service::{Cluster, Endpoint, PORTS, Proto, SERVICE_NAME, SERVICE_NAMESPACE, Service, ServicePort};

/// Per-service chain name → a hash of the rules a sync wrote into it. A chain that exists
/// with the same rules is not written again: the node's rules end the same as after
/// kube-proxy's sync, which rewrites every chain of a changed Service, at a fraction of the
/// cost of `nft` / `iptables-restore` (with 100 endpoints and 3 ports, a pod deletion rewrites
/// the 3 policy chains and deletes the pod's 3 endpoint chains, of 306).
pub type Written = BTreeMap<String, u64>;

fn rules_hash(rules: &str) -> u64 {
    let mut h = DefaultHasher::new();
    rules.hash(&mut h);
    h.finish()
}

/// Which of `chains` (name, rules) a sync writes: those not in `existing` or whose rules differ
/// from what `written` records (every one when `all`); and the record of what they hold after.
fn to_rewrite<'a>(
    chains: impl IntoIterator<Item = (&'a str, &'a str)>,
    existing: &BTreeSet<String>,
    written: &Written,
    all: bool,
) -> (BTreeSet<&'a str>, Written) {
    let mut rewrite = BTreeSet::new();
    let mut now = Written::new();
    for (name, rules) in chains {
        let h = rules_hash(rules);
        if all || !(existing.contains(name) && written.get(name) == Some(&h)) {
            rewrite.insert(name);
        }
        now.insert(name.to_string(), h);
    }
    (rewrite, now)
}

/// One node's transaction (`nft -f` or `iptables-restore --noflush` input) and what it leaves
/// in each per-service chain.
#[derive(Debug)]
pub struct RulesSync {
    pub tx: String,
    pub written: Written,
}
