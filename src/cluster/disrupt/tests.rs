//! Endpoint steps from EndpointSlice conditions, the watch that follows them, the rollout test,
//! and evictions a PodDisruptionBudget refuses for a while.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::cluster::fake::{self, FakeApi, Pods};
use crate::cluster::manifests::TSERVER;

fn ep(pod: &str, ready: bool, serving: bool, terminating: bool) -> SliceEndpoint {
    SliceEndpoint {
        slice: "s".into(),
        address_type: "IPv4".into(),
        pod: pod.into(),
        addresses: vec!["10.0.0.1".into()],
        zone: String::new(),
        node: String::new(),
        ready,
        serving,
        terminating,
        hints: Vec::new(),
        node_hints: Vec::new(),
    }
}

#[test]
fn endpoint_steps_follow_the_conditions() {
    // ready → terminating (serving) → not serving → gone.
    let (s, ch) = diff(
        &BTreeMap::new(),
        &[ep("a", true, true, false), ep("b", false, false, false)],
    );
    assert_eq!(ch, [("a".to_string(), Step::Ready)], "a starting pod has no step yet");
    let (s, ch) = diff(&s, &[ep("a", false, true, true), ep("b", true, true, false)]);
    assert_eq!(ch, [("a".into(), Step::Terminating), ("b".into(), Step::Ready)]);
    let (s, ch) = diff(&s, &[ep("a", false, false, true), ep("b", true, true, false)]);
    assert_eq!(ch, [("a".into(), Step::NotServing)]);
    let (s, ch) = diff(&s, &[ep("b", true, true, false)]);
    assert_eq!(ch, [("a".into(), Step::Removed)]);
    // A ready pod failing its readiness probe stops serving; unchanged: nothing.
    let (s, ch) = diff(&s, &[ep("b", false, false, false)]);
    assert_eq!(ch, [("b".into(), Step::NotServing)]);
    let (_, ch) = diff(&s, &[ep("b", false, false, false)]);
    assert!(ch.is_empty());
}

#[test]
fn stable_means_every_replica_ready_and_nothing_else() {
    let ready = [ep("a", true, true, false), ep("b", true, true, false)];
    assert!(slices_stable(&ready, 2, &[]));
    assert!(!slices_stable(&ready, 3, &[]));
    assert!(!slices_stable(&ready, 2, &["a".into()]), "a deleted pod must be gone");
    let terminating = [ready[0].clone(), ready[1].clone(), ep("c", false, true, true)];
    assert!(!slices_stable(&terminating, 2, &[]));
    let starting = [ready[0].clone(), ep("c", false, false, false)];
    assert!(!slices_stable(&starting, 1, &[]));
    // Dual-stack: a slice per family, each complete.
    let v6 = |e: &SliceEndpoint| SliceEndpoint {
        address_type: "IPv6".into(),
        ..e.clone()
    };
    let both = [ready[0].clone(), ready[1].clone(), v6(&ready[0]), v6(&ready[1])];
    assert!(slices_stable(&both, 2, &[]));
    assert!(!slices_stable(&both[..3], 2, &[]), "the IPv6 slice lacks b");
    // Each pod's step once, though it is in both slices.
    let (s, ch) = diff(&BTreeMap::new(), &both);
    assert_eq!(s.len(), 2);
    assert_eq!(ch.len(), 2, "{ch:?}");
    let r = Rollout {
        replicas: 2,
        generation: 3,
        observed_generation: 3,
        updated: 2,
        total: 2,
        available: 2,
    };
    assert!(r.complete());
    for not in [
        Rollout {
            observed_generation: 2,
            ..r.clone()
        },
        Rollout {
            updated: 1,
            ..r.clone()
        },
        Rollout { total: 3, ..r.clone() },
        Rollout {
            available: 1,
            ..r.clone()
        },
    ] {
        assert!(!not.complete(), "{not:?}");
    }
}

#[tokio::test]
async fn the_watch_sees_each_slice_change_as_it_happens() {
    let api = FakeApi::new(Pods::Ready);
    api.put(fake::slice(&[("p1", "10.244.1.10", "zone-a", &[])]));
    let c = api.cluster();
    let mut w = SliceWatch::start(&c, TSERVER).await.unwrap();
    assert_eq!(w.ready(), ["p1"]);
    let mut s = fake::slice(&[
        ("p1", "10.244.1.10", "zone-a", &[]),
        ("p2", "10.244.2.10", "zone-b", &[]),
    ]);
    api.put(s.clone());
    s["endpoints"][0]["conditions"] = json!({"ready": false, "serving": true, "terminating": true});
    api.put(s.clone());
    s["endpoints"][0]["conditions"] = json!({"ready": false, "serving": false, "terminating": true});
    api.put(s.clone());
    s["endpoints"].as_array_mut().unwrap().remove(0);
    api.put(s);
    let mut got = Vec::new();
    while got.len() < 4 {
        let (_, pod, step) = tokio::time::timeout(Duration::from_secs(5), w.events.recv())
            .await
            .expect("an event within 5 s")
            .unwrap();
        got.push((pod, step));
    }
    assert_eq!(
        got,
        [
            ("p2".to_string(), Step::Ready),
            ("p1".into(), Step::Terminating),
            ("p1".into(), Step::NotServing),
            ("p1".into(), Step::Removed)
        ]
    );
    assert_eq!(w.ready(), ["p2"]);
    // Listed once, then watched from the list's resourceVersion with the Service's selector.
    let log = api.log();
    let watches: Vec<&String> = log.iter().filter(|l| l.contains("watch=true")).collect();
    assert_eq!(watches.len(), 1, "{log:?}");
    assert!(
        watches[0].contains("labelSelector=kubernetes.io%2Fservice-name%3Dsvclb-tserver"),
        "{}",
        watches[0]
    );
    assert!(watches[0].contains("resourceVersion=1"), "{}", watches[0]);
}

#[tokio::test]
async fn an_eviction_a_budget_refuses_is_retried_until_it_is_allowed() {
    let api = FakeApi::new(Pods::Ready);
    api.put(fake::pod("p1", TSERVER, "node-1", "10.244.1.10", true));
    api.rollouts(false);
    api.refuse_evictions(2);
    let c = api.cluster();
    let t0 = std::time::Instant::now();
    evict(&c, "p1", Some(4), Duration::from_secs(5), Duration::from_millis(50))
        .await
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(100));
    let posts: Vec<String> = api.log().into_iter().filter(|l| l.starts_with("POST")).collect();
    assert_eq!(posts.len(), 3, "{posts:?}");
    // A budget that never allows it: the error after the timeout, in one line.
    api.refuse_evictions(1000);
    api.put(fake::pod("p2", TSERVER, "node-1", "10.244.1.11", true));
    let e = evict(&c, "p2", None, Duration::from_millis(120), Duration::from_millis(50))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("cannot create pods/eviction in namespace svclb-test: Cannot evict pod"),
        "{e}"
    );
    // Already gone: nothing to do.
    evict(&c, "nope", None, Duration::from_secs(1), Duration::from_millis(50))
        .await
        .unwrap();
}
