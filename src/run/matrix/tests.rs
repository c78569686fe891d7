//! `matrix` on a cluster against the in-memory API (with the rendered Role enforced): the rows
//! from nodes and pods, a Service per scenario made and deleted (also on failure and interrupt),
//! skipped scenarios with their reasons, expectations from the EndpointSlices, the client row
//! left out when this machine does not reach the nodes. The agents are a scripted network: a
//! Service address answers from the first ready endpoint of its EndpointSlices (or refuses
//! without any), whatever its policies, so that cells where kube-proxy's policies matter come
//! out wrong, as they would on a cluster that ignored them.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;

use super::*;
use crate::agent::{Output, StormResult};
use crate::backend::kube::matrix::MatrixOptions;
use crate::backend::kube::{AgentRunner, ClusterView, KubeBackend};
use crate::backend::{Source, Stream};
use crate::cluster::fake::{self, Controllers, FakeApi, NS, Pods, TdSupport};
use crate::cluster::manifests::TSERVER;
use crate::record::{CellVerdict, MatrixScenario, SourceKind};
use crate::storm::{BackendCount, Failures};

/// The scripted network: every probe of an agent answered from the API's objects.
#[derive(Clone)]
struct Net {
    api: FakeApi,
    /// Where each agent ran (the pod exec'd into, or "client" on this machine).
    ran_at: Arc<Mutex<Vec<String>>>,
    /// While this Service exists, agents hold until stopped (then report nothing measured).
    hold_in: Option<&'static str>,
    /// While this Service exists, agents end without a result.
    fail_in: Option<&'static str>,
}

/// A probe that an interrupt stopped before it started.
fn not_started() -> StormResult {
    StormResult {
        attempted: 0,
        ok: 0,
        failures: Failures::default(),
        backends: Vec::new(),
        latency_us: Vec::new(),
        elapsed_s: 0.0,
        stopped: Some(crate::storm::Stop::Interrupted),
        resolved: None,
        resolve_error: None,
    }
}

fn services(api: &FakeApi) -> Vec<Value> {
    api.list(&format!("/api/v1/namespaces/{NS}/services/"))
}

fn ready_endpoints(api: &FakeApi, service: &str) -> Vec<(String, IpAddr)> {
    let mut out: Vec<(String, IpAddr)> = api
        .list(&format!("/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/"))
        .iter()
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == service)
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .map(|e| {
            (
                e["targetRef"]["name"].as_str().unwrap().to_string(),
                e["addresses"][0].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

impl Net {
    /// Who answers `addr`: a pod by its IP, or a Service's first ready endpoint (`Err(true)`:
    /// refused, the Service has none; `Err(false)`: nothing there, timed out).
    fn answer(&self, addr: SocketAddr) -> Result<String, bool> {
        let pods = self.api.list(&format!("/api/v1/namespaces/{NS}/pods/"));
        if let Some(p) = pods
            .iter()
            .find(|p| p["status"]["podIP"] == addr.ip().to_string().as_str())
        {
            // Host-network pods share their node's IP: not a server.
            if p["spec"]["hostNetwork"] != true {
                return Ok(p["metadata"]["name"].as_str().unwrap().to_string());
            }
        }
        let nodes = self.api.list("/api/v1/nodes/");
        let is_node = nodes
            .iter()
            .any(|n| n["status"]["addresses"][0]["address"] == addr.ip().to_string().as_str());
        let ip = addr.ip().to_string();
        let svc = services(&self.api).into_iter().find(|s| {
            s["spec"]["clusterIP"] == ip.as_str() && addr.port() == 5001
                || s["status"]["loadBalancer"]["ingress"][0]["ip"] == ip.as_str()
                || is_node
                    && s["spec"]["ports"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["nodePort"] == addr.port()))
        });
        let Some(svc) = svc else { return Err(false) };
        ready_endpoints(&self.api, svc["metadata"]["name"].as_str().unwrap())
            .first()
            .map(|e| e.0.clone())
            .ok_or(true)
    }

    /// What a name resolves to: a headless Service's ready endpoints, an ExternalName's target
    /// Service's clusterIP.
    fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        let short = name
            .strip_suffix(&format!(".{NS}.svc"))
            .ok_or(format!("{name}: NXDOMAIN"))?;
        let all = services(&self.api);
        let svc = all
            .iter()
            .find(|s| s["metadata"]["name"] == short)
            .ok_or(format!("{name}: NXDOMAIN"))?;
        if svc["spec"]["type"] == "ExternalName" {
            let target = svc["spec"]["externalName"].as_str().unwrap();
            let short = target.strip_suffix(&format!(".{NS}.svc.cluster.local")).unwrap();
            let t = all
                .iter()
                .find(|s| s["metadata"]["name"] == short)
                .ok_or(format!("{target}: NXDOMAIN"))?;
            return Ok(vec![t["spec"]["clusterIP"].as_str().unwrap().parse().unwrap()]);
        }
        Ok(ready_endpoints(&self.api, short).into_iter().map(|e| e.1).collect())
    }

    fn probe(&self, p: &crate::agent::Probe) -> StormResult {
        let mut r = StormResult {
            attempted: p.storm.conns,
            ok: 0,
            failures: Failures::default(),
            backends: Vec::new(),
            latency_us: Vec::new(),
            elapsed_s: 0.001,
            stopped: None,
            resolved: None,
            resolve_error: None,
        };
        let addrs = match &p.resolve {
            None => vec![p.storm.target],
            Some(name) => match self.resolve(name) {
                Ok(ips) => {
                    r.resolved = Some(ips.clone());
                    ips.into_iter()
                        .map(|ip| SocketAddr::new(ip, p.storm.target.port()))
                        .collect()
                }
                Err(e) => {
                    r.attempted = 0;
                    r.resolve_error = Some(e);
                    return r;
                }
            },
        };
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..p.storm.conns {
            match self.answer(addrs[i as usize % addrs.len()]) {
                Ok(who) => {
                    r.ok += 1;
                    *by.entry(who).or_default() += 1;
                }
                Err(true) => r.failures.refused += 1,
                Err(false) => r.failures.timeout += 1,
            }
        }
        r.backends = by
            .into_iter()
            .map(|(name, count)| BackendCount {
                name,
                node: String::new(),
                zone: String::new(),
                count,
                bytes: 0,
            })
            .collect();
        r
    }
}

impl AgentRunner for Net {
    fn stream(&self, source: &Source, command: Vec<String>) -> anyhow::Result<Stream> {
        self.ran_at.lock().unwrap().push(source.name.clone());
        let exists = |name: Option<&str>| {
            name.is_some_and(|n| self.api.get(&format!("/api/v1/namespaces/{NS}/services/{n}")).is_some())
        };
        let (hold, fail) = (exists(self.hold_in), exists(self.fail_in));
        let crate::agent::Request::Probes(req) = crate::agent::parse(&command[3])? else {
            anyhow::bail!("not a probes request");
        };
        let (reader, mut writer) = tokio::io::duplex(1 << 20);
        let stop = Arc::new(Notify::new());
        let (me, stopped) = (self.clone(), stop.clone());
        let session = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            if fail {
                return "agent: killed".to_string();
            }
            let results: Vec<StormResult> = if hold {
                stopped.notified().await;
                req.storms.iter().map(|_| not_started()).collect()
            } else {
                req.storms.iter().map(|p| me.probe(p)).collect()
            };
            let mut line = serde_json::to_vec(&Output::Probes { results }).unwrap();
            line.push(b'\n');
            let _ = writer.write_all(&line).await;
            String::new()
        });
        Ok(Stream::new(reader, session, stop))
    }
}

/// Three nodes in two zones, tserver pods on node-1 and node-2 (none on node-3), the tserver
/// Service (NodePort 30501), kube-proxy in nftables mode; the Role enforced; the API's Service
/// allocator and EndpointSlice controller on. Node IPs are `127.78.<net>.1-3`.
async fn cluster(net: u8, controllers: Controllers) -> (FakeApi, KubeBackend<Net, Net>, Net) {
    let api = FakeApi::new(Pods::Ready);
    api.enforce_rbac(crate::cluster::manifests::render_rbac(NS).unwrap());
    api.put(fake::node("node-1", "zone-a", &format!("127.78.{net}.1")));
    api.put(fake::node("node-2", "zone-b", &format!("127.78.{net}.2")));
    api.put(fake::node("node-3", "zone-b", &format!("127.78.{net}.3")));
    api.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": TSERVER, "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": TSERVER}},
            "template": {"spec": {"containers": [{"name": "tserver", "image": "registry.example/svclb:dev"}]}}},
        "status": {"replicas": 2}
    }));
    api.put(fake::pod("svclb-tserver-a1", TSERVER, "node-1", "10.244.1.10", true));
    api.put(fake::pod("svclb-tserver-b1", TSERVER, "node-2", "10.244.2.10", true));
    api.put(fake::service("NodePort", "10.96.0.10", json!({}), None));
    api.put(fake::kube_proxy_configmap("nftables"));
    api.run_controllers(controllers);
    let net_ = Net {
        api: api.clone(),
        ran_at: Arc::default(),
        hold_in: None,
        fail_in: None,
    };
    let view = ClusterView::load(&api.cluster(), "v1.34.1".into(), TSERVER, TSERVER)
        .await
        .unwrap();
    let backend = KubeBackend {
        view,
        cluster: api.cluster(),
        pods: net_.clone(),
        host: net_.clone(),
        family: Default::default(),
    };
    (api, backend, net_)
}

fn lbs() -> Controllers {
    Controllers {
        lb_ips: true,
        slice_reads: 2,
        ..Controllers::default()
    }
}

fn opts() -> MatrixOptions {
    MatrixOptions {
        lb_wait: Duration::from_millis(300),
        service_timeout: Duration::from_secs(10),
        hint_wait: Duration::from_millis(200),
        poll: Duration::from_millis(5),
        settle: Duration::ZERO,
        pod_poll: Duration::from_millis(5),
        reach_timeout: Duration::from_millis(500),
        ..MatrixOptions::default()
    }
}

fn job(test: &str) -> MatrixJob {
    MatrixJob {
        test: Some(Regex::new(test).unwrap()),
        protos: vec![Proto::Tcp],
        conns: 3,
        attempts: 2,
        timeout: Duration::from_millis(200),
        parallel: 16,
        save: SaveTo {
            tag: None,
            dir: "saves".into(),
            no_save: true,
        },
        announce: false,
    }
}

fn scenario<'a>(r: &'a MatrixRun, name: &str) -> &'a MatrixScenario {
    r.scenarios
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

fn cell<'a>(s: &'a MatrixScenario, source: &str, target: &str) -> &'a MatrixCell {
    s.cells
        .iter()
        .find(|c| c.source == source && c.target == target)
        .unwrap_or_else(|| panic!("no cell {source} -> {target} in {}", s.name))
}

fn wrong(s: &MatrixScenario) -> Vec<String> {
    s.cells
        .iter()
        .filter(|c| c.verdict == CellVerdict::Incorrect)
        .map(|c| format!("{} -> {}", c.source, c.target))
        .collect()
}

/// What the run left in the API: its client pods and matrix Services.
fn left(api: &FakeApi) -> Vec<String> {
    let pods = api
        .list(&format!("/api/v1/namespaces/{NS}/pods/svclb-client-"))
        .into_iter()
        .map(|p| format!("pod/{}", p["metadata"]["name"].as_str().unwrap()));
    let svcs = services(api)
        .into_iter()
        .filter(|s| s["metadata"]["name"] != TSERVER)
        .map(|s| format!("service/{}", s["metadata"]["name"].as_str().unwrap()));
    pods.chain(svcs).collect()
}

/// `PATCH`/`DELETE` of matrix Services, in order: `PATCH svclb-mx-default`.
fn service_calls(api: &FakeApi) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|r| (r.starts_with("PATCH") || r.starts_with("DELETE")) && r.contains("/services/svclb-mx-"))
        .map(|r| {
            let (m, p) = r.split_once(' ').unwrap();
            format!("{m} {}", p.rsplit('/').next().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_matrix_has_rows_per_node_a_service_per_scenario_and_cleans_up() {
    // This machine reaches node-1's NodePort of the tserver Service: the client row is in.
    let reach = crate::testing::serve("127.78.40.1:30501", None, "svclb-tserver-a1");
    let (api, backend, net) = cluster(40, lbs()).await;
    let (r, left_behind) = on_cluster(&backend, &job("/tcp$"), opts(), &Interrupt::default())
        .await
        .unwrap();
    reach.abort();
    assert_eq!(left_behind, None);
    assert_eq!(api.denied(), Vec::<String>::new());

    // Rows: a pod on every node (the tserver pod where one runs, a client pod on node-3), every
    // node (a host-network pod), this machine.
    let rows: Vec<(&str, SourceKind, &str)> = r
        .sources
        .iter()
        .map(|s| (s.name.as_str(), s.kind, s.node.as_str()))
        .collect();
    let client_pod = rows[2].0.to_string();
    assert!(client_pod.starts_with("svclb-client-"), "{rows:?}");
    assert_eq!(
        rows,
        [
            ("svclb-tserver-a1", SourceKind::Pod, "node-1"),
            ("svclb-tserver-b1", SourceKind::Pod, "node-2"),
            (client_pod.as_str(), SourceKind::Pod, "node-3"),
            ("node-1", SourceKind::Node, "node-1"),
            ("node-2", SourceKind::Node, "node-2"),
            ("node-3", SourceKind::Node, "node-3"),
            ("client", SourceKind::Client, ""),
        ]
    );
    // The pods the run made: one on the pod network (node-3), one on each node's network,
    // pinned, the tserver's image; the node rows' agents ran in the host-network pods.
    let created = api.created();
    let made: Vec<(&str, bool, &str)> = created
        .iter()
        .map(|p| {
            (
                p["spec"]["nodeName"].as_str().unwrap(),
                p["spec"]["hostNetwork"] == true,
                p["spec"]["dnsPolicy"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        made,
        [
            ("node-3", false, ""),
            ("node-1", true, "ClusterFirstWithHostNet"),
            ("node-2", true, "ClusterFirstWithHostNet"),
            ("node-3", true, "ClusterFirstWithHostNet"),
        ]
    );
    let host_pods: Vec<&str> = created[1..]
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    let ran = net.ran_at.lock().unwrap().clone();
    for p in host_pods.iter().chain([&"svclb-tserver-a1", &"client"]) {
        assert!(ran.iter().any(|r| r == p), "no agent ran at {p}: {ran:?}");
    }
    assert!(!ran.iter().any(|r| r == "node-1"), "{ran:?}");

    // Every scenario: its Service applied, measured, deleted before the next one; the alias
    // after the Service; terminating skipped; the headless Service for the whole run.
    let calls = service_calls(&api);
    let mut want = vec!["PATCH svclb-mx-headless".to_string()];
    for v in [
        "default",
        "etp-local",
        "itp-local",
        "both-local",
        "affinity",
        "no-endpoints",
        "prefer-same-zone",
        "prefer-same-node",
    ] {
        want.push(format!("PATCH svclb-mx-{v}"));
        want.push(format!("PATCH svclb-mx-{v}-alias"));
        want.push(format!("DELETE svclb-mx-{v}"));
        want.push(format!("DELETE svclb-mx-{v}-alias"));
    }
    want.push("DELETE svclb-mx-headless".into());
    assert_eq!(calls, want);
    let t = scenario(&r, "terminating/tcp");
    assert!(
        t.skipped
            .as_deref()
            .unwrap()
            .contains("terminating only while their pods shut down")
    );
    assert!(t.cells.is_empty());
    // Labelled for cleanup, with the run's instance (its client pods' too).
    let instance = created[0]["metadata"]["labels"]["app.kubernetes.io/instance"].clone();
    for s in api.applied() {
        let labels = &s["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/managed-by"], "kubectl-svclb", "{s}");
        assert_eq!(labels["app.kubernetes.io/instance"], instance, "{s}");
    }
    // Nothing left: pods and Services gone.
    assert_eq!(left(&api), Vec::<String>::new());

    // The default Service: columns for every address, the pod IPs of the tserver rows, the
    // DNS names; every cell as expected (the network answers from a1, an endpoint).
    let d = scenario(&r, "default/tcp");
    let cols: Vec<&str> = d.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        cols,
        [
            "cip",
            "np:node-1",
            "np:node-2",
            "np:node-3",
            "lb",
            "pod:svclb-tserver-a1",
            "pod:svclb-tserver-b1",
            "hairpin",
            "headless",
            "extname"
        ]
    );
    assert_eq!(wrong(d), Vec::<String>::new());
    // The client pod is no endpoint: no hairpin; the tserver pods are.
    assert_eq!(cell(d, &client_pod, "hairpin").verdict, CellVerdict::Skipped);
    assert_eq!(cell(d, "svclb-tserver-b1", "hairpin").expected, Mark::Connected);
    // Headless: resolved to both pods' IPs and answered by both.
    let h = cell(d, "node-3", "headless");
    assert_eq!(
        h.resolved,
        ["10.244.1.10".parse::<IpAddr>().unwrap(), "10.244.2.10".parse().unwrap()]
    );
    assert_eq!((h.verdict, h.answered), (CellVerdict::Correct, 2));
    // ExternalName: the scenario's clusterIP.
    let x = cell(d, "svclb-tserver-a1", "extname");
    assert_eq!(x.resolved, [d.targets[0].address.ip()]);
    assert_eq!(cell(d, "client", "extname").verdict, CellVerdict::Skipped);

    // eTP Local, expectations from the slices: node-3 has no endpoint, so from outside its
    // NodePort is dropped; the network here ignores the policy, and those cells are wrong.
    let e = scenario(&r, "etp-local/tcp");
    assert_eq!(cell(e, "client", "np:node-3").expected, Mark::Timeout);
    assert_eq!(cell(e, "node-1", "np:node-3").expected, Mark::Timeout);
    assert_eq!(cell(e, "node-3", "np:node-3").expected, Mark::Connected);
    // node-2's NodePort from outside: b1 only; the network answered from a1.
    assert_eq!(cell(e, "client", "np:node-2").allowed_nodes, ["node-2"]);
    let mut w = wrong(e);
    w.sort();
    assert_eq!(
        w,
        [
            "client -> np:node-2",
            "client -> np:node-3",
            "node-1 -> np:node-2",
            "node-1 -> np:node-3",
            "node-2 -> np:node-3",
            "node-3 -> np:node-2",
        ]
    );
    // No endpoints: refused everywhere, the alias resolves to the clusterIP and is refused too.
    let n = scenario(&r, "no-endpoints/tcp");
    assert_eq!(cell(n, "svclb-tserver-a1", "cip").observed, Mark::Refused);
    assert_eq!(cell(n, "svclb-tserver-a1", "hairpin").verdict, CellVerdict::Skipped);
    assert_eq!(cell(n, "node-2", "extname").expected, Mark::Refused);
    assert_eq!(wrong(n), Vec::<String>::new());
    // PreferSameZone from the hints the controller wrote: zone-b's rows to b1 only.
    let z = scenario(&r, "prefer-same-zone/tcp");
    let c = cell(z, "node-3", "cip");
    assert_eq!(
        (c.expected, c.allowed_nodes.as_slice()),
        (Mark::Connected, &["node-2".to_string()][..])
    );
    assert!(c.why.contains("endpoints hinted for zone zone-b"), "{}", c.why);
    assert_eq!(r.environment.proxy_mode.as_deref(), Some("nftables"));
    assert_eq!(r.notes, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_lbs_reach_or_host_network_the_run_leaves_out_what_it_cannot_measure() {
    // No LB controller, PreferSame* dropped by the API server, hostNetwork refused, and nothing
    // answers this machine on node-1's NodePort.
    let (api, backend, _) = cluster(
        41,
        Controllers {
            td: TdSupport::Drop,
            ..Controllers::default()
        },
    )
    .await;
    api.refuse_host_network();
    let (r, _) = on_cluster(
        &backend,
        &job("^(default|etp-local|prefer-same-node)/tcp$"),
        opts(),
        &Interrupt::default(),
    )
    .await
    .unwrap();
    let rows: Vec<SourceKind> = r.sources.iter().map(|s| s.kind).collect();
    assert_eq!(rows, [SourceKind::Pod; 3]);
    assert_eq!(r.notes.len(), 3, "{:?}", r.notes);
    assert!(r.notes[0].starts_with("node rows left out: the namespace refused a hostNetwork pod"));
    assert!(r.notes[0].contains("violates PodSecurity"), "{}", r.notes[0]);
    assert!(
        r.notes[1].starts_with("client row left out: this machine does not reach node-1's NodePort 127.78.41.1:30501")
    );
    assert!(
        r.notes[2].contains("got no LoadBalancer IP within 0.3s"),
        "{}",
        r.notes[2]
    );
    // The first Service asked for a LoadBalancer, then NodePort; the next ones NodePort.
    let types: Vec<(String, String)> = api
        .applied()
        .iter()
        .filter(|s| s["spec"]["type"] != "ExternalName" && s["metadata"]["name"] != "svclb-mx-headless")
        .map(|s| {
            (
                s["metadata"]["name"].as_str().unwrap().into(),
                s["spec"]["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    let t = |n: &str, t: &str| (n.to_string(), t.to_string());
    assert_eq!(
        types,
        [
            t("svclb-mx-default", "LoadBalancer"),
            t("svclb-mx-default", "NodePort"),
            t("svclb-mx-etp-local", "NodePort"),
            t("svclb-mx-prefer-same-node", "NodePort"),
        ]
    );
    for s in ["default/tcp", "etp-local/tcp"] {
        assert!(scenario(&r, s).targets.iter().all(|t| t.name != "lb"), "{s}");
    }
    let skipped = scenario(&r, "prefer-same-node/tcp").skipped.clone().unwrap();
    assert!(
        skipped.starts_with("the API server dropped spec.trafficDistribution PreferSameNode"),
        "{skipped}"
    );
    assert_eq!(left(&api), Vec::<String>::new());
    assert_eq!(api.denied(), Vec::<String>::new());

    // An API server that refuses the value outright: skipped with its message.
    let (api, backend, _) = cluster(
        42,
        Controllers {
            td: TdSupport::Refuse,
            ..lbs()
        },
    )
    .await;
    let (r, _) = on_cluster(&backend, &job("^prefer-same-zone/tcp$"), opts(), &Interrupt::default())
        .await
        .unwrap();
    let skipped = scenario(&r, "prefer-same-zone/tcp").skipped.clone().unwrap();
    assert!(skipped.contains("Unsupported value: \"PreferSameZone\""), "{skipped}");
    assert_eq!(left(&api), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn services_and_pods_go_when_the_run_fails_or_is_interrupted() {
    // An agent of the second scenario dies: the run fails, everything it made goes.
    let (api, mut backend, mut net) = cluster(43, lbs()).await;
    net.fail_in = Some("svclb-mx-etp-local");
    backend.pods = net.clone();
    backend.host = net.clone();
    let e = on_cluster(
        &backend,
        &job("^(default|etp-local)/tcp$"),
        opts(),
        &Interrupt::default(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("ended without a result: agent: killed"), "{e:#}");
    assert!(service_calls(&api).contains(&"PATCH svclb-mx-etp-local".to_string()));
    assert_eq!(left(&api), Vec::<String>::new());

    // Ctrl-C while the second scenario is measured: the first is kept, the second is marked
    // interrupted, and everything goes.
    let (api, mut backend, mut net) = cluster(44, lbs()).await;
    net.hold_in = Some("svclb-mx-etp-local");
    backend.pods = net.clone();
    backend.host = net.clone();
    let (r, left_behind) = on_cluster(
        &backend,
        &job("^(default|etp-local|itp-local)/tcp$"),
        opts(),
        &Interrupt::after(Duration::from_millis(1500)),
    )
    .await
    .unwrap();
    assert_eq!(left_behind, None);
    assert_eq!(r.stopped, Some(crate::storm::Stop::Interrupted));
    let names: Vec<&str> = r.scenarios.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["default/tcp", "etp-local/tcp"]);
    assert!(!scenario(&r, "default/tcp").cells.is_empty());
    assert!(!service_calls(&api).contains(&"PATCH svclb-mx-itp-local".to_string()));
    assert_eq!(left(&api), Vec::<String>::new());

    // Ctrl-C while the probe pods start (the kubelet never starts them): they go too.
    let (api, backend, _) = cluster(45, lbs()).await;
    api.created_pods(Pods::Pending);
    let e = on_cluster(
        &backend,
        &job("^default/tcp$"),
        opts(),
        &Interrupt::after(Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.to_string(), "interrupted while the probe pods were starting");
    assert_eq!(api.created().len(), 4);
    assert_eq!(left(&api), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_in_the_way_stops_the_run_before_it_takes_it_over() {
    let (api, backend, _) = cluster(46, lbs()).await;
    let mut theirs = fake::service("ClusterIP", "10.96.9.9", json!({}), None);
    theirs["metadata"]["name"] = json!("svclb-mx-default");
    theirs["metadata"]["labels"] = json!({"team": "payments"});
    api.put(theirs);
    let e = on_cluster(&backend, &job("^default/tcp$"), opts(), &Interrupt::default())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("a Service svclb-mx-default that kubectl-svclb did not make"),
        "{e:#}"
    );
    // Theirs is untouched (never applied over, never deleted); ours are gone.
    assert!(!service_calls(&api).contains(&"PATCH svclb-mx-default".to_string()));
    assert_eq!(left(&api), ["service/svclb-mx-default"]);
    assert_eq!(
        api.get(&format!("/api/v1/namespaces/{NS}/services/svclb-mx-default"))
            .unwrap()["metadata"]["labels"]["team"],
        "payments"
    );
}
