//! API operations against the in-memory API.

use serde_json::json;

use super::*;
use crate::cluster::fake::{self, FakeApi, NS, Pods};
use crate::cluster::manifests::{CLIENT, Options, TSERVER};

#[tokio::test]
async fn deploy_applies_server_side_and_waits_until_ready() {
    let api = FakeApi::new(Pods::Ready);
    let c = api.cluster();
    let o = Options {
        namespace: NS.into(),
        replicas: 3,
        ..Options::default()
    };
    let applied = apply(&c, &crate::cluster::manifests::render(&o).unwrap())
        .await
        .unwrap();
    assert_eq!(applied, ["deployment/svclb-tserver", "service/svclb-tserver"]);
    wait_ready(&c, TSERVER, Duration::from_secs(5), Duration::from_millis(10))
        .await
        .unwrap();
    let log = api.log();
    assert_eq!(
        log[0],
        format!("PATCH /apis/apps/v1/namespaces/{NS}/deployments/svclb-tserver?&force=true&fieldManager=kubectl-svclb")
    );
    assert_eq!(
        log[1],
        format!("PATCH /api/v1/namespaces/{NS}/services/svclb-tserver?&force=true&fieldManager=kubectl-svclb")
    );
    let d = api
        .get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/svclb-tserver"))
        .unwrap();
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/managed-by"], "kubectl-svclb");
}

#[tokio::test]
async fn image_pull_failures_come_from_pod_status_not_a_timeout() {
    let api = FakeApi::new(Pods::ImagePullBackOff);
    let c = api.cluster();
    let o = Options {
        namespace: NS.into(),
        image: "bad/image:none".into(),
        ..Options::default()
    };
    apply(&c, &crate::cluster::manifests::render(&o).unwrap())
        .await
        .unwrap();
    let e = wait_ready(&c, TSERVER, Duration::from_secs(60), Duration::from_millis(10))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("ImagePullBackOff") && e.contains("--image"), "{e}");
}

#[test]
fn unschedulable_pods_are_reported_when_it_lasts() {
    let mut p: Pod = serde_json::from_value(fake::pod("p1", TSERVER, "", "", false)).unwrap();
    p.status.as_mut().unwrap().conditions = Some(vec![
        serde_json::from_value(
            json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient cpu."}),
        )
        .unwrap(),
    ]);
    assert_eq!(pod_problem(&p, Duration::from_secs(2)), None);
    let e = pod_problem(&p, Duration::from_secs(11)).unwrap();
    assert!(
        e.contains("cannot be scheduled: 0/3 nodes are available: 3 Insufficient cpu."),
        "{e}"
    );
}

fn cluster_fixture(api: &FakeApi) {
    api.put(fake::node("node-1", "zone-a", "172.18.0.2"));
    api.put(fake::node("node-2", "zone-b", "172.18.0.3"));
    api.put(fake::pod("svclb-tserver-1", TSERVER, "node-1", "10.244.1.10", true));
    api.put(fake::pod("svclb-tserver-2", TSERVER, "node-2", "10.244.2.10", true));
    api.put(fake::pod("svclb-tserver-3", TSERVER, "node-2", "10.244.2.11", false));
    api.put(fake::service(
        "NodePort",
        "10.96.12.34",
        json!({"trafficDistribution": "PreferClose"}),
        None,
    ));
    api.put(fake::slice(&[
        ("svclb-tserver-1", "10.244.1.10", "zone-a", &["zone-a"]),
        ("svclb-tserver-2", "10.244.2.10", "zone-b", &["zone-b"]),
    ]));
    api.put(fake::kube_proxy_configmap("nftables"));
}

#[tokio::test]
async fn status_maps_pods_to_nodes_and_zones_with_hints_and_proxy_mode() {
    let api = FakeApi::new(Pods::Ready);
    cluster_fixture(&api);
    let st = status(&api.cluster(), "v1.33.1".into()).await.unwrap();
    assert_eq!(st.proxy_mode.as_deref(), Some("nftables"));
    assert_eq!(st.pods.len(), 3);
    assert_eq!(st.pods[2].zone, "zone-b");
    assert!(!st.pods[2].ready);
    assert_eq!(
        st.per_node,
        BTreeMap::from([("node-1".into(), 1), ("node-2".into(), 1)])
    );
    assert_eq!(
        st.per_zone,
        BTreeMap::from([("zone-a".into(), 1), ("zone-b".into(), 1)])
    );
    assert_eq!(st.services[0].node_port(5001, "UDP"), Some(30501));
    assert_eq!(st.services[0].traffic_distribution.as_deref(), Some("PreferClose"));
    assert_eq!(st.endpoints[1].hints, ["zone-b"]);
    let text = crate::commands::cluster::render_status(&st);
    assert!(text.contains("kube-proxy mode nftables"), "{text}");
    assert!(text.contains("per zone: zone-a=1 zone-b=1"), "{text}");
    assert!(text.contains("5001/TCP:30501"), "{text}");
}

/// A dual-stack Service: each family's clusterIP and LB ingress IP, both slices, both pod IPs.
#[tokio::test]
async fn status_shows_each_familys_addresses() {
    let api = FakeApi::new(Pods::Ready);
    cluster_fixture(&api);
    let mut p = fake::pod("svclb-tserver-1", TSERVER, "node-1", "10.244.1.10", true);
    p["status"]["podIPs"] = json!([{"ip": "10.244.1.10"}, {"ip": "fd00:10:244:1::a"}]);
    api.put(p);
    let mut svc = fake::service(
        "LoadBalancer",
        "10.96.12.34",
        json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"],
               "clusterIPs": ["10.96.12.34", "fd00:10:96::1234"]}),
        Some("172.18.255.200"),
    );
    let mut s6 = fake::slice(&[("svclb-tserver-1", "fd00:10:244:1::a", "zone-a", &[])]);
    s6["metadata"]["name"] = json!("svclb-tserver-v6xyz");
    s6["addressType"] = json!("IPv6");
    api.put(s6);
    api.put(svc.clone());
    let st = status(&api.cluster(), "v1.33.1".into()).await.unwrap();
    let s = &st.services[0];
    assert_eq!(s.families(), [IpFamily::Ipv4, IpFamily::Ipv6]);
    assert_eq!(s.cluster_ip(IpFamily::Ipv6), Some("fd00:10:96::1234".parse().unwrap()));
    assert_eq!(st.pods[0].ips, ["10.244.1.10", "fd00:10:244:1::a"]);
    assert_eq!(st.pods[1].ips, ["10.244.2.10"]);
    assert_eq!(
        st.endpoints.iter().filter(|e| e.is(IpFamily::Ipv6)).count(),
        1,
        "{:?}",
        st.endpoints
    );
    let text = crate::commands::cluster::render_status(&st);
    assert!(
        text.contains(
            "service svclb-tserver (LoadBalancer, PreferDualStack IPv4,IPv6): \
             clusterIP IPv4 10.96.12.34, IPv6 fd00:10:96::1234 ports"
        ),
        "{text}"
    );
    // The IPv6 ingress IP is not there yet.
    assert!(text.contains(" LB IPv4 172.18.255.200, IPv6 pending\n"), "{text}");
    assert!(text.contains("10.244.1.10,fd00:10:244:1::a"), "{text}");
    assert!(text.contains("fd00:10:244:1::a"), "{text}");
    svc["status"]["loadBalancer"]["ingress"] =
        json!([{"ip": "172.18.255.200"}, {"ip": "fc00::c8"}, {"hostname": "lb.example"}]);
    api.put(svc);
    let st = status(&api.cluster(), "v1.33.1".into()).await.unwrap();
    let text = crate::commands::cluster::render_status(&st);
    assert!(
        text.contains(" LB IPv4 172.18.255.200, IPv6 fc00::c8, lb.example\n"),
        "{text}"
    );
}

#[tokio::test]
async fn proxy_mode_defaults_to_iptables_and_is_unknown_when_hidden() {
    let api = FakeApi::new(Pods::Ready);
    let c = api.cluster();
    assert_eq!(proxy_mode(&c).await, None);
    api.put(fake::kube_proxy_configmap("\"\""));
    assert_eq!(proxy_mode(&c).await.as_deref(), Some("iptables"));
}

#[tokio::test]
async fn cleanup_deletes_exactly_what_the_plugin_made() {
    let api = FakeApi::new(Pods::Ready);
    let c = api.cluster();
    apply(
        &c,
        &crate::cluster::manifests::render(&Options {
            namespace: NS.into(),
            affinity_server: true,
            ..Options::default()
        })
        .unwrap(),
    )
    .await
    .unwrap();
    // Someone else's Service and pod in the same namespace stay; a tserver pod goes with its
    // Deployment, not by itself; a client pod a killed `zones` run left goes.
    let mut other = fake::service("ClusterIP", "10.96.0.99", json!({}), None);
    other["metadata"]["name"] = json!("theirs");
    other["metadata"]["labels"] = json!({"app": "theirs"});
    api.put(other);
    api.put(fake::pod("theirs-1", "theirs", "node-1", "10.244.1.50", true));
    api.put(fake::pod(
        "svclb-tserver-7d9f-0",
        TSERVER,
        "node-1",
        "10.244.1.10",
        true,
    ));
    api.put(fake::pod(
        "svclb-client-0badcafe-0",
        CLIENT,
        "node-1",
        "10.244.1.20",
        true,
    ));
    let deleted = cleanup(&c).await.unwrap();
    assert_eq!(
        deleted,
        [
            "deployment/svclb-affinity",
            "deployment/svclb-tserver",
            "service/svclb-affinity",
            "service/svclb-tserver",
            "pod/svclb-client-0badcafe-0"
        ]
    );
    assert!(api.get(&format!("/api/v1/namespaces/{NS}/services/theirs")).is_some());
    for pod in ["theirs-1", "svclb-tserver-7d9f-0"] {
        assert!(
            api.get(&format!("/api/v1/namespaces/{NS}/pods/{pod}")).is_some(),
            "{pod}"
        );
    }
    assert!(
        api.log()
            .iter()
            .any(|l| l.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dkubectl-svclb"))
    );
}

#[tokio::test]
async fn the_rendered_rbac_allows_every_call_of_deploy_status_and_cleanup() {
    // The Role of `manifests --rbac`, enforced: deploy (server-side apply creating both
    // Deployments and Services, then patching them again), readiness, status, cleanup.
    let api = FakeApi::new(Pods::Ready);
    api.put(fake::node("node-1", "zone-a", "172.18.0.2"));
    api.put(fake::kube_proxy_configmap("nftables"));
    api.enforce_rbac(crate::cluster::manifests::render_rbac(NS).unwrap());
    let c = api.cluster();
    let objs = crate::cluster::manifests::render(&Options {
        namespace: NS.into(),
        affinity_server: true,
        ..Options::default()
    })
    .unwrap();
    for _ in 0..2 {
        apply(&c, &objs).await.unwrap();
    }
    wait_ready(&c, TSERVER, Duration::from_secs(5), Duration::from_millis(10))
        .await
        .unwrap();
    let st = status(&c, "v1.33.1".into()).await.unwrap();
    assert_eq!(st.proxy_mode.as_deref(), Some("nftables"));
    assert!(deployment_exists(&c, TSERVER).await.unwrap());
    assert_eq!(cleanup(&c).await.unwrap().len(), 4);
    assert_eq!(api.denied(), Vec::<String>::new());
    // And what it refuses: someone else's Deployment, by name.
    let mut theirs = api
        .get(&format!("/apis/apps/v1/namespaces/{NS}/deployments/svclb-tserver"))
        .unwrap_or_else(|| json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"namespace": NS}}));
    theirs["metadata"]["name"] = json!("theirs");
    theirs["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "kubectl-svclb"});
    api.put(theirs);
    let e = cleanup(&c).await.unwrap_err().to_string();
    assert!(e.contains("forbidden: you may not delete deployments"), "{e}");
    assert_eq!(api.denied(), [format!("delete deployments/theirs in {NS}")]);
}

#[tokio::test]
async fn rbac_refusals_name_the_verb_and_resource() {
    let api = FakeApi::new(Pods::Ready);
    cluster_fixture(&api);
    api.forbid("GET", "/pods", "bob");
    let e = status(&api.cluster(), "v1".into()).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("forbidden: you may not list pods in namespace {NS}")) && e.contains("--rbac"),
        "{e}"
    );
}

#[tokio::test]
async fn kube_and_reqwest_share_one_crypto_provider() {
    crate::cluster::install_crypto_provider();
    let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
    let _kube = kube::Client::try_from(config).unwrap();
    let _http = reqwest::Client::builder().build().unwrap();
}
