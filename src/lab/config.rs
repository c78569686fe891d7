//! What a lab is built from and changed by: [`LabConfig`] (`lab up`), [`LabChanges`]
//! (`lab set`), and the [`ProxyMode`]. The Service's options are the crate's one Service model
//! ([`crate::service::ServiceOptions`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::service::{ServiceOptions, SessionAffinity, TrafficDistribution, TrafficPolicy};

/// How each node's kube-proxy programs Services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Nftables,
    Iptables,
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
    /// Route the LoadBalancer IP from the client over every node (ECMP, L4 hash)
    /// instead of via the first node.
    pub ecmp: bool,
    pub options: ServiceOptions,
    /// The program pods run as `PROGRAM serve ...`; `None` = this executable.
    pub server: Option<PathBuf>,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            name: "lab".to_string(),
            nodes: 10,
            pods: 100,
            zones: 3,
            proxy_mode: ProxyMode::Nftables,
            ecmp: false,
            options: ServiceOptions::default(),
            server: None,
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
}
