//! Client pods: which nodes get one, what is created, waited for and deleted, against the
//! in-memory API.

use super::*;
use crate::cluster::fake::{self, FakeApi, NS, Pods, START_READS};

fn node(name: &str, zone: &str, ready: bool) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        zone: zone.into(),
        ready,
        ..NodeInfo::default()
    }
}

fn names(nodes: &[NodeInfo]) -> Vec<&str> {
    nodes.iter().map(|n| n.name.as_str()).collect()
}

#[test]
fn one_ready_node_per_zone_or_every_ready_node() {
    let nodes = [
        node("n3", "zone-b", true),
        node("n1", "zone-a", false),
        node("n2", "zone-a", true),
        node("n4", "zone-b", true),
        node("n5", "", true),
        node("n6", "", true),
        node("n7", "zone-c", false),
    ];
    // n1 is not ready: zone-a's client goes to n2; zone-c has no ready node, so no client; the
    // unlabelled nodes are one zone of their own (kube-proxy uses all endpoints there).
    assert_eq!(names(&pick_nodes(&nodes, true)), ["n2", "n3", "n5"]);
    assert_eq!(names(&pick_nodes(&nodes, false)), ["n2", "n3", "n4", "n5", "n6"]);
    assert!(pick_nodes(&[node("n1", "zone-a", false)], true).is_empty());
}

#[test]
fn a_client_pod_is_pinned_labelled_restricted_and_holds() {
    let p = pod("0badcafe", 2, "node-7", "registry.example/svclb:dev", "team-a", &hold());
    assert_eq!(p["metadata"]["name"], "svclb-client-0badcafe-2");
    assert_eq!(p["metadata"]["namespace"], "team-a");
    let labels = &p["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/name"], CLIENT);
    assert_eq!(labels["app.kubernetes.io/instance"], "0badcafe");
    assert_eq!(labels[MANAGED_BY.0], MANAGED_BY.1);
    let spec = &p["spec"];
    assert_eq!(spec["nodeName"], "node-7");
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = &spec["containers"][0];
    assert_eq!(
        (c["name"].as_str(), c["image"].as_str()),
        (Some(CONTAINER), Some("registry.example/svclb:dev"))
    );
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    // The image's entrypoint is the binary: `agent --request {"job":"hold"}`.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["agent", "--request"]);
    assert!(matches!(
        crate::agent::parse(args[2]).unwrap(),
        crate::agent::Request::Hold
    ));
    // It is a valid Pod for the API types.
    serde_json::from_value::<Pod>(p).unwrap();
}

#[test]
fn progress_reads_the_pod_status() {
    let with = |status: Value| -> Pod {
        let mut p = fake::pod("svclb-client-x-0", CLIENT, "node-1", "10.244.1.9", true);
        p["status"] = status;
        serde_json::from_value(p).unwrap()
    };
    let running: Pod = serde_json::from_value(fake::pod("c", CLIENT, "node-1", "10.244.1.9", true)).unwrap();
    assert_eq!(progress(&running), Progress::Running);
    assert_eq!(progress(&with(json!({"phase": "Pending"}))), Progress::Starting);
    let pull = with(
        json!({"phase": "Pending", "containerStatuses": [{"name": "client", "ready": false,
        "restartCount": 0, "image": "x", "imageID": "",
        "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}),
    );
    let Progress::Failed(why) = progress(&pull) else {
        panic!("not failed")
    };
    assert!(
        why.contains("ErrImagePull: not found") && why.contains("--image"),
        "{why}"
    );
    let ended = with(json!({"phase": "Failed", "message": "Pod was rejected: OutOfcpu"}));
    assert_eq!(
        progress(&ended),
        Progress::Failed(
            "client pod svclb-client-x-0 ended (Failed) before the run: Pod was rejected: OutOfcpu".into()
        )
    );
}

fn nodes() -> Vec<NodeInfo> {
    vec![node("node-1", "zone-a", true), node("node-2", "zone-b", true)]
}

/// The created client pods still in the API.
fn client_pods_in(api: &FakeApi) -> Vec<String> {
    api.created()
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .filter(|n| api.get(&format!("/api/v1/namespaces/{NS}/pods/{n}")).is_some())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn pods_are_created_waited_for_until_running_and_deleted() {
    let api = FakeApi::new(Pods::Ready);
    let c = api.cluster();
    let mut pods = ClientPods::new(&c, hold());
    let started = pods
        .start(&nodes(), "img:1", Duration::from_secs(5), Duration::from_millis(5))
        .await
        .unwrap();
    let placed: Vec<(&str, &str, bool)> = started
        .iter()
        .map(|p| (p.node.as_str(), p.zone.as_str(), p.ready))
        .collect();
    assert_eq!(placed, [("node-1", "zone-a", true), ("node-2", "zone-b", true)]);
    assert_eq!(pods.names, [pod_name(&pods.run, 0), pod_name(&pods.run, 1)]);
    // Two creates, then lists until the kubelet started them (they were Pending first).
    let log = api.log();
    assert!(
        log[..2]
            .iter()
            .all(|l| l.starts_with(&format!("POST /api/v1/namespaces/{NS}/pods?"))),
        "{log:?}"
    );
    let waits = log.iter().filter(|l| l.contains("instance%3D")).count();
    assert!(waits >= START_READS as usize, "{log:?}");
    assert_eq!(client_pods_in(&api).len(), 2);
    pods.delete().await;
    assert!(client_pods_in(&api).is_empty());
    // Deleting again: already gone is fine.
    pods.delete().await;
}

#[tokio::test]
async fn the_rendered_rbac_allows_the_client_pods_lifecycle() {
    let api = FakeApi::new(Pods::Ready);
    api.enforce_rbac(crate::cluster::manifests::render_rbac(NS).unwrap());
    let mut pods = ClientPods::new(&api.cluster(), hold());
    pods.start(&nodes(), "img:1", Duration::from_secs(5), Duration::from_millis(5))
        .await
        .unwrap();
    pods.delete().await;
    assert!(client_pods_in(&api).is_empty());
    assert_eq!(api.denied(), Vec::<String>::new());
}

#[tokio::test]
async fn a_pod_that_cannot_pull_fails_the_start_and_is_still_deleted() {
    let api = FakeApi::new(Pods::Ready);
    api.created_pods(Pods::ImagePullBackOff);
    let mut pods = ClientPods::new(&api.cluster(), hold());
    let e = pods
        .start(
            &nodes(),
            "bad/image:none",
            Duration::from_secs(5),
            Duration::from_millis(5),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("ImagePullBackOff") && e.contains("bad/image:none"), "{e}");
    assert_eq!(pods.names.len(), 2);
    pods.delete().await;
    assert!(client_pods_in(&api).is_empty());
}

#[tokio::test]
async fn a_refused_create_names_the_rbac_rule() {
    let api = FakeApi::new(Pods::Ready);
    api.forbid("POST", "/pods", "dev");
    let mut pods = ClientPods::new(&api.cluster(), hold());
    let e = pods
        .start(&nodes(), "img:1", Duration::from_secs(5), Duration::from_millis(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("forbidden: you may not create pods in namespace {NS}")) && e.contains("--rbac"),
        "{e}"
    );
    pods.delete().await;
    assert!(client_pods_in(&api).is_empty());
}

#[tokio::test]
async fn pods_that_never_run_time_out_with_how_to_look() {
    let api = FakeApi::new(Pods::Ready);
    api.created_pods(Pods::Pending);
    let mut pods = ClientPods::new(&api.cluster(), hold());
    let e = pods
        .start(&nodes(), "img:1", Duration::from_millis(50), Duration::from_millis(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("0 of 2 client pods running after 0s")
            && e.contains(&format!("app.kubernetes.io/instance={}", pods.run)),
        "{e}"
    );
    pods.delete().await;
}

fn hold() -> Vec<String> {
    crate::agent::argv(&crate::agent::Request::Hold)
}
