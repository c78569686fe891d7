//! Health checks, as kube-proxy and a cloud load balancer do them:
//!
//! * each node's **kube-proxy health servers** (`pkg/proxy/healthcheck/service_health.go` and
//!   `proxy_health.go`): `/healthz` and `/livez` on `<node IP>:10256`, and for a LoadBalancer with
//!   externalTrafficPolicy Local the Service's `healthCheckNodePort`, answering every path with
//!   200 when the node has a local ready endpoint, else 503, and kube-proxy's JSON body and
//!   headers. A per-node agent process serves them from what that node's kube-proxy last synced
//!   (`nodes/<node>.json`, written after each node's rules);
//! * the **ECMP load balancer** in the client's namespace (`lab up --ecmp`): every second it
//!   probes every node (the healthCheckNodePort with eTP Local, else kube-proxy's `/healthz`, as
//!   cloud providers do), and routes the LoadBalancer IP over the healthy nodes only (all nodes
//!   when none is healthy, as cloud load balancers fail open). What it routes over is in
//!   `lb.json`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::rules::{Cluster, SERVICE_NAME, SERVICE_NAMESPACE};
use super::state::write_atomic;
use super::topology::{PROXY_HEALTHZ_PORT, in_family, lb_route};
use super::{Lab, Node, netns};
use crate::service::IpFamily;

/// How often the node agent looks at its node's last sync.
const NODE_POLL: Duration = Duration::from_millis(50);
/// How often the load balancer probes every node, and how long a probe may take.
pub const LB_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Consecutive failed probes before the load balancer stops sending to a node (one success
/// brings it back), as cloud load balancers' "unhealthy threshold".
const UNHEALTHY_AFTER: u32 = 2;

/// What one node's kube-proxy reported at its last sync: what its health servers answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSync {
    /// The Service's healthCheckNodePort when kube-proxy serves it (LoadBalancer, eTP Local).
    pub health_check_node_port: Option<u16>,
    /// Distinct IPs of this node's ready endpoints (kube-proxy's `LocalReadyEndpoints`).
    pub local_endpoints: u32,
}

fn sync_path(dir: &Path, node: &str) -> PathBuf {
    dir.join("nodes").join(format!("{node}.json"))
}

/// Records a node's sync for its health servers (atomically: the agent never reads half).
pub(super) fn record_sync(dir: &Path, node: &str, sync: &NodeSync) -> Result<()> {
    let path = sync_path(dir, node);
    std::fs::create_dir_all(path.parent().expect("nodes dir"))
        .with_context(|| format!("cannot create {}", path.display()))?;
    write_atomic(&path, &serde_json::to_vec(sync)?)
}

/// The service health check's answer (kube-proxy's `hcHandler.ServeHTTP`): status, endpoint
/// weight header, and the body byte for byte (tab-indented, no trailing newline).
pub fn service_health(local_endpoints: u32, proxy_healthy: bool) -> (StatusCode, String) {
    let status = if local_endpoints != 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {SERVICE_NAMESPACE:?},\n\t\t\"name\": {SERVICE_NAME:?}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}"
    );
    (status, body)
}

/// kube-proxy's `/healthz` (with `nodeEligible`) and `/livez` body on port 10256, with the
/// status of each family's proxier.
fn proxy_health(path: &str, last_updated: jiff::Timestamp, families: &[IpFamily]) -> (StatusCode, String) {
    let now = jiff::Timestamp::now();
    let status: serde_json::Map<String, serde_json::Value> = families
        .iter()
        .map(|f| {
            let family = match f {
                IpFamily::Ipv4 => "IPv4",
                IpFamily::Ipv6 => "IPv6",
            };
            (
                family.to_string(),
                serde_json::json!({"lastUpdated": last_updated.to_string(), "healthy": true}),
            )
        })
        .collect();
    let mut v = serde_json::json!({
        "lastUpdated": last_updated.to_string(),
        "currentTime": now.to_string(),
        "healthy": true,
        "status": status,
    });
    match path {
        "/healthz" => v["nodeEligible"] = serde_json::json!(true),
        "/livez" => {}
        _ => return (StatusCode::NOT_FOUND, "404 page not found\n".into()),
    }
    (StatusCode::OK, v.to_string())
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: String, weight: Option<u32>) -> Reply {
    let mut r = Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("X-Content-Type-Options", "nosniff");
    if let Some(w) = weight {
        r = r.header("X-Load-Balancing-Endpoint-Weight", w.to_string());
    }
    r.body(Full::new(Bytes::from(body))).expect("a valid response")
}

/// Serves `answer` (path → reply) on `listener` until the task is aborted.
async fn serve_http(listener: TcpListener, answer: Arc<dyn Fn(&str) -> Reply + Send + Sync>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let r = answer(req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Listeners on `port` of every address in `addrs`.
async fn listen_all(addrs: &[IpAddr], port: u16) -> std::io::Result<Vec<TcpListener>> {
    let mut all = Vec::with_capacity(addrs.len());
    for a in addrs {
        all.push(TcpListener::bind(SocketAddr::new(*a, port)).await?);
    }
    Ok(all)
}

/// The node agent (`kubectl-svclb lab agent node`), run in the node's namespace: kube-proxy's
/// health servers for `node`, on its address in each of the lab's families (kube-proxy's
/// default `healthzBindAddresses` are `0.0.0.0/0` and `::/0`; its service health servers listen
/// on the node IPs). Ends when the lab's directory is gone.
pub async fn node_agent(name: String, node: String) -> Result<()> {
    let lab = Lab::open(&name)?;
    let node = lab.node(&node).cloned().with_context(|| lab.unknown(&node))?;
    let families = lab.families().families();
    let addrs: Vec<IpAddr> = families.iter().map(|f| in_family(node.ip, *f)).collect();
    let dir = lab.dir;
    let synced = Arc::new(std::sync::Mutex::new(jiff::Timestamp::now()));
    let healthz = listen_all(&addrs, PROXY_HEALTHZ_PORT)
        .await
        .with_context(|| format!("cannot listen on {}:{PROXY_HEALTHZ_PORT}", node.ip))?;
    let last = synced.clone();
    let answer: Arc<dyn Fn(&str) -> Reply + Send + Sync> = Arc::new(move |path: &str| {
        let (status, body) = proxy_health(path, *last.lock().expect("lock"), families);
        reply(status, body, None)
    });
    for l in healthz {
        tokio::spawn(serve_http(l, answer.clone()));
    }
    let count = Arc::new(AtomicU32::new(0));
    let mut service: Option<(u16, Vec<JoinHandle<()>>)> = None;
    let path = sync_path(&dir, &node.name);
    let mut seen: Option<SystemTime> = None;
    while dir.exists() {
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified.is_some()
            && modified != seen
            && let Some(sync) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<NodeSync>(&b).ok())
        {
            seen = modified;
            *synced.lock().expect("lock") = jiff::Timestamp::now();
            count.store(sync.local_endpoints, Ordering::Relaxed);
            if service.as_ref().map(|(p, _)| *p) != sync.health_check_node_port {
                if let Some((_, tasks)) = service.take() {
                    tasks.iter().for_each(JoinHandle::abort);
                }
                if let Some(port) = sync.health_check_node_port {
                    match listen_all(&addrs, port).await {
                        Ok(listeners) => {
                            let count = count.clone();
                            let answer: Arc<dyn Fn(&str) -> Reply + Send + Sync> = Arc::new(move |_path: &str| {
                                let n = count.load(Ordering::Relaxed);
                                let (status, body) = service_health(n, true);
                                reply(status, body, Some(n))
                            });
                            let tasks = listeners
                                .into_iter()
                                .map(|l| tokio::spawn(serve_http(l, answer.clone())))
                                .collect();
                            service = Some((port, tasks));
                        }
                        // kube-proxy logs it and emits FailedToStartServiceHealthcheck; retried at the next sync.
                        Err(e) => {
                            eprintln!("cannot listen on {}:{port} for the service health check: {e}", node.ip);
                            seen = None;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(NODE_POLL).await;
    }
    Ok(())
}

/// What the ECMP load balancer routes over (`lb.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbState {
    /// Nodes the LoadBalancer IP is routed over now.
    pub next_hops: Vec<String>,
    /// What it probes: `:32000/` (healthCheckNodePort) or `:10256/healthz`.
    pub probe: String,
    /// Per node: consecutive failed probes (0 = healthy).
    pub failures: BTreeMap<String, u32>,
}

pub(super) fn lb_path(dir: &Path) -> PathBuf {
    dir.join("lb.json")
}

/// The load balancer's choice: nodes whose failures are below the threshold, or every node
/// when none is healthy (fail open).
pub fn healthy_hops(nodes: &[String], failures: &BTreeMap<String, u32>) -> Vec<String> {
    let ok: Vec<String> = nodes
        .iter()
        .filter(|n| failures.get(*n).copied().unwrap_or(0) < UNHEALTHY_AFTER)
        .cloned()
        .collect();
    if ok.is_empty() { nodes.to_vec() } else { ok }
}

impl Lab {
    /// The nodes a health-checked load balancer routes the LoadBalancer IP over once it has
    /// converged: with eTP Local those with a local ready endpoint (all if none has), else all.
    pub fn healthy_nodes(&self) -> Vec<String> {
        let pods = self.usable_pods();
        let c = self.cluster(&pods);
        let all: Vec<String> = self.state.nodes.iter().map(|n| n.name.clone()).collect();
        if c.services[0].health_check_port().is_none() {
            return all;
        }
        let ok: Vec<String> = self
            .state
            .nodes
            .iter()
            .filter(|n| node_sync(&c, n).local_endpoints > 0)
            .map(|n| n.name.clone())
            .collect();
        if ok.is_empty() { all } else { ok }
    }

    /// What the ECMP load balancer routes over now (None: no ECMP, or it has not probed yet).
    pub fn lb_state(&self) -> Option<LbState> {
        let bytes = std::fs::read(lb_path(&self.dir)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until the ECMP load balancer routes over [`Lab::healthy_nodes`] (its health checks
    /// take a few seconds to notice a change, as a cloud load balancer's do).
    pub fn wait_lb(&self, timeout: Duration) -> Result<()> {
        if !self.state.ecmp {
            return Ok(());
        }
        let want = self.healthy_nodes();
        let start = std::time::Instant::now();
        loop {
            let now = self.lb_state().map(|s| s.next_hops);
            if now.as_ref() == Some(&want) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "the load balancer routes over {} after {}s, not the healthy nodes {}",
                    now.map(|h| h.join(" ")).unwrap_or_else(|| "nothing yet".into()),
                    timeout.as_secs(),
                    want.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What `node`'s health servers answer after its sync: the healthCheckNodePort (eTP Local) and
/// the distinct IPs of its ready endpoints.
pub(super) fn node_sync(c: &Cluster, node: &Node) -> NodeSync {
    let svc = &c.services[0];
    let mut ips: Vec<std::net::IpAddr> = svc
        .endpoints
        .iter()
        .filter(|e| e.ep.ready && e.ep.node == node.name)
        .map(|e| e.ip)
        .collect();
    ips.sort_unstable();
    ips.dedup();
    NodeSync {
        health_check_node_port: svc.health_check_port(),
        local_endpoints: ips.len() as u32,
    }
}

/// The ECMP load balancer (`kubectl-svclb lab agent lb`), run in the client's namespace. Ends when
/// the lab is gone.
pub async fn lb_agent(name: String) -> Result<()> {
    // reqwest is built without a default TLS provider; these probes are plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .no_proxy()
        .build()
        .context("cannot build the health-check client")?;
    let mut st = LbState::default();
    let mut routed: Vec<String> = Vec::new();
    loop {
        let Ok(lab) = Lab::open(&name) else {
            return Ok(());
        };
        let s = &lab.state;
        let pods = lab.usable_pods();
        let (port, path) = match lab.cluster(&pods).services[0].health_check_port() {
            Some(p) => (p, "/"),
            None => (PROXY_HEALTHZ_PORT, "/healthz"),
        };
        st.probe = format!(":{port}{path}");
        // Each node over each family of the Service: a probe failing in either counts.
        let mut probes = tokio::task::JoinSet::new();
        for n in &s.nodes {
            for f in s.families.families() {
                let url = format!("http://{}{path}", SocketAddr::new(in_family(n.ip, *f), port));
                let (http, node) = (http.clone(), n.name.clone());
                probes.spawn(async move {
                    let ok = matches!(http.get(url).send().await, Ok(r) if r.status() == reqwest::StatusCode::OK);
                    (node, ok)
                });
            }
        }
        let mut ok: BTreeMap<String, bool> = BTreeMap::new();
        while let Some(Ok((node, answered))) = probes.join_next().await {
            *ok.entry(node).or_insert(true) &= answered;
        }
        for (node, ok) in ok {
            let f = st.failures.entry(node).or_insert(0);
            *f = if ok { 0 } else { *f + 1 };
        }
        let names: Vec<String> = s.nodes.iter().map(|n| n.name.clone()).collect();
        let hops = healthy_hops(&names, &st.failures);
        if hops != routed {
            let via: Vec<Ipv4Addr> = hops
                .iter()
                .filter_map(|h| s.nodes.iter().find(|n| &n.name == h))
                .map(|n| n.ip)
                .collect();
            // Both families' LoadBalancer IPs when the lab has IPv6 (an IPv6-only lab keeps
            // its IPv4 plumbing, and its route).
            let mut batch = format!("route replace {}\n", lb_route(IpFamily::Ipv4, &via));
            if s.families.has(IpFamily::Ipv6) {
                batch.push_str(&format!("route replace {}\n", lb_route(IpFamily::Ipv6, &via)));
            }
            netns::ip_batch(Some(&lab.netns_of("client")), &batch, false)?;
            routed = hops.clone();
        }
        st.next_hops = hops;
        write_atomic(&lb_path(&lab.dir), &serde_json::to_vec(&st)?)?;
        tokio::time::sleep(LB_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_health_is_kube_proxys_answer() {
        let (status, body) = service_health(2, true);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"tserver\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        assert_eq!(service_health(0, true).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(service_health(3, false).0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn proxy_healthz_and_livez() {
        let t = jiff::Timestamp::now();
        let v4 = [IpFamily::Ipv4];
        let (s, b) = proxy_health("/healthz", t, &v4);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            (s, v["nodeEligible"].as_bool(), v["healthy"].as_bool()),
            (StatusCode::OK, Some(true), Some(true))
        );
        assert_eq!(v["status"].as_object().unwrap().len(), 1, "{v}");
        let (_, b) = proxy_health("/livez", t, &v4);
        assert!(!b.contains("nodeEligible"));
        assert_eq!(proxy_health("/other", t, &v4).0, StatusCode::NOT_FOUND);
        // Dual-stack: each family's proxier reports.
        let (_, b) = proxy_health("/healthz", t, &[IpFamily::Ipv4, IpFamily::Ipv6]);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["status"]["IPv6"]["healthy"], true, "{v}");
        assert_eq!(v["status"]["IPv4"]["healthy"], true, "{v}");
    }

    #[test]
    fn the_load_balancer_drops_a_node_after_two_failures_and_fails_open() {
        let nodes: Vec<String> = ["node1", "node2", "node3"].map(String::from).to_vec();
        let mut f = BTreeMap::new();
        f.insert("node2".to_string(), 1);
        assert_eq!(healthy_hops(&nodes, &f), nodes, "one failure is not enough");
        f.insert("node2".to_string(), 2);
        assert_eq!(healthy_hops(&nodes, &f), ["node1", "node3"]);
        for n in &nodes {
            f.insert(n.clone(), 5);
        }
        assert_eq!(healthy_hops(&nodes, &f), nodes, "none healthy: all");
    }
}
