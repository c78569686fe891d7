//! `--ip-family` on a dual-stack lab (root): the same storm over each family, both saved, and a
//! fault planted in one family's rules flagged side by side.
// Network namespaces and netfilter: Linux only (the darwin workflow runs the rest).
#![cfg(target_os = "linux")]

mod common;

use common::LabGuard;

/// The run's stdout, once its exit code is `code` (else both outputs in the panic).
fn stdout_with_exit(out: &std::process::Output, code: i32) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `nft ARGS` run in `node`'s namespace with `lab exec`.
fn nft(lab: &LabGuard, node: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["lab", "exec", "--name", &lab.name, node, "--", "nft"];
    all.extend_from_slice(args);
    lab.run(&all)
}

/// The ip6 endpoint chains of the wire-protocol TCP port (named `tcp`, 5001) on `node`.
fn ip6_tcp_endpoint_chains(lab: &LabGuard, node: &str) -> Vec<String> {
    let out = nft(lab, node, &["list", "table", "ip6", "kube-proxy"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("chain "))
        .map(|l| l.trim_end_matches('{').trim().trim_matches('"').to_string())
        .filter(|c| c.starts_with("endpoint-") && c.contains("/tcp/tcp__"))
        .collect()
}

#[test]
fn lab_ip_family_both_runs_each_family_and_flags_a_fault_in_one() {
    let lab = LabGuard::up("fam", &["--nodes", "3", "--pods", "6", "--ip-family", "dual"]);
    let saves = tempfile::tempdir().unwrap();
    let save = saves.path().to_string_lossy().into_owned();
    let spread = |tag: &str| {
        lab.run(&[
            "spread",
            "--lab",
            &lab.name,
            "--ip-family",
            "both",
            "--conns",
            "600",
            "--timeout",
            "300ms",
            "--tag",
            tag,
            "--save",
            &save,
        ])
    };
    // Untouched: both families pass, each saved under its own tag with its family.
    let out = spread("ok");
    let stdout = stdout_with_exit(&out, 0);
    // No difference in what answered, how, or the verdicts. The connect rates are always
    // compared too, and a rate under 90% is flagged; but a rate is the benchmark's to measure
    // (scripts/bench.sh): here other tests run alongside, and one saw IPv6 at 63% of IPv4 while
    // a 100-pod lab started. So the rate may be the one finding, and nothing else may.
    let (_, side) = stdout
        .split_once("IPv4 and IPv6 side by side:\n")
        .expect("the comparison");
    let findings: Vec<&str> = side.lines().filter(|l| l.starts_with("  ! ")).collect();
    assert!(
        findings.iter().all(|l| l.starts_with("  ! the ipv6 rate is ")),
        "{stdout}"
    );
    assert_eq!(
        side.starts_with("  no difference between the families\n"),
        findings.is_empty(),
        "{stdout}"
    );
    assert!(stdout.contains("the ipv6 rate is"), "{stdout}");
    for fam in ["ipv4", "ipv6"] {
        let text = std::fs::read_to_string(saves.path().join(format!("ok-{fam}.json"))).unwrap();
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(r["target"]["ip_family"], fam, "{text}");
        let address = r["target"]["address"].as_str().unwrap();
        assert_eq!(address.starts_with('['), fam == "ipv6", "{address}");
        assert_eq!(r["stats"]["verdict"], "PASS", "{text}");
    }
    // One endpoint's IPv6 rule flushed on every node: over IPv6 its share of the connections
    // goes nowhere; IPv4 is untouched.
    let chains = ip6_tcp_endpoint_chains(&lab, "node1");
    assert_eq!(chains.len(), 6, "{chains:?}");
    for node in ["node1", "node2", "node3"] {
        let out = nft(&lab, node, &["flush", "chain", "ip6", "kube-proxy", &chains[0]]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = spread("fault");
    let stdout = stdout_with_exit(&out, 1);
    assert!(stdout.contains("  ! verdict: ipv4 PASS, ipv6 FAIL\n"), "{stdout}");
    assert!(stdout.contains("  ! backends answering: ipv4 6, ipv6 5\n"), "{stdout}");
    assert!(stdout.contains("  ! answered over ipv4 only: pod-"), "{stdout}");
    assert!(stdout.contains("timeout"), "{stdout}");
}

/// With no endpoints kube-proxy rejects: every TCP and UDP cell it rejects is refused in both
/// families. Over IPv6 the TCP ones timed out until the clients asked for ICMPv6 errors while
/// connecting (`storm::connect_tcp`, docs/ip-families.md).
#[test]
fn lab_matrix_no_endpoints_is_refused_in_both_families() {
    let lab = LabGuard::up("fmx", &["--nodes", "3", "--pods", "3", "--ip-family", "dual"]);
    let out = lab.run(&[
        "matrix",
        "--lab",
        &lab.name,
        "--ip-family",
        "both",
        "--test",
        "^no-endpoints/",
        "--no-save",
    ]);
    let stdout = stdout_with_exit(&out, 0);
    // Two runs (one per family) of two scenarios each, all correct.
    assert_eq!(stdout.matches("no-endpoints/tcp (").count(), 2, "{stdout}");
    assert_eq!(
        stdout
            .matches("total: correct 110, incorrect 0, inconclusive 0")
            .count(),
        2,
        "{stdout}"
    );
    assert!(
        stdout.contains("IPv4 and IPv6 side by side:\n  no difference between the families"),
        "{stdout}"
    );
}
