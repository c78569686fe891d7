//! What the cluster-flow tests share: the real binary as the agent, loopback test servers.

use std::net::SocketAddr;

use crate::backend::kube::{ClusterView, KubeBackend, LocalRun};
use crate::cluster::fake::FakeApi;
use crate::cluster::manifests::TSERVER;
use crate::server::{Listeners, ServeConfig};
use crate::wire::Identity;

/// A cluster backend over the in-memory API whose agents (in pods and on the host) are the real
/// binary run here; backends are the pods of `service`, agents run in tserver pods.
pub async fn local_target(api: &FakeApi, service: &str) -> KubeBackend<LocalRun, LocalRun> {
    let view = ClusterView::load(&api.cluster(), "v1.33.1".into(), service, TSERVER)
        .await
        .unwrap();
    KubeBackend {
        view,
        cluster: api.cluster(),
        pods: LocalRun { program: binary() },
        host: LocalRun { program: binary() },
        family: Default::default(),
    }
}

/// target/debug/deps/<this test> → target/debug/kubectl-svclb (built by `cargo test`).
pub fn binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("kubectl-svclb");
    assert!(bin.exists(), "{} missing: run the whole `cargo test`", bin.display());
    bin
}

/// A test server on a loopback address, named like the pod.
pub fn serve(address: &str, http: Option<&str>, pod: &str) -> tokio::task::JoinHandle<()> {
    let l = Listeners::bind(&ServeConfig {
        address: address.parse().unwrap(),
        http: http.map(|h| h.parse::<SocketAddr>().unwrap()),
        identity: Identity {
            name: pod.into(),
            node: "node-1".into(),
            // What a server in a pod reports: its hostname, not the zone.
            zone: pod.into(),
        },
    })
    .unwrap();
    tokio::spawn(async move {
        let _ = l.serve(std::future::pending()).await;
    })
}
