//! What a lab is built from and changed by: [`LabConfig`] (`lab up`), [`LabChanges`]
//! (`lab set`), the [`ProxyMode`], each node's [`SyncDelay`] and a pod's [`LabTiming`]. The
//! Service's options are the crate's one Service model ([`crate::service::ServiceOptions`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use rand::RngExt;

use serde::{Deserialize, Serialize};

use crate::service::{IpFamily, ServiceOptions, SessionAffinity, TrafficDistribution, TrafficPolicy};

/// How each node's kube-proxy programs Services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Nftables,
    Iptables,
}

/// The IP families of a lab's Service (`lab up --ip-family`): which addresses it has and which
/// kube-proxy tables each node gets. An IPv6-only lab keeps its IPv4 plumbing (addresses,
/// routes) but its Service is IPv6 only: no IPv4 rules are written (docs/lab.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LabFamilies {
    #[default]
    Ipv4,
    Ipv6,
    Dual,
}

impl LabFamilies {
    /// The Service's families, primary first (as `spec.ipFamilies`).
    pub fn families(self) -> &'static [IpFamily] {
        match self {
            LabFamilies::Ipv4 => &[IpFamily::Ipv4],
            LabFamilies::Ipv6 => &[IpFamily::Ipv6],
            LabFamilies::Dual => &[IpFamily::Ipv4, IpFamily::Ipv6],
        }
    }

    pub fn has(self, family: IpFamily) -> bool {
        self.families().contains(&family)
    }

    /// True when the lab's namespaces have IPv6 addresses.
    pub fn ipv6(self) -> bool {
        self != LabFamilies::Ipv4
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LabFamilies::Ipv4 => "ipv4",
            LabFamilies::Ipv6 => "ipv6",
            LabFamilies::Dual => "dual",
        }
    }
}

/// Everything `lab up` takes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabConfig {
    /// Lab name: 1-16 of [a-z0-9-], starting and ending with a letter or digit.
    pub name: String,
    pub nodes: usize,
    pub pods: usize,
    pub zones: usize,
    pub proxy_mode: ProxyMode,
    /// The Service's IP families (`--ip-family`).
    pub families: LabFamilies,
    /// Route the LoadBalancer IP from the client over every node (ECMP, L4 hash)
    /// instead of via the first node.
    pub ecmp: bool,
    pub options: ServiceOptions,
    /// The program pods run as `PROGRAM serve ...`; `None` = this executable.
    pub server: Option<PathBuf>,
    /// How long each node's kube-proxy takes to apply a change.
    pub sync_delay: SyncDelay,
    /// A new pod becomes ready this long after its server answers (a slow readiness probe).
    pub ready_delay: Duration,
    /// Built for one run of this process: the lab records it as its owner, and a later run
    /// removes the lab once that process is gone (killed before it could).
    pub ephemeral: bool,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            name: "lab".to_string(),
            nodes: 10,
            pods: 100,
            zones: 3,
            proxy_mode: ProxyMode::Nftables,
            families: LabFamilies::Ipv4,
            ecmp: false,
            options: ServiceOptions::default(),
            server: None,
            sync_delay: SyncDelay::default(),
            ready_delay: Duration::ZERO,
            ephemeral: false,
        }
    }
}

/// Changes `lab set` applies to a running lab (None = keep).
#[derive(Clone, Debug, Default)]
pub struct LabChanges {
    pub affinity: Option<SessionAffinity>,
    pub affinity_timeout: Option<u32>,
    pub external_traffic_policy: Option<TrafficPolicy>,
    pub internal_traffic_policy: Option<TrafficPolicy>,
    /// Some(None) removes trafficDistribution.
    pub traffic_distribution: Option<Option<TrafficDistribution>>,
    /// loadBalancerSourceRanges to set (empty: none).
    pub source_ranges: Option<Vec<ipnet::IpNet>>,
    /// Remove the hints (zone and node) of these pods' endpoints.
    pub drop_hints: Vec<String>,
    /// Give every endpoint its hint back.
    pub restore_hints: bool,
    pub sync_delay: Option<SyncDelay>,
    /// Set these pods' EndpointSlice conditions, as failing readiness probes or a termination
    /// would (their servers keep running): `matrix`'s no-endpoint and terminating scenarios.
    pub conditions: Vec<(String, super::Conditions)>,
}

impl LabChanges {
    /// Something kube-proxy writes changes (not only how fast it writes).
    pub(super) fn changes_rules(&self) -> bool {
        self.affinity.is_some()
            || self.affinity_timeout.is_some()
            || self.external_traffic_policy.is_some()
            || self.internal_traffic_policy.is_some()
            || self.traffic_distribution.is_some()
            || self.source_ranges.is_some()
            || !self.drop_hints.is_empty()
            || self.restore_hints
            || !self.conditions.is_empty()
    }
}

/// The longest sync delay: a typo should not hang `lab set` for an hour.
pub const MAX_SYNC_DELAY: Duration = Duration::from_secs(60);

/// How long after a change each node's kube-proxy applies it: every node picks its own delay,
/// uniformly in `min..=max`, for every change (kube-proxy's min-sync-period and the watch's
/// latency), so nodes disagree for a moment as on a real cluster. Default: 0, at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncDelay {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl SyncDelay {
    pub fn new(min: Duration, max: Duration) -> Result<SyncDelay> {
        if min > max {
            bail!("--sync-delay MIN..MAX: MIN must not be above MAX");
        }
        if max > MAX_SYNC_DELAY {
            bail!("--sync-delay must be at most {}s", MAX_SYNC_DELAY.as_secs());
        }
        Ok(SyncDelay {
            min_ms: min.as_millis() as u64,
            max_ms: max.as_millis() as u64,
        })
    }

    /// One node's delay for one change.
    pub fn pick(&self, rng: &mut impl rand::Rng) -> Duration {
        Duration::from_millis(if self.max_ms > self.min_ms {
            rng.random_range(self.min_ms..=self.max_ms)
        } else {
            self.min_ms
        })
    }
}

impl fmt::Display for SyncDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min_ms == self.max_ms {
            write!(f, "{}ms", self.min_ms)
        } else {
            write!(f, "{}..{}ms", self.min_ms, self.max_ms)
        }
    }
}

/// How pods come and go (`delete-pod`, `scale`), as Kubernetes times them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabTiming {
    /// `terminationGracePeriodSeconds` (or `--grace-period`): from the deletion until the
    /// server is killed if it has not exited. 0 kills it at once.
    pub grace_period: Duration,
    /// The preStop sleep: how long a terminating server keeps accepting new connections before
    /// it closes its listeners (its endpoint is serving until then).
    pub drain_delay: Duration,
    /// A new pod becomes ready this long after its server answers.
    pub ready_delay: Duration,
}

impl Default for LabTiming {
    /// Kubernetes' defaults, but a shorter grace period: 5 s (Kubernetes: 30 s), no preStop
    /// sleep, ready as soon as the server answers.
    fn default() -> Self {
        LabTiming {
            grace_period: Duration::from_secs(5),
            drain_delay: Duration::ZERO,
            ready_delay: Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn sync_delays_are_picked_in_the_range_and_cover_it() {
        let ms = Duration::from_millis;
        let d = SyncDelay::new(ms(100), ms(300)).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let picked: Vec<Duration> = (0..1000).map(|_| d.pick(&mut rng)).collect();
        assert!(picked.iter().all(|p| (ms(100)..=ms(300)).contains(p)));
        // Uniform: both ends of the range come up.
        assert!(picked.iter().any(|p| *p < ms(120)) && picked.iter().any(|p| *p > ms(280)));
        let fixed = SyncDelay::new(ms(250), ms(250)).unwrap();
        assert_eq!(fixed.pick(&mut rng), ms(250));
        assert_eq!(SyncDelay::default().pick(&mut rng), Duration::ZERO);
        assert_eq!(d.to_string(), "100..300ms");
        assert_eq!(fixed.to_string(), "250ms");
    }

    #[test]
    fn sync_delays_must_be_ordered_and_bounded() {
        let s = Duration::from_secs;
        assert!(
            SyncDelay::new(s(2), s(1))
                .unwrap_err()
                .to_string()
                .contains("MIN must not be above MAX")
        );
        assert!(
            SyncDelay::new(s(0), s(61))
                .unwrap_err()
                .to_string()
                .contains("at most 60s")
        );
        assert!(SyncDelay::new(s(0), MAX_SYNC_DELAY).is_ok());
    }

    #[test]
    fn only_rule_changes_make_a_new_generation() {
        let delay_only = LabChanges {
            sync_delay: Some(SyncDelay::default()),
            ..LabChanges::default()
        };
        assert!(!delay_only.changes_rules());
        let hints = LabChanges {
            restore_hints: true,
            ..LabChanges::default()
        };
        assert!(hints.changes_rules());
    }
}
