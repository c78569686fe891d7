//! The cluster backend's plans against the in-memory API, and the exec runner over a websocket.

use serde_json::json;

use super::*;
use crate::cluster::fake::{self, FakeApi, Pods};

/// Plans without running agents: runners that are never called.
struct Never;
impl AgentRunner for Never {
    fn stream(&self, _: &Source, _: Vec<String>) -> Result<Stream> {
        unreachable!("plans only")
    }
}

/// The backend over what `api` holds, on the Service's IPv4 family, for plans only.
async fn planner(api: &FakeApi) -> KubeBackend<Never, Never> {
    let view = ClusterView::load(&api.cluster(), "v1.33.1".into(), TSERVER, TSERVER)
        .await
        .unwrap();
    KubeBackend {
        view,
        cluster: api.cluster(),
        pods: Never,
        host: Never,
        family: IpFamily::Ipv4,
    }
}

async fn target(spec: serde_json::Value, slices: &[(&str, &str, &str, &[&str])]) -> KubeBackend<Never, Never> {
    let api = FakeApi::new(Pods::Ready);
    api.put(fake::node("node-1", "zone-a", "172.18.0.2"));
    api.put(fake::node("node-2", "zone-b", "172.18.0.3"));
    api.put(fake::pod("svclb-tserver-a1", TSERVER, "node-1", "10.244.1.10", true));
    api.put(fake::pod("svclb-tserver-a2", TSERVER, "node-1", "10.244.1.11", true));
    api.put(fake::pod("svclb-tserver-b1", TSERVER, "node-2", "10.244.2.10", true));
    api.put(fake::pod("svclb-tserver-b2", TSERVER, "node-2", "10.244.2.11", false));
    api.put(fake::service(
        "LoadBalancer",
        "10.96.12.34",
        spec,
        Some("172.18.255.200"),
    ));
    api.put(fake::slice(slices));
    planner(&api).await
}

fn names(eps: &[Endpoint]) -> Vec<&str> {
    eps.iter().map(|e| e.name.as_str()).collect()
}

const NO_HINTS: &[(&str, &str, &str, &[&str])] = &[
    ("svclb-tserver-a1", "10.244.1.10", "zone-a", &[]),
    ("svclb-tserver-a2", "10.244.1.11", "zone-a", &[]),
    ("svclb-tserver-b1", "10.244.2.10", "zone-b", &[]),
];

#[tokio::test]
async fn backends_map_pod_to_node_to_zone() {
    let t = target(json!({}), NO_HINTS).await;
    let eps = t.endpoints().unwrap();
    assert_eq!(
        names(&eps),
        ["svclb-tserver-a1", "svclb-tserver-a2", "svclb-tserver-b1"]
    );
    assert_eq!((eps[2].node.as_str(), eps[2].zone.as_str()), ("node-2", "zone-b"));
    assert_eq!(t.meta().context.as_deref(), Some("kind-test"));
}

#[tokio::test]
async fn cluster_ip_per_node_sources_and_expected_backends() {
    let t = target(json!({}), NO_HINTS).await;
    let from = From::Pods {
        pod: None,
        per_node: true,
    };
    let plan = t.plan(&from, &Path::ClusterIp, Proto::Tcp).unwrap();
    assert_eq!(plan.address, "10.96.12.34:5001".parse().unwrap());
    let sources: Vec<(&str, &str)> = plan
        .sources
        .iter()
        .map(|s| (s.name.as_str(), s.zone.as_str()))
        .collect();
    assert_eq!(
        sources,
        [("svclb-tserver-a1", "zone-a"), ("svclb-tserver-b1", "zone-b")]
    );
    assert_eq!(plan.expected.len(), 3);
    let e = t
        .plan(
            &From::Pods {
                pod: Some("svclb-tserver-b2".into()),
                per_node: false,
            },
            &Path::ClusterIp,
            Proto::Tcp,
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no ready svclb-tserver pod named svclb-tserver-b2"),
        "{e}"
    );
}

#[tokio::test]
async fn internal_traffic_policy_local_and_zone_hints_narrow_the_backends() {
    let one = From::Pods {
        pod: Some("svclb-tserver-b1".into()),
        per_node: false,
    };
    let t = target(json!({"internalTrafficPolicy": "Local"}), NO_HINTS).await;
    let plan = t.plan(&one, &Path::ClusterIp, Proto::Tcp).unwrap();
    assert_eq!(names(&plan.expected), ["svclb-tserver-b1"]);
    let hinted: &[(&str, &str, &str, &[&str])] = &[
        ("svclb-tserver-a1", "10.244.1.10", "zone-a", &["zone-a"]),
        ("svclb-tserver-a2", "10.244.1.11", "zone-a", &["zone-a"]),
        ("svclb-tserver-b1", "10.244.2.10", "zone-b", &["zone-b"]),
    ];
    let t = target(json!({"trafficDistribution": "PreferClose"}), hinted).await;
    let plan = t
        .plan(
            &From::Pods {
                pod: Some("svclb-tserver-a2".into()),
                per_node: false,
            },
            &Path::ClusterIp,
            Proto::Tcp,
        )
        .unwrap();
    assert_eq!(names(&plan.expected), ["svclb-tserver-a1", "svclb-tserver-a2"]);
}

#[tokio::test]
async fn host_paths_node_port_with_local_policy_and_lb() {
    let t = target(json!({"externalTrafficPolicy": "Local"}), NO_HINTS).await;
    let plan = t
        .plan(&From::Host, &Path::NodePort(Some("node-2".into())), Proto::Udp)
        .unwrap();
    assert_eq!(plan.address, "172.18.0.3:30501".parse().unwrap());
    assert_eq!(names(&plan.expected), ["svclb-tserver-b1"]);
    assert_eq!(plan.sources[0].name, "this-host");
    assert_eq!(
        t.http_address(&Path::NodePort(None)).unwrap(),
        "172.18.0.2:30880".parse().unwrap()
    );
    let plan = t.plan(&From::Host, &Path::LoadBalancer, Proto::Tcp).unwrap();
    assert_eq!(plan.address, "172.18.255.200:5001".parse().unwrap());
    assert_eq!(plan.expected.len(), 3);
    let e = t.plan(&From::Host, &Path::ClusterIp, Proto::Tcp).unwrap_err();
    assert!(e.to_string().contains("not reachable from outside"), "{e}");
    let e = t
        .plan(&From::Host, &Path::NodePort(Some("node-9".into())), Proto::Tcp)
        .unwrap_err();
    assert_eq!(e.to_string(), "no node named node-9; nodes: node-1, node-2");
}

#[tokio::test]
async fn lb_needs_a_load_balancer_service() {
    let t = target(json!({"type": "NodePort"}), NO_HINTS).await;
    let e = t.plan(&From::Host, &Path::LoadBalancer, Proto::Tcp).unwrap_err();
    assert!(e.to_string().contains("--service-type LoadBalancer"), "{e}");
}

/// The exec path for real: a websocket exec session (kube's client against a loopback server
/// speaking v4.channel.k8s.io) runs the affinity agent, whose JSON lines arrive while it runs;
/// `stop` goes in over the stdin channel and the agent's summary still comes out.
#[tokio::test]
async fn pod_exec_streams_over_a_websocket_and_stops_through_stdin() {
    use tokio::io::AsyncBufReadExt;

    let server = crate::testing::serve("127.78.5.10:5001", None, "svclb-affinity-1");
    let exec = PodExec {
        cluster: fake::exec_server(crate::testing::binary()).await,
        container: "tserver".into(),
    };
    let pod = Source {
        name: "svclb-tserver-1".into(),
        node: "node-1".into(),
        zone: "zone-a".into(),
    };
    let request = Request::Sessions(agent::SessionsRequest {
        config: crate::affinity::Config {
            address: "127.78.5.10:5001".parse().unwrap(),
            proto: Proto::Udp,
            sessions: 5,
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            new_connection_per_message: false,
            plain_udp: false,
            prefix: "exec".into(),
        },
        duration: Duration::from_secs(60),
        stats_interval: Duration::from_millis(200),
    });
    let mut command = vec![IMAGE_BINARY.to_string()];
    command.extend(agent::argv(&request));
    let stream = exec.stream(&pod, command).unwrap();
    let mut lines = tokio::io::BufReader::new(stream.stdout).lines();
    let first = lines.next_line().await.unwrap().expect("a line while the agent runs");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["event"], "stats", "{first}");
    (stream.interrupt)();
    let mut last = String::new();
    while let Some(l) = lines.next_line().await.unwrap() {
        last = l;
    }
    let done: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(done["event"], "done", "{done}");
    let t = &done["totals"];
    assert!(t["sent"].as_u64().unwrap() >= 5, "{t}");
    assert_eq!(t["sent"], t["answered"], "{t}");
    assert_eq!(stream.ended.await, "");
    server.abort();

    // A refused exec ends the stream with the API's reason, in one line.
    let stream = exec
        .stream(
            &Source {
                name: "forbidden-1".into(),
                ..pod
            },
            vec![IMAGE_BINARY.into(), "agent".into()],
        )
        .unwrap();
    let agent_output = stream.ended.await;
    assert!(
        agent_output.starts_with("cannot exec into pod forbidden-1:") && agent_output.contains("pods/exec"),
        "{agent_output}"
    );
}

/// Agents run in the tserver container of the servers, and in the `client` container of a run's
/// client pods (zones', matrix' pod and host-network ones), whichever the run execs into.
#[tokio::test]
async fn exec_picks_the_container_by_the_pod() {
    let exec = PodExec {
        cluster: FakeApi::new(Pods::Ready).cluster(),
        container: "tserver".into(),
    };
    assert_eq!(exec.container_of("svclb-tserver-7d9f-0"), "tserver");
    assert_eq!(exec.container_of("svclb-client-0badcafe-3"), "client");
    // Only the run's naming counts, not a look-alike.
    assert_eq!(exec.container_of("svclb-clientele-1"), "tserver");
}

/// A dual-stack cluster: nodes with an InternalIP per family, pods with `podIPs`, the tserver
/// Service with a clusterIP and an LB ingress IP per family, and an EndpointSlice per family.
async fn dual_stack(ip_families: serde_json::Value) -> KubeBackend<Never, Never> {
    let api = FakeApi::new(Pods::Ready);
    for (name, zone, v4, v6) in [
        ("node-1", "zone-a", "172.18.0.2", "fc00:f853:ccd:e793::2"),
        ("node-2", "zone-b", "172.18.0.3", "fc00:f853:ccd:e793::3"),
    ] {
        let mut n = fake::node(name, zone, v4);
        n["status"]["addresses"] = json!([
            {"type": "InternalIP", "address": v4},
            {"type": "InternalIP", "address": v6},
            {"type": "Hostname", "address": name}]);
        api.put(n);
    }
    let pods = [
        ("svclb-tserver-a1", "node-1", "10.244.1.10", "fd00:10:244:1::a"),
        ("svclb-tserver-b1", "node-2", "10.244.2.10", "fd00:10:244:2::a"),
    ];
    for (name, node, v4, v6) in pods {
        let mut p = fake::pod(name, TSERVER, node, v4, true);
        p["status"]["podIPs"] = json!([{"ip": v4}, {"ip": v6}]);
        api.put(p);
    }
    let mut svc = fake::service(
        "LoadBalancer",
        "10.96.12.34",
        json!({"externalTrafficPolicy": "Local", "ipFamilyPolicy": "PreferDualStack", "ipFamilies": ip_families}),
        Some("172.18.255.200"),
    );
    let families: Vec<&str> = ip_families
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    if families.contains(&"IPv6") {
        svc["spec"]["clusterIPs"] = json!(["10.96.12.34", "fd00:10:96::1234"]);
        svc["status"]["loadBalancer"]["ingress"] =
            json!([{"ip": "172.18.255.200", "ipMode": "VIP"}, {"ip": "fc00:f853:ccd:e793::c8", "ipMode": "VIP"}]);
    }
    api.put(svc);
    let v4: Vec<(&str, &str, &str, &[&str])> = pods.iter().map(|(p, _, ip, _)| (*p, *ip, "", &[][..])).collect();
    api.put(fake::slice(&v4));
    if families.contains(&"IPv6") {
        // The IPv6 slice has only a1 ready: which slice a plan reads shows.
        let mut s6 = fake::slice(&[("svclb-tserver-a1", "fd00:10:244:1::a", "", &[])]);
        s6["metadata"]["name"] = json!("svclb-tserver-v6xyz");
        s6["addressType"] = json!("IPv6");
        api.put(s6);
    }
    planner(&api).await
}

#[tokio::test]
async fn a_dual_stack_service_is_measured_over_the_family_asked_for() {
    let mut t = dual_stack(json!(["IPv4", "IPv6"])).await;
    let pod = From::Pods {
        pod: Some("svclb-tserver-b1".into()),
        per_node: false,
    };
    // IPv4 first: the IPv4 addresses and slice (both pods).
    let plan = t.plan(&pod, &Path::ClusterIp, Proto::Tcp).unwrap();
    assert_eq!(plan.address, "10.96.12.34:5001".parse().unwrap());
    assert_eq!(names(&plan.expected), ["svclb-tserver-a1", "svclb-tserver-b1"]);
    assert_eq!(plan.expected[1].ip, "10.244.2.10".parse::<IpAddr>().unwrap());

    t.set_family(IpFamily::Ipv6).unwrap();
    let plan = t.plan(&pod, &Path::ClusterIp, Proto::Tcp).unwrap();
    assert_eq!(plan.address, "[fd00:10:96::1234]:5001".parse().unwrap());
    assert_eq!(plan.http, Some("[fd00:10:96::1234]:8080".parse().unwrap()));
    // The IPv6 slice's endpoints, at their IPv6 pod IPs.
    assert_eq!(names(&plan.expected), ["svclb-tserver-a1"]);
    assert_eq!(plan.expected[0].ip, "fd00:10:244:1::a".parse::<IpAddr>().unwrap());
    let plan = t
        .plan(&From::Host, &Path::NodePort(Some("node-1".into())), Proto::Udp)
        .unwrap();
    assert_eq!(plan.address, "[fc00:f853:ccd:e793::2]:30501".parse().unwrap());
    assert_eq!(names(&plan.expected), ["svclb-tserver-a1"]);
    // eTP Local on node-2: its pod is not in the IPv6 slice.
    let plan = t
        .plan(&From::Host, &Path::NodePort(Some("node-2".into())), Proto::Tcp)
        .unwrap();
    assert!(plan.expected.is_empty(), "{:?}", plan.expected);
    let plan = t.plan(&From::Host, &Path::LoadBalancer, Proto::Tcp).unwrap();
    assert_eq!(plan.address, "[fc00:f853:ccd:e793::c8]:5001".parse().unwrap());
    let ips: Vec<IpAddr> = t.endpoints().unwrap().iter().map(|e| e.ip).collect();
    assert_eq!(
        ips,
        [
            "fd00:10:244:1::a".parse::<IpAddr>().unwrap(),
            "fd00:10:244:2::a".parse().unwrap()
        ]
    );
    assert_eq!(
        t.pool().await.unwrap().into_iter().collect::<Vec<_>>(),
        ["svclb-tserver-a1"]
    );
    assert_eq!(t.service_view().await.unwrap().eps.len(), 1);
}

#[tokio::test]
async fn a_single_stack_service_refuses_the_other_family_in_one_line() {
    let mut t = dual_stack(json!(["IPv4"])).await;
    let e = t.set_family(IpFamily::Ipv6).unwrap_err().to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(
        e.contains("has no IPv6 clusterIP (ipFamilies IPv4)")
            && e.contains("--ip-family-policy PreferDualStack --ip-families IPv4,IPv6"),
        "{e}"
    );
    assert_eq!(t.family, IpFamily::Ipv4);
    t.set_family(IpFamily::Ipv4).unwrap();
    let plan = t.plan(&From::Host, &Path::LoadBalancer, Proto::Tcp).unwrap();
    assert_eq!(plan.address, "172.18.255.200:5001".parse().unwrap());
}

/// What `deploy --ip-family-policy ... --ip-families ...` renders, applied to an API server that
/// allocates a clusterIP, an LB IP and an EndpointSlice per family: the backend measures over
/// either family, starting from the primary one; deployed single-stack, it refuses the other.
#[tokio::test]
async fn deployed_dual_stack_is_measured_over_both_families() {
    use crate::cluster::manifests::{Options, render};
    use crate::service::{IpFamilyPolicy, ServiceType};

    for (policy, families, has_v4) in [
        (
            IpFamilyPolicy::PreferDualStack,
            vec![IpFamily::Ipv6, IpFamily::Ipv4],
            true,
        ),
        (IpFamilyPolicy::SingleStack, vec![IpFamily::Ipv6], false),
    ] {
        let api = FakeApi::new(Pods::Ready);
        api.run_controllers(fake::Controllers {
            lb_ips: true,
            ..Default::default()
        });
        let mut n = fake::node("node-1", "zone-a", "172.18.0.2");
        n["status"]["addresses"] = json!([
            {"type": "InternalIP", "address": "172.18.0.2"},
            {"type": "InternalIP", "address": "fc00:f853:ccd:e793::2"}]);
        api.put(n);
        let mut p = fake::pod("svclb-tserver-a1", TSERVER, "node-1", "fd00:10:244:1::a", true);
        p["status"]["podIPs"] = json!([{"ip": "fd00:10:244:1::a"}, {"ip": "10.244.1.10"}]);
        api.put(p);
        let objs = render(&Options {
            namespace: fake::NS.into(),
            service_type: ServiceType::LoadBalancer,
            ip_family_policy: Some(policy),
            ip_families: families,
            ..Options::default()
        })
        .unwrap();
        let services: Vec<serde_json::Value> = objs.into_iter().filter(|o| o["kind"] == "Service").collect();
        ops::apply(&api.cluster(), &services).await.unwrap();
        let view = ClusterView::load(&api.cluster(), "v1.33.1".into(), TSERVER, TSERVER)
            .await
            .unwrap();
        let primary = view.service.families()[0];
        assert_eq!(primary, IpFamily::Ipv6);
        let mut t = KubeBackend {
            view,
            cluster: api.cluster(),
            pods: Never,
            host: Never,
            family: primary,
        };
        let from = From::Pods {
            pod: None,
            per_node: false,
        };
        let plan = t.plan(&from, &Path::ClusterIp, Proto::Tcp).unwrap();
        assert!(plan.address.is_ipv6(), "{}", plan.address);
        assert_eq!(t.service_view().await.unwrap().eps.len(), 1);
        let lb = t.plan(&From::Host, &Path::LoadBalancer, Proto::Tcp).unwrap();
        assert!(
            lb.address.is_ipv6() && lb.address.to_string().starts_with('['),
            "{}",
            lb.address
        );
        let v4 = t.set_family(IpFamily::Ipv4);
        assert_eq!(v4.is_ok(), has_v4, "{v4:?}");
        if has_v4 {
            let plan = t.plan(&from, &Path::ClusterIp, Proto::Tcp).unwrap();
            assert!(plan.address.is_ipv4(), "{}", plan.address);
            assert_eq!(plan.expected[0].ip, "10.244.1.10".parse::<IpAddr>().unwrap());
            let slices = ops::endpoint_slices(&api.cluster(), TSERVER).await.unwrap();
            let types: BTreeSet<&str> = slices.iter().map(|e| e.address_type.as_str()).collect();
            assert_eq!(types, BTreeSet::from(["IPv4", "IPv6"]));
        } else {
            let e = v4.unwrap_err().to_string();
            assert!(e.contains("--ip-families IPv6,IPv4"), "{e}");
        }
    }
}
