//! A lab's status: nodes, pods and the Service, as `lab up` and `lab status` print them.

use std::fmt::Write;

use tabled::builder::Builder;
use tabled::settings::Style;

use crate::lab::{LabStatus, ProxyMode};

/// The whole status as a table.
pub fn status(st: &LabStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lab {} (proxy mode {}, state {})",
        st.name,
        proxy_mode(st.proxy_mode),
        st.state_dir.display()
    );
    let _ = writeln!(out, "kube-proxy {}", st.kube_proxy);
    let _ = writeln!(out, "{}", nodes(st));
    let mut b = Builder::default();
    b.push_record(["POD", "NODE", "ZONE", "IP", "PID", "ALIVE", "HINT"]);
    for p in &st.pods {
        b.push_record([
            p.name.clone(),
            p.node.clone(),
            p.zone.clone(),
            p.ip.to_string(),
            p.pid.to_string(),
            if p.alive { "yes" } else { "NO" }.to_string(),
            p.hint.clone().unwrap_or_else(|| "-".to_string()),
        ]);
    }
    let _ = writeln!(out, "{}", b.build().with(Style::blank()));
    out.push_str(&service(st));
    out
}

pub fn proxy_mode(m: ProxyMode) -> &'static str {
    match m {
        ProxyMode::Nftables => "nftables",
        ProxyMode::Iptables => "iptables",
    }
}

/// The nodes: zone, address, pod CIDR, pods.
pub fn nodes(st: &LabStatus) -> String {
    let mut b = Builder::default();
    b.push_record(["NODE", "ZONE", "IP", "POD CIDR", "PODS"]);
    for n in &st.nodes {
        b.push_record([
            n.name.clone(),
            n.zone.clone(),
            n.ip.to_string(),
            n.pod_cidr.to_string(),
            n.pods.to_string(),
        ]);
    }
    b.build().with(Style::blank()).to_string()
}

/// The Service: addresses, ports and options, and the client.
pub fn service(st: &LabStatus) -> String {
    let mut out = String::new();
    let s = &st.service;
    let o = &s.options;
    let _ = writeln!(
        out,
        "service {}/{}: clusterIP {} port {} (tcp, udp), {} (http)",
        s.namespace, s.name, s.cluster_ip, s.port, s.http_port
    );
    let ips: Vec<String> = s.node_ips.iter().map(|i| i.to_string()).collect();
    let _ = writeln!(
        out,
        "  nodePort {} (tcp, udp), {} (http) on {}",
        s.node_port,
        s.http_node_port,
        ips.join(" ")
    );
    let _ = writeln!(
        out,
        "  loadBalancer {} via {}{}",
        s.lb_ip,
        s.lb_next_hops.join(" "),
        if s.ecmp { " (ECMP)" } else { "" }
    );
    let _ = writeln!(
        out,
        "  sessionAffinity {} (timeout {}s), externalTrafficPolicy {}, internalTrafficPolicy {}, trafficDistribution {}",
        o.affinity,
        o.affinity_timeout,
        o.external_traffic_policy,
        o.internal_traffic_policy,
        o.traffic_distribution
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".to_string())
    );
    println!("  client {} in {}", st.client.ip, st.client.netns);
    out
}
