//! End to end on a real cluster (kind in .github/workflows/e2e.yml). Ignored by `cargo test` (it
//! never contacts a cluster); run with `-- --ignored` and SVCLB_E2E_KUBECONFIG pointing at a
//! cluster's kubeconfig, as the kind workflow does.
//! SVCLB_E2E_IMAGE names the image loaded into the cluster; SVCLB_E2E_PROXY_MODE the expected
//! kube-proxy mode.

mod common;

use common::svclb;

const NS: &str = "svclb-e2e";

fn cluster() -> (String, String) {
    let kubeconfig =
        std::env::var("SVCLB_E2E_KUBECONFIG").expect("SVCLB_E2E_KUBECONFIG: the e2e suite needs a cluster");
    let image = std::env::var("SVCLB_E2E_IMAGE").expect("SVCLB_E2E_IMAGE with SVCLB_E2E_KUBECONFIG");
    (kubeconfig, image)
}

fn run(kubeconfig: &str, args: &[&str]) -> (i32, String, String) {
    let mut a = args.to_vec();
    a.extend(["--kubeconfig", kubeconfig, "-n", NS]);
    let r = svclb(&a);
    eprintln!("$ kubectl svclb {}\n{}{}", args.join(" "), r.1, r.2);
    r
}

#[test]
#[ignore = "needs a cluster: SVCLB_E2E_KUBECONFIG (the kind workflow runs it with --ignored)"]
fn e2e_deploy_status_spread_cleanup() {
    let (kc, image) = cluster();
    // The namespace is the test's (kubectl is on the CI runner).
    let _ = std::process::Command::new("kubectl")
        .args(["--kubeconfig", &kc, "create", "namespace", NS])
        .status();
    let (code, _, err) = run(&kc, &["deploy", "--image", &image, "--replicas", "4"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&kc, &["status", "-o", "json"]);
    assert_eq!(code, 0);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        st["pods"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["ready"] == true)
            .count(),
        4
    );
    if let Ok(mode) = std::env::var("SVCLB_E2E_PROXY_MODE") {
        assert_eq!(st["proxy_mode"], mode.as_str());
    }

    let (code, out, err) = run(
        &kc,
        &["spread", "--no-deploy", "--conns", "2000", "--no-save", "-o", "json"],
    );
    assert!(code == 0 || code == 1, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["ok"], 2000, "{out}");
    assert_eq!(r["backends"].as_array().unwrap().len(), 4);
    assert!(r["backends"].as_array().unwrap().iter().all(|b| b["zone"] != ""));

    let (code, out, err) = run(
        &kc,
        &[
            "spread",
            "--no-deploy",
            "--sources",
            "per-node",
            "--conns",
            "500",
            "--udp",
            "--no-save",
            "-o",
            "json",
        ],
    );
    assert!(code == 0 || code == 1, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(r["sources"].as_array().unwrap().len() >= 2, "{out}");

    // From this machine to a nodePort (kind nodes are reachable from the runner).
    let (code, out, err) = run(
        &kc,
        &[
            "spread",
            "--no-deploy",
            "--from",
            "host",
            "--node-port",
            "--conns",
            "500",
            "--no-save",
            "-o",
            "json",
        ],
    );
    assert!(code == 0 || code == 1, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["target"]["mode"], "host");

    // Affinity: the run deploys the affinity server (the tserver stays as deployed), its agent
    // runs in a tserver pod through exec, and an affinity pod is deleted mid-run: the change is
    // seen in the EndpointSlices, sessions that switch pods are excused, the verdict holds.
    let agent = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-svclb"))
        .args([
            "affinity",
            "--udp",
            "--from",
            "pod",
            "--image",
            &image,
            "--sessions",
            "200",
        ])
        .args(["--interval", "500ms", "--duration", "40s", "--no-save", "-o", "json"])
        .args(["--kubeconfig", &kc, "-n", NS])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut deleted = false;
    for _ in 0..60 {
        std::thread::sleep(std::time::Duration::from_secs(2));
        let pods = std::process::Command::new("kubectl")
            .args(["--kubeconfig", &kc, "-n", NS, "get", "pods", "-o", "name"])
            .args([
                "-l",
                "app.kubernetes.io/name=svclb-affinity",
                "--field-selector=status.phase=Running",
            ])
            .output()
            .unwrap();
        let names = String::from_utf8_lossy(&pods.stdout).to_string();
        if names.lines().count() >= 4 {
            // Ready and sessions running: take one away.
            std::thread::sleep(std::time::Duration::from_secs(10));
            let first = names.lines().next().unwrap().to_string();
            let ok = std::process::Command::new("kubectl")
                .args(["--kubeconfig", &kc, "-n", NS, "delete", &first, "--wait=false"])
                .status()
                .unwrap();
            deleted = ok.success();
            break;
        }
    }
    let out = agent.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(deleted, "no affinity pods came up");
    assert_eq!(out.status.code(), Some(0), "{text}");
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["kind"], "AffinityRun");
    assert_eq!(r["verdict"], "HOLDS", "{text}");
    assert!(r["pool_changes"].as_array().is_some_and(|p| !p.is_empty()), "{text}");
    assert!(r["totals"]["sent"].as_u64().unwrap() > 0);

    let (code, out, _) = run(&kc, &["cleanup"]);
    assert_eq!(code, 0);
    assert!(out.contains("deployment/svclb-tserver") && out.contains("service/svclb-tserver"));
    assert!(out.contains("deployment/svclb-affinity"));
}

/// `disruption` on a real cluster: a rollout restart (every pod replaced; the endpoint events
/// from the EndpointSlice watch), then a scale that is put back afterwards.
#[test]
#[ignore = "needs a cluster: SVCLB_E2E_KUBECONFIG (the kind workflow runs it with --ignored)"]
fn e2e_disruption_rollout_restart_and_scale() {
    let (kc, image) = cluster();
    let _ = std::process::Command::new("kubectl")
        .args(["--kubeconfig", &kc, "create", "namespace", NS])
        .status();
    let (code, _, err) = run(&kc, &["deploy", "--image", &image, "--replicas", "4"]);
    assert_eq!(code, 0, "{err}");
    let disruption = |action: &str| {
        let (code, out, err) = run(
            &kc,
            &[
                "disruption",
                "--no-deploy",
                "--action",
                action,
                "--rate",
                "100",
                "--long-lived",
                "10",
                "--udp-sessions",
                "10",
                "--duration",
                "180s",
                "--no-save",
                "-o",
                "json",
            ],
        );
        // PASS or FAIL (the tserver has no preStop drain: a rollout may refuse a few), never 2.
        assert!(code == 0 || code == 1, "{err}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["kind"], "DisruptionRun");
        assert!(r["action"]["error"].is_null(), "{out}");
        assert!(r["action"]["stable_s"].as_f64().is_some(), "{out}");
        assert!(r["totals"]["attempts"].as_u64().unwrap() > 100, "{out}");
        for s in r["seconds"].as_array().unwrap() {
            let pods: u64 = s["pods"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            assert_eq!(pods, s["ok"].as_u64().unwrap(), "{s}");
        }
        r
    };
    let r = disruption("rollout-restart");
    let before: Vec<&str> = r["action"]["endpoints_before"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let after: Vec<&str> = r["action"]["endpoints_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!((before.len(), after.len()), (4, 4), "{r}");
    assert!(after.iter().all(|p| !before.contains(p)), "{r}");
    for p in &before {
        let removed = r["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["pod"] == *p && e["step"] == "removed");
        assert!(removed, "{p} removed: {}", r["events"]);
    }

    let r = disruption("scale=2");
    assert_eq!(r["action"]["endpoints_after"].as_array().unwrap().len(), 2, "{r}");
    // Put back to 4 after the run.
    let replicas = std::process::Command::new("kubectl")
        .args(["--kubeconfig", &kc, "-n", NS, "get", "deployment", "svclb-tserver"])
        .args(["-o", "jsonpath={.spec.replicas}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&replicas.stdout), "4");
    let (code, _, _) = run(&kc, &["cleanup"]);
    assert_eq!(code, 0);
}

/// `matrix` on the kind cluster, in a namespace of its own: every node a pod row and (the
/// namespace admits hostNetwork: kind enforces no Pod Security) a node row, the runner a client
/// row (kind's nodes are reachable from it), no LB controller (`--lb-wait 0s`), a Service per
/// scenario and nothing of it left afterwards; no cell wrong.
#[test]
#[ignore = "needs a cluster: SVCLB_E2E_KUBECONFIG (the kind workflow runs it with --ignored)"]
fn e2e_matrix() {
    const MNS: &str = "svclb-e2e-matrix";
    let (kc, image) = cluster();
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new("kubectl")
            .args(["--kubeconfig", &kc, "-n", MNS])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    kubectl(&["create", "namespace", MNS]);
    let args = [
        "matrix",
        "--image",
        &image,
        "--test",
        "^(default|etp-local|itp-local|no-endpoints|terminating|prefer-same-zone)/",
        "--lb-wait",
        "0s",
        "--no-save",
        "-o",
        "json",
        "--kubeconfig",
        &kc,
        "-n",
        MNS,
    ];
    let (code, out, err) = svclb(&args);
    eprintln!("$ kubectl svclb {}\n{out}{err}", args.join(" "));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(r["kind"], "MatrixRun");
    let kinds = |k: &str| {
        r["sources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == k)
            .count()
    };
    // kind: a control plane and two workers, all Ready.
    assert_eq!(
        (kinds("pod"), kinds("node"), kinds("client")),
        (3, 3, 1),
        "{}",
        r["notes"]
    );
    let skipped = r["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["skipped"].is_string())
        .map(|s| s["name"].as_str().unwrap())
        .collect::<Vec<_>>();
    assert!(skipped.contains(&"terminating/tcp"), "{skipped:?}");
    let wrong: Vec<String> = r["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["cells"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["verdict"] == "incorrect")
        .map(|c| format!("{} -> {}: {}", c["source"], c["target"], c["why"]))
        .collect();
    assert_eq!(wrong, Vec::<String>::new());
    assert_eq!(code, 0, "{err}");
    // The scenario Services and the client pods are gone (or going).
    let services = kubectl(&["get", "services", "-o", "name"]);
    assert_eq!(services.trim(), "service/svclb-tserver", "{services}");
    let pods = kubectl(&[
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=svclb-client",
        "-o",
        "jsonpath={range .items[*]}{.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    assert!(
        pods.lines().all(|l| !l.trim().is_empty()),
        "client pods not deleted: {pods:?}"
    );
    let (code, _, _) = svclb(&["cleanup", "--kubeconfig", &kc, "-n", MNS]);
    assert_eq!(code, 0);
}
