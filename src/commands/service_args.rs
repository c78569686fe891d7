//! The Service's load-balancing options as flags, the same for `lab up`, `lab set`, `deploy` and
//! `manifests`: the API's names and values (`--session-affinity ClientIP`), in any case.

use anyhow::{Result, bail};
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use ipnet::IpNet;

use crate::service::{
    DEFAULT_AFFINITY_TIMEOUT, KubeEnum, ServiceOptions, SessionAffinity, TrafficDistribution, TrafficPolicy,
};

/// A parser for one of the Service model's enums: its API names are the possible values.
pub fn kube_value<T: KubeEnum + Clone + Send + Sync + 'static>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::NAMES).map(|s| s.parse::<T>().expect("a possible value parses"))
}

/// `--traffic-distribution` of `lab set`: a value, or `none` to remove it.
fn distribution_or_none() -> impl TypedValueParser<Value = Setting> {
    let mut names = TrafficDistribution::NAMES.to_vec();
    names.push("none");
    PossibleValuesParser::new(names)
        .map(|s| Setting((!s.eq_ignore_ascii_case("none")).then(|| s.parse().expect("a possible value parses"))))
}

/// A trafficDistribution to set, or none.
#[derive(Debug, Clone, Copy)]
pub struct Setting(pub Option<TrafficDistribution>);

/// The Service's options.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// spec.sessionAffinity.
    #[arg(long, alias = "affinity", value_parser = kube_value::<SessionAffinity>(), ignore_case = true, default_value = "None")]
    pub session_affinity: SessionAffinity,
    /// sessionAffinityConfig.clientIP.timeoutSeconds, with ClientIP [default: 10800].
    #[arg(long, value_name = "SECONDS")]
    pub affinity_timeout: Option<u32>,
    /// spec.externalTrafficPolicy.
    #[arg(long, value_parser = kube_value::<TrafficPolicy>(), ignore_case = true, default_value = "Cluster")]
    pub external_traffic_policy: TrafficPolicy,
    /// spec.internalTrafficPolicy.
    #[arg(long, value_parser = kube_value::<TrafficPolicy>(), ignore_case = true, default_value = "Cluster")]
    pub internal_traffic_policy: TrafficPolicy,
    /// spec.trafficDistribution (unset by default): endpoints get zone hints (and node hints with
    /// PreferSameNode); kube-proxy prefers the hinted ones when every endpoint has a hint.
    #[arg(long, value_parser = kube_value::<TrafficDistribution>(), ignore_case = true)]
    pub traffic_distribution: Option<TrafficDistribution>,
    /// spec.loadBalancerSourceRanges: client CIDRs allowed to reach the LoadBalancer IP
    /// (comma-separated; all when unset). NodePorts are not filtered, as in kube-proxy.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub lb_source_ranges: Vec<IpNet>,
}

impl ServiceArgs {
    pub fn options(&self) -> Result<ServiceOptions> {
        if self.affinity_timeout.is_some() && self.session_affinity != SessionAffinity::ClientIp {
            bail!("--affinity-timeout needs --session-affinity ClientIP");
        }
        Ok(ServiceOptions {
            affinity: self.session_affinity,
            affinity_timeout: self.affinity_timeout.unwrap_or(DEFAULT_AFFINITY_TIMEOUT),
            external_traffic_policy: self.external_traffic_policy,
            internal_traffic_policy: self.internal_traffic_policy,
            traffic_distribution: self.traffic_distribution,
            source_ranges: self.lb_source_ranges.iter().map(IpNet::trunc).collect(),
        })
    }
}

/// Changes to the Service's options (`lab set`); what is not given stays.
#[derive(Debug, Clone, Args)]
pub struct ServiceChanges {
    /// spec.sessionAffinity.
    #[arg(long, alias = "affinity", value_parser = kube_value::<SessionAffinity>(), ignore_case = true)]
    pub session_affinity: Option<SessionAffinity>,
    /// sessionAffinityConfig.clientIP.timeoutSeconds.
    #[arg(long, value_name = "SECONDS")]
    pub affinity_timeout: Option<u32>,
    /// spec.externalTrafficPolicy.
    #[arg(long, value_parser = kube_value::<TrafficPolicy>(), ignore_case = true)]
    pub external_traffic_policy: Option<TrafficPolicy>,
    /// spec.internalTrafficPolicy.
    #[arg(long, value_parser = kube_value::<TrafficPolicy>(), ignore_case = true)]
    pub internal_traffic_policy: Option<TrafficPolicy>,
    /// spec.trafficDistribution, or `none` to remove it.
    #[arg(long, value_parser = distribution_or_none(), ignore_case = true)]
    pub traffic_distribution: Option<Setting>,
    /// spec.loadBalancerSourceRanges (comma-separated CIDRs), or `none` to remove them.
    #[arg(long, value_name = "CIDR,...|none", value_parser = ranges_or_none())]
    pub lb_source_ranges: Option<Ranges>,
}

/// Source ranges to set (empty: none).
#[derive(Debug, Clone)]
pub struct Ranges(pub Vec<IpNet>);

/// `--lb-source-ranges` of `lab set`: CIDRs, or `none`.
fn ranges_or_none() -> impl TypedValueParser<Value = Ranges> {
    clap::builder::NonEmptyStringValueParser::new().try_map(|s: String| {
        if s.eq_ignore_ascii_case("none") {
            return Ok(Ranges(Vec::new()));
        }
        s.split(',')
            .map(|r| r.trim().parse::<IpNet>().map(|n| n.trunc()))
            .collect::<Result<Vec<_>, _>>()
            .map(Ranges)
            .map_err(|e| format!("{s:?}: {e}; give CIDRs such as 192.0.2.0/24,198.51.100.7/32, or none"))
    })
}
