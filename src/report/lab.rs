//! A lab's status: nodes, pods and the Service, as `lab up` and `lab status` print them; and
//! what a change went through (`delete-pod`, `scale`, `set`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use tabled::builder::Builder;
use tabled::settings::Style;

use crate::lab::{EndpointEvent, LabStatus, ProxyMode, Timeline};
use crate::service::IpFamily;

/// The whole status as a table.
pub fn status(st: &LabStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lab {} (proxy mode {}, rules generation {}, sync delay {}, state {})",
        st.name,
        proxy_mode(st.proxy_mode),
        st.generation,
        st.sync_delay,
        st.state_dir.display()
    );
    if let Some(what) = &st.incomplete {
        let _ = writeln!(
            out,
            "INCOMPLETE: `{what}` did not finish (or still runs); runs refuse this lab: `kubectl svclb lab down --name {}`",
            st.name
        );
    }
    let _ = writeln!(out, "kube-proxy {}", st.kube_proxy);
    let _ = writeln!(out, "{}", nodes(st));
    let mut b = Builder::default();
    b.push_record(["POD", "NODE", "ZONE", "IP", "PID", "ALIVE", "HINT", "ENDPOINT"]);
    for p in &st.pods {
        b.push_record([
            p.name.clone(),
            p.node.clone(),
            p.zone.clone(),
            with_v6(p.ip.to_string(), p.ipv6),
            p.pid.to_string(),
            if p.alive { "yes" } else { "NO" }.to_string(),
            p.hint.clone().unwrap_or_else(|| "-".to_string()),
            p.conditions.describe().to_string(),
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

/// The nodes: zone, address, pod CIDR, pods, the rules generation applied.
pub fn nodes(st: &LabStatus) -> String {
    let mut b = Builder::default();
    b.push_record(["NODE", "ZONE", "IP", "POD CIDR", "PODS", "RULES"]);
    for n in &st.nodes {
        b.push_record([
            n.name.clone(),
            n.zone.clone(),
            with_v6(n.ip.to_string(), n.ipv6),
            with_v6(n.pod_cidr.to_string(), n.pod_cidr_v6),
            n.pods.to_string(),
            if n.generation < st.generation {
                format!("{} (syncing)", n.generation)
            } else {
                n.generation.to_string()
            },
        ]);
    }
    b.build().with(Style::blank()).to_string()
}

/// The Service: addresses, ports and options, and the client.
pub fn service(st: &LabStatus) -> String {
    let mut out = String::new();
    let s = &st.service;
    let o = &s.options;
    // The Service's addresses in each of its families (IPv4 first in a dual-stack lab).
    let of = |ip: &dyn Fn(IpFamily) -> String| s.ip_families.iter().map(|f| ip(*f)).collect::<Vec<_>>().join(",");
    let families: Vec<String> = s.ip_families.iter().map(|f| f.kube().to_string()).collect();
    let _ = writeln!(
        out,
        "service {}/{} ({}): clusterIP {} port {} (tcp, udp), {} (http)",
        s.namespace,
        s.name,
        families.join(", "),
        of(&|f| s.cluster_ip_of(f).to_string()),
        s.port,
        s.http_port
    );
    let ips: Vec<String> = s
        .ip_families
        .iter()
        .flat_map(|f| s.node_ips_of(*f))
        .map(|i| i.to_string())
        .collect();
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
        of(&|f| s.lb_ip_of(f).to_string()),
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
    let client = with_v6(st.client.ip.to_string(), st.client.ipv6);
    let _ = writeln!(out, "  client {client} in {}", st.client.netns);
    out
}

/// An address, and its IPv6 counterpart when the lab has one (`10.244.1.2 fd00:5b1a::af4:102`).
fn with_v6(v4: String, v6: Option<impl std::fmt::Display>) -> String {
    match v6 {
        Some(v6) => format!("{v4} {v6}"),
        None => v4,
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// What a change went through: each pod's steps, then when each rules generation reached the
/// nodes (first and last node).
pub fn timeline(tl: &Timeline) -> String {
    let mut out = String::new();
    for pod in tl.pods() {
        let steps: Vec<String> = tl
            .events
            .iter()
            .filter(|e| e.pod == pod)
            .map(|e| {
                let what = match e.event {
                    EndpointEvent::NotServing => "not serving".to_string(),
                    other => other.to_string(),
                };
                format!("{what} at {}", ms(e.at))
            })
            .collect();
        let _ = writeln!(out, "{pod}: {}", steps.join(", "));
    }
    let mut generations: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
    for s in &tl.syncs {
        generations.entry(s.generation).or_default().push(s.at);
    }
    for (generation, at) in generations {
        let (first, last) = (at.iter().min().expect("one sync"), at.iter().max().expect("one sync"));
        let nodes = match at.len() {
            1 => "1 node".to_string(),
            n => format!("{n} nodes"),
        };
        let when = if first == last {
            format!("at {}", ms(*first))
        } else {
            format!("from {} to {}", ms(*first), ms(*last))
        };
        let _ = writeln!(out, "rules generation {generation} applied on {nodes} {when}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::lab::{Event, NodeSync};

    #[test]
    fn a_timeline_prints_each_pod_s_steps_and_each_generation_s_spread() {
        let ms = Duration::from_millis;
        let ev = |at, event| Event {
            at: ms(at),
            pod: "pod-003".into(),
            event,
        };
        let sync = |at, node: &str, generation| NodeSync {
            at: ms(at),
            node: node.into(),
            generation,
        };
        let tl = Timeline {
            start: Instant::now(),
            events: vec![
                ev(0, EndpointEvent::Terminating),
                ev(1012, EndpointEvent::NotServing),
                ev(1030, EndpointEvent::Removed),
            ],
            syncs: vec![sync(3, "node1", 7), sync(41, "node2", 7), sync(1040, "node1", 9)],
        };
        assert_eq!(
            timeline(&tl),
            "pod-003: terminating at 0 ms, not serving at 1012 ms, removed at 1030 ms\n\
             rules generation 7 applied on 2 nodes from 3 ms to 41 ms\n\
             rules generation 9 applied on 1 node at 1040 ms\n"
        );
    }
}
