//! `deploy`, `status`, `cleanup` and `manifests`: the test servers on a real cluster.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use tabled::builder::Builder;
use tabled::settings::Style;

use super::KubeFlags;
use super::service_args::{ServiceArgs, kube_value};
use crate::cluster::manifests::{self, Options};
use crate::cluster::{self, ops};
use crate::service::{IpFamily, IpFamilyPolicy, ServiceType};

/// `--ip-families` entries as `spec.ipFamilies` spells them, in any case.
fn ip_family() -> impl clap::builder::TypedValueParser<Value = IpFamily> {
    use clap::builder::{PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(["IPv4", "IPv6"]).map(|s| {
        if s.eq_ignore_ascii_case("IPv6") {
            IpFamily::Ipv6
        } else {
            IpFamily::Ipv4
        }
    })
}

/// How the test servers are rendered (`deploy`, `manifests`).
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// tserver pods (spread over nodes and zones).
    #[arg(long, default_value_t = 4)]
    pub replicas: u32,
    /// Container image with the kubectl-svclb binary [default: ghcr.io/kubectl-svclb/kubectl-svclb:v<version>].
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Type of the tserver Service (NodePort and LoadBalancer also have nodePorts).
    #[arg(long, value_parser = kube_value::<ServiceType>(), ignore_case = true, default_value = "NodePort")]
    pub service_type: ServiceType,
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Also the affinity server: LoadBalancer Service, sessionAffinity ClientIP, eTP Local.
    #[arg(long)]
    pub affinity_server: bool,
    /// spec.ipFamilyPolicy of the Services [default: the cluster's, SingleStack].
    #[arg(long, value_parser = kube_value::<IpFamilyPolicy>(), ignore_case = true)]
    pub ip_family_policy: Option<IpFamilyPolicy>,
    /// spec.ipFamilies of the Services, primary first: IPv4, IPv6, IPv4,IPv6 or IPv6,IPv4
    /// [default: the cluster's].
    #[arg(long, value_name = "FAMILY,...", value_delimiter = ',', value_parser = ip_family(), ignore_case = true)]
    pub ip_families: Vec<IpFamily>,
}

impl ServerArgs {
    pub fn options(&self, namespace: &str) -> Result<Options> {
        Ok(Options {
            namespace: namespace.to_string(),
            image: self
                .image
                .clone()
                .unwrap_or_else(|| manifests::DEFAULT_IMAGE.to_string()),
            replicas: self.replicas,
            service_type: self.service_type,
            service: self.service.options()?,
            affinity_server: self.affinity_server,
            ip_family_policy: self.ip_family_policy,
            ip_families: self.ip_families.clone(),
        })
    }
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// How long to wait for the pods to become ready.
    #[arg(long, default_value = "3m", value_parser = super::parse_duration)]
    pub wait_timeout: Duration,
    /// Apply and return without waiting for readiness.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = StatusFormat::Table)]
    pub output: StatusFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {}

#[derive(Debug, Args)]
pub struct ManifestsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the RBAC a user of the plugin needs (Role, ClusterRole, bindings) instead.
    #[arg(long)]
    pub rbac: bool,
}

pub fn deploy(args: DeployArgs, kube: &KubeFlags) -> Result<ExitCode> {
    let rt = crate::run::runtime(2)?;
    rt.block_on(async {
        let (c, _) = cluster::connect(&kube.connection()).await?;
        let o = args.server.options(&c.namespace)?;
        cluster::deploy::deploy_servers(&c, &o, (!args.no_wait).then_some(args.wait_timeout)).await
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: StatusArgs, kube: &KubeFlags) -> Result<ExitCode> {
    let rt = crate::run::runtime(2)?;
    let st = rt.block_on(async {
        let (c, version) = cluster::connect(&kube.connection()).await?;
        ops::status(&c, version).await
    })?;
    match args.output {
        StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&st)?),
        StatusFormat::Yaml => print!("{}", serde_saphyr::to_string(&st)?),
        StatusFormat::Table => print!("{}", render_status(&st)),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cleanup(_args: CleanupArgs, kube: &KubeFlags) -> Result<ExitCode> {
    let rt = crate::run::runtime(2)?;
    let (deleted, c) = rt.block_on(async {
        let (c, _) = cluster::connect(&kube.connection()).await?;
        anyhow::Ok((ops::cleanup(&c).await?, c))
    })?;
    if deleted.is_empty() {
        eprintln!(
            "svclb: nothing made by kubectl-svclb in {} (context {})",
            c.namespace, c.context
        );
    }
    for d in deleted {
        println!("deleted {d}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The namespace for offline rendering: `-n`, else the context's, else `default`.
async fn offline_namespace(kube: &KubeFlags) -> String {
    if let Some(ns) = &kube.namespace {
        return ns.clone();
    }
    match cluster::config(&kube.connection()).await {
        Ok((config, _)) => config.default_namespace,
        Err(_) => "default".into(),
    }
}

pub fn manifests(args: ManifestsArgs, kube: &KubeFlags) -> Result<ExitCode> {
    let rt = crate::run::runtime(1)?;
    let ns = rt.block_on(offline_namespace(kube));
    let objs = if args.rbac {
        if !manifests::is_dns_label(&ns) {
            bail!("namespace {ns:?} is not a valid name (lowercase letters, digits, '-')");
        }
        manifests::render_rbac(&ns)?
    } else {
        manifests::render(&args.server.options(&ns)?)?
    };
    print!("{}", manifests::to_yaml(&objs)?);
    Ok(ExitCode::SUCCESS)
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut b = Builder::default();
    b.push_record(header.iter().map(|h| h.to_string()));
    for r in rows {
        b.push_record(r);
    }
    b.build().with(Style::blank()).to_string()
}

/// `IPv4 10.96.0.10, IPv6 fd00::10`: each family's address, primary first.
fn per_family(families: &[IpFamily], addr: impl Fn(IpFamily) -> Option<IpAddr>, missing: &str) -> String {
    families
        .iter()
        .map(|&f| {
            format!(
                "{} {}",
                f.kube(),
                addr(f).map_or_else(|| missing.to_string(), |a| a.to_string())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_string() }
}

/// `status` as tables.
pub fn render_status(st: &ops::Status) -> String {
    let mut out = format!(
        "context {} namespace {} (server {}, kube-proxy mode {})\n",
        st.context,
        st.namespace,
        st.server_version,
        st.proxy_mode.as_deref().unwrap_or("unknown")
    );
    if st.pods.is_empty() && st.services.is_empty() {
        out.push_str("no test servers here: `kubectl svclb deploy` makes them\n");
        return out;
    }
    let pods = st
        .pods
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                or_dash(&p.node),
                or_dash(&p.zone),
                or_dash(&p.ips.join(",")),
                if p.ready { "yes" } else { "no" }.into(),
                p.state.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["POD", "NODE", "ZONE", "IP", "READY", "STATE"], pods));
    out.push('\n');
    let ready = st.pods.iter().filter(|p| p.ready).count();
    let per = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, v)| format!("{}={v}", or_dash(k)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    out.push_str(&format!(
        "ready pods: {ready}/{}; per node: {}; per zone: {}\n",
        st.pods.len(),
        per(&st.per_node),
        per(&st.per_zone)
    ));
    for s in &st.services {
        let families = s.families();
        let stack = match &s.ip_family_policy {
            Some(policy) => {
                let names: Vec<&str> = families.iter().map(|f| f.kube()).collect();
                format!(", {policy} {}", names.join(","))
            }
            None => String::new(),
        };
        let cluster_ips = per_family(&families, |f| s.cluster_ip(f), "-");
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|(p, np)| match np {
                Some(n) => format!("{p}:{n}"),
                None => p.clone(),
            })
            .collect();
        out.push_str(&format!(
            "service {} ({}{stack}): clusterIP {} ports {}{}\n  sessionAffinity {}, externalTrafficPolicy {}, internalTrafficPolicy {}, trafficDistribution {}\n",
            s.name,
            s.type_,
            or_dash(&cluster_ips),
            ports.join(" "),
            if s.lb_ips.is_empty() {
                if s.type_ == "LoadBalancer" { " LB pending".to_string() } else { String::new() }
            } else {
                // Each family's ingress IP (or pending), and any hostname the LB gives.
                let mut lb = vec![per_family(&families, |f| s.lb_ip(f), "pending")];
                lb.extend(s.lb_ips.iter().filter(|a| a.parse::<IpAddr>().is_err()).cloned());
                format!(" LB {}", lb.join(", "))
            },
            s.session_affinity,
            s.external_traffic_policy.as_deref().unwrap_or("-"),
            s.internal_traffic_policy.as_deref().unwrap_or("-"),
            s.traffic_distribution.as_deref().unwrap_or("-"),
        ));
    }
    if !st.endpoints.is_empty() {
        let rows = st
            .endpoints
            .iter()
            .map(|e| {
                vec![
                    e.slice.clone(),
                    or_dash(&e.pod),
                    e.addresses.join(","),
                    or_dash(&e.zone),
                    if e.ready { "yes" } else { "no" }.into(),
                    or_dash(&e.hints.join(",")),
                ]
            })
            .collect();
        out.push_str(&table(
            &["ENDPOINTSLICE", "POD", "ADDRESS", "ZONE", "READY", "HINTS (forZones)"],
            rows,
        ));
        out.push('\n');
    }
    out
}
