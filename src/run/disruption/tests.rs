//! The cluster flows against the in-memory API with its live Deployment controller: the
//! patches, deletions and evictions sent, the waiting until the rollout is complete and the
//! EndpointSlice stable, the endpoint events from the watch, the restore, an interrupt and an
//! action the API refuses. The traffic is real (the binary as local agents) against one loopback
//! server standing in for the clusterIP.

use serde_json::{Value, json};

use super::*;
use crate::backend::kube::LocalRun;
use crate::cluster::fake::{self, FakeApi, Pods};
use crate::stats::Verdict;
use crate::testing::{local_target, serve};

fn deployment(replicas: u64) -> Value {
    let labels = json!({"app.kubernetes.io/name": TSERVER, "app.kubernetes.io/managed-by": "kubectl-svclb"});
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": TSERVER, "namespace": fake::NS, "generation": 1, "labels": labels},
        "spec": {"replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": TSERVER}},
            "template": {"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "tserver", "image": "registry.example/svclb:dev"}]}}}
    })
}

/// Two nodes, the tserver Deployment with `replicas` pods made and ready by the live
/// controller, its Service on `cluster_ip`.
async fn cluster(replicas: u64, cluster_ip: &str) -> (FakeApi, KubeBackend<LocalRun, LocalRun>) {
    let api = FakeApi::new(Pods::Ready);
    api.put(fake::node("node-1", "zone-a", "127.78.0.1"));
    api.put(fake::node("node-2", "zone-b", "127.78.0.2"));
    api.put(deployment(replicas));
    api.put(fake::service("ClusterIP", cluster_ip, json!({}), None));
    api.rollouts(false);
    api.step(6 + 2 * replicas as u32);
    let backend = local_target(&api, TSERVER).await;
    (api, backend)
}

fn job(action: Action) -> DisruptionJob {
    DisruptionJob {
        action,
        rate: 50.0,
        long_lived: 2,
        udp_sessions: 2,
        per_node: true,
        timeout: Duration::from_secs(1),
        warmup: Duration::from_millis(300),
        settle: Duration::from_millis(300),
        duration: Duration::from_secs(30),
        grace_period: None,
        drain_delay: None,
        ready_delay: None,
        poll: Duration::from_millis(20),
        save: SaveTo {
            tag: None,
            dir: "saves".into(),
            no_save: true,
        },
        live: false,
    }
}

/// Bodies of the requests whose `METHOD path` starts with `prefix`.
fn sent(api: &FakeApi, prefix: &str) -> Vec<Value> {
    api.bodies()
        .into_iter()
        .filter(|(m, _)| m.starts_with(prefix))
        .map(|(_, b)| b)
        .collect()
}

fn deployment_path() -> String {
    format!("PATCH /apis/apps/v1/namespaces/{}/deployments/{TSERVER}", fake::NS)
}

/// The steps of `pod` in the record, in order.
fn steps(r: &DisruptionRun, pod: &str) -> Vec<Step> {
    r.events.iter().filter(|e| e.pod == pod).map(|e| e.step).collect()
}

#[tokio::test]
async fn scale_patches_replicas_waits_for_the_new_endpoint_and_scales_back() {
    let server = serve("127.78.4.10:5001", None, "svclb-tserver-x");
    let (api, t) = cluster(2, "127.78.4.10").await;
    let f = on_cluster(&t, &job(Action::Scale(3)), &Interrupt::default())
        .await
        .unwrap();
    let r = &f.record;
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
    assert_eq!(r.action.error, None);
    assert_eq!(r.action.what, format!("scaled deployment {TSERVER} from 2 to 3"));
    let (start, stable) = (r.action.started_s.unwrap(), r.action.stable_s.unwrap());
    assert!(stable > start);
    assert_eq!(sent(&api, &deployment_path()), [json!({"spec": {"replicas": 3}})]);
    // The new pod's endpoint, from the watch: ready after the action, before "stable".
    assert_eq!(
        (r.action.endpoints_before.len(), r.action.endpoints_after.len()),
        (2, 3)
    );
    let new: Vec<&String> = r
        .action
        .endpoints_after
        .iter()
        .filter(|p| !r.action.endpoints_before.contains(p))
        .collect();
    assert_eq!(new.len(), 1);
    assert_eq!(steps(r, new[0]), [Step::Ready]);
    let ready_at = r.events.iter().find(|e| &e.pod == new[0]).unwrap().at_s;
    assert!(start <= ready_at && ready_at <= stable, "{start} {ready_at} {stable}");
    // Traffic ran all along: one source per node, nothing failed.
    assert_eq!(r.target.source.as_deref(), Some("per-node (2 sources)"));
    assert!(r.totals.attempts > 20 && r.totals.failed.total == 0, "{:?}", r.totals);
    assert_eq!(r.target.mode, "pod");

    // The restore: back to 2, waited for.
    let did = f.restore.run().await.unwrap();
    assert_eq!(
        did.as_deref(),
        Some("deployment svclb-tserver scaled back from 3 to 2 replicas")
    );
    assert_eq!(
        sent(&api, &deployment_path()),
        [json!({"spec": {"replicas": 3}}), json!({"spec": {"replicas": 2}})]
    );
    let eps = crate::cluster::ops::endpoint_slices(&t.cluster, TSERVER).await.unwrap();
    assert_eq!(eps.iter().filter(|e| e.ready).count(), 2, "{eps:?}");
    assert!(eps.iter().all(|e| !e.terminating));
    server.abort();
}

#[tokio::test]
async fn rollout_restart_annotates_the_template_and_waits_for_every_pod() {
    let server = serve("127.78.4.11:5001", None, "svclb-tserver-x");
    let (api, t) = cluster(2, "127.78.4.11").await;
    let f = on_cluster(&t, &job(Action::RolloutRestart), &Interrupt::default())
        .await
        .unwrap();
    server.abort();
    let r = &f.record;
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
    let patches = sent(&api, &deployment_path());
    assert_eq!(patches.len(), 1);
    let stamp = patches[0]["spec"]["template"]["metadata"]["annotations"][crate::cluster::disrupt::RESTARTED_AT]
        .as_str()
        .unwrap()
        .to_string();
    // RFC 3339, as kubectl writes it: 2026-11-24T10:00:00Z.
    assert!(
        stamp.parse::<jiff::Timestamp>().is_ok() && stamp.ends_with('Z') && stamp.len() == 20,
        "{stamp}"
    );
    assert_eq!(
        patches[0].as_object().unwrap().len(),
        1,
        "only the annotation: {}",
        patches[0]
    );
    // Every old pod went through its end, every new one is ready; none left of the old ones.
    let (before, after) = (&r.action.endpoints_before, &r.action.endpoints_after);
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|p| !before.contains(p)), "{before:?} {after:?}");
    for p in before {
        assert_eq!(steps(r, p), [Step::Terminating, Step::NotServing, Step::Removed], "{p}");
    }
    for p in after {
        assert_eq!(steps(r, p), [Step::Ready], "{p}");
    }
    // Stable only once the last old endpoint was removed.
    let last_removed = r
        .events
        .iter()
        .filter(|e| e.step == Step::Removed)
        .map(|e| e.at_s)
        .fold(0.0, f64::max);
    assert!(r.action.stable_s.unwrap() >= last_removed);
    assert!(matches!(f.restore, Restore::Nothing));
}

#[tokio::test]
async fn delete_pod_deletes_with_the_grace_period_and_waits_for_the_replacement() {
    let server = serve("127.78.4.12:5001", None, "svclb-tserver-x");
    let (api, t) = cluster(2, "127.78.4.12").await;
    let mut j = job(Action::DeletePod(None));
    j.grace_period = Some(Duration::from_secs(7));
    let f = on_cluster(&t, &j, &Interrupt::default()).await.unwrap();
    server.abort();
    let r = &f.record;
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
    // The first ready pod by name, deleted with the grace period asked for.
    let victim = r.action.endpoints_before[0].clone();
    assert_eq!(r.action.what, format!("deleted pod {victim}"));
    let deletes = sent(&api, &format!("DELETE /api/v1/namespaces/{}/pods/{victim}", fake::NS));
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0]["gracePeriodSeconds"], 7, "{}", deletes[0]);
    assert_eq!(steps(r, &victim), [Step::Terminating, Step::NotServing, Step::Removed]);
    let replacement: Vec<&String> = r
        .action
        .endpoints_after
        .iter()
        .filter(|p| !r.action.endpoints_before.contains(p))
        .collect();
    assert_eq!(replacement.len(), 1, "{:?}", r.action);
    assert_eq!(steps(r, replacement[0]), [Step::Ready]);
    assert!(matches!(f.restore, Restore::Nothing));
    // A pod that is not the tserver's: refused before any traffic.
    let e = on_cluster(
        &t,
        &job(Action::DeletePod(Some("kube-dns".into()))),
        &Interrupt::default(),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "no {TSERVER} pod named kube-dns in namespace {}: see `kubectl svclb status`",
            fake::NS
        )
    );
}

#[tokio::test]
async fn drain_node_cordons_evicts_and_uncordons() {
    let server = serve("127.78.4.13:5001", None, "svclb-tserver-x");
    let (api, t) = cluster(2, "127.78.4.13").await;
    let on_node2: Vec<String> = t
        .view
        .pods
        .iter()
        .filter(|p| p.node == "node-2")
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(on_node2.len(), 1, "{:?}", t.view.pods);
    let mut j = job(Action::DrainNode("node-2".into()));
    j.grace_period = Some(Duration::from_secs(3));
    let f = on_cluster(&t, &j, &Interrupt::default()).await.unwrap();
    server.abort();
    let r = &f.record;
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
    assert_eq!(r.action.what, format!("cordoned node-2, evicted 1 {TSERVER} pod(s)"));
    assert_eq!(
        sent(&api, "PATCH /api/v1/nodes/node-2"),
        [json!({"spec": {"unschedulable": true}})]
    );
    let evictions = sent(
        &api,
        &format!("POST /api/v1/namespaces/{}/pods/{}/eviction", fake::NS, on_node2[0]),
    );
    assert_eq!(
        evictions,
        [json!({"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": on_node2[0], "namespace": fake::NS},
                "deleteOptions": {"gracePeriodSeconds": 3}})]
    );
    assert_eq!(
        steps(r, &on_node2[0]),
        [Step::Terminating, Step::NotServing, Step::Removed]
    );
    // The replacement could only go to node-1.
    let pods = crate::cluster::ops::pods(&t.cluster, TSERVER, &t.view.nodes)
        .await
        .unwrap();
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(|p| p.node == "node-1"), "{pods:?}");
    let did = f.restore.run().await.unwrap();
    assert_eq!(did.as_deref(), Some("uncordoned node node-2"));
    assert_eq!(
        sent(&api, "PATCH /api/v1/nodes/node-2"),
        [
            json!({"spec": {"unschedulable": true}}),
            json!({"spec": {"unschedulable": false}})
        ]
    );
}

#[tokio::test]
async fn an_interrupted_scale_keeps_what_was_measured_and_scales_back() {
    let server = serve("127.78.4.14:5001", None, "svclb-tserver-x");
    let (api, t) = cluster(2, "127.78.4.14").await;
    // The new pod never becomes ready: the action would wait until --duration.
    api.stuck(true);
    let f = on_cluster(
        &t,
        &job(Action::Scale(3)),
        &Interrupt::after(Duration::from_millis(1500)),
    )
    .await
    .unwrap();
    server.abort();
    let r = &f.record;
    assert_eq!(r.stopped, Some(Stop::Interrupted));
    assert!(
        r.action.started_s.is_some() && r.action.stable_s.is_none(),
        "{:?}",
        r.action
    );
    assert_eq!(r.action.error, None, "interrupted is not an error");
    assert!(r.totals.attempts > 20);
    assert!(r.reasons.is_empty(), "{:?}", r.reasons);
    // Put back, and waited for: the stuck pod goes.
    let did = f.restore.run().await.unwrap();
    assert_eq!(
        did.as_deref(),
        Some("deployment svclb-tserver scaled back from 3 to 2 replicas")
    );
}

#[tokio::test]
async fn an_action_the_api_refuses_is_in_the_record_with_the_traffic() {
    let server = serve("127.78.4.15:5001", None, "svclb-tserver-x");
    let (api, t) = cluster(2, "127.78.4.15").await;
    api.forbid("PATCH", "deployments", "dev");
    let f = on_cluster(&t, &job(Action::Scale(3)), &Interrupt::default())
        .await
        .unwrap();
    server.abort();
    let r = &f.record;
    let e = r.action.error.as_deref().unwrap();
    assert!(e.starts_with("forbidden: you may not patch deployments"), "{e}");
    assert_eq!(r.verdict, Verdict::Fail);
    assert!(
        r.reasons[0].starts_with("the action did not complete: forbidden"),
        "{:?}",
        r.reasons
    );
    assert!(r.totals.attempts > 10, "measured before and after: {:?}", r.totals);
    // The restore has nothing to scale back (the replicas never changed).
    assert_eq!(f.restore.run().await.unwrap(), None);
}

#[tokio::test]
async fn client_pods_run_the_traffic_and_go_afterwards() {
    let server = serve("127.78.4.16:5001", None, "svclb-tserver-x");
    let (api, mut t) = cluster(2, "127.78.4.16").await;
    let mut j = job(Action::None);
    j.duration = Duration::from_millis(1500);
    let f = run_cluster(&mut t, &j, &Interrupt::default()).await.unwrap();
    server.abort();
    let r = &f.record;
    assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);
    let created: Vec<String> = api
        .created()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(created.len(), 2, "one client pod per node");
    assert!(created.iter().all(|n| n.starts_with("svclb-client-")));
    assert_eq!(r.target.source.as_deref(), Some("per-node (2 sources)"));
    assert_eq!(r.breaks.len() + r.totals.failed.total as usize, 0, "{:?}", r.reasons);
    let deleted = api
        .log()
        .iter()
        .filter(|l| l.starts_with("DELETE") && l.contains("svclb-client-"))
        .count();
    assert_eq!(deleted, 2);
}

/// Every action, and its restore, with only what `manifests --rbac` grants (the API mock
/// authorizes each request as the RBAC authorizer does): nothing is refused. Without the cordon
/// ClusterRole, drain-node is refused in one line naming what is missing, and nothing else is.
#[tokio::test]
async fn every_action_needs_only_the_rbac_manifests() {
    let rbac = crate::cluster::manifests::render_rbac(fake::NS).unwrap();
    for (i, action) in [
        Action::Scale(3),
        Action::RolloutRestart,
        Action::DeletePod(None),
        Action::DrainNode("node-2".into()),
    ]
    .into_iter()
    .enumerate()
    {
        let ip = format!("127.78.4.{}", 20 + i);
        let server = serve(&format!("{ip}:5001"), None, "svclb-tserver-x");
        let (api, t) = cluster(2, &ip).await;
        api.enforce_rbac(rbac.clone());
        let f = on_cluster(&t, &job(action.clone()), &Interrupt::default())
            .await
            .unwrap();
        server.abort();
        assert_eq!(f.record.action.error, None, "{action}");
        assert_eq!(f.record.verdict, Verdict::Pass, "{action}: {:?}", f.record.reasons);
        f.restore.run().await.unwrap();
        assert_eq!(api.denied(), Vec::<String>::new(), "{action}");
    }

    let without_cordon: Vec<Value> = rbac
        .into_iter()
        .filter(|o| o["metadata"]["name"] != "svclb-nodes-cordon")
        .collect();
    let server = serve("127.78.4.30:5001", None, "svclb-tserver-x");
    let (api, t) = cluster(2, "127.78.4.30").await;
    api.enforce_rbac(without_cordon);
    let f = on_cluster(&t, &job(Action::DrainNode("node-2".into())), &Interrupt::default())
        .await
        .unwrap();
    server.abort();
    let e = f.record.action.error.clone().unwrap();
    assert!(e.starts_with("forbidden: you may not patch nodes"), "{e}");
    assert_eq!(api.denied(), ["patch nodes/node-2"]);
    // Nothing was cordoned: nothing to uncordon, and no eviction was sent.
    assert!(api.log().iter().all(|l| !l.contains("/eviction")));
    assert_eq!(f.restore.run().await.unwrap(), None);
}
