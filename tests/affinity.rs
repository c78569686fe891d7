//! `affinity` on loopback against real `serve` processes (and a test responder for late replies):
//! exact sent/answered/lost/late counts, cross-checked with the servers' own per-session counters.

mod common;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Server, svclb};

fn affinity_json(args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["affinity", "-o", "json", "--no-save", "--stats-interval", "1h"];
    all.extend_from_slice(args);
    let (code, out, err) = svclb(&all);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\nstderr: {err}"));
    (code, v)
}

fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// `stats <session>` over UDP: what the server received of that session.
fn udp_stats(server: SocketAddr, session: &str) -> u64 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(format!("stats {session}").as_bytes(), server).unwrap();
    let mut buf = [0u8; 512];
    let (len, _) = s.recv_from(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..len]).into_owned();
    line.trim()
        .rsplit_once("received=")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("stats reply: {line}"))
}

/// `stats <session>` over TCP (after the greeting line).
fn tcp_stats(server: SocketAddr, session: &str) -> u64 {
    use std::io::{BufRead, BufReader, Write};
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    writeln!(s, "stats {session}").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line.trim().rsplit_once("received=").unwrap().1.parse().unwrap()
}

fn check_sessions(r: &serde_json::Value, sessions: u64, per_session: u64, server_count: impl Fn(&str) -> u64) {
    assert_eq!(n(r, "sessions"), sessions);
    assert_eq!(n(r, "sent"), n(r, "answered") + n(r, "lost"), "sent = answered + lost");
    let prefix = r["session_prefix"].as_str().unwrap();
    let rows = r["session_detail"].as_array().unwrap();
    assert_eq!(rows.len() as u64, sessions);
    for row in rows {
        let sent = n(row, "sent");
        // --duration ends the schedule; the session whose slot falls on the end may send once more.
        assert!((per_session..=per_session + 1).contains(&sent), "{row}");
        assert_eq!(n(row, "answered") + n(row, "lost"), sent);
        let name = format!("{prefix}-{}", n(row, "session"));
        assert_eq!(
            server_count(&name),
            n(row, "answered"),
            "server saw what was answered: {row}"
        );
    }
}

#[test]
fn affinity_udp_counts_are_exact_and_match_the_server() {
    let server = Server::start("127.0.0.1", "pod-a", "node1", "zone-a");
    let addr = server.addr.to_string();
    for plain in [false, true] {
        let mut args = vec![
            "--udp",
            "--address",
            &addr,
            "--sessions",
            "40",
            "--interval",
            "100ms",
            "--timeout",
            "500ms",
            "--duration",
            "1s",
        ];
        if plain {
            args.push("--plain-udp");
        }
        let (code, r) = affinity_json(&args);
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["kind"], "AffinityRun");
        assert_eq!(r["verdict"], "HOLDS");
        assert_eq!((n(&r, "lost"), n(&r, "late"), n(&r, "stray")), (0, 0, 0), "{r}");
        assert_eq!((n(&r, "pod_changes"), n(&r, "address_changes")), (0, 0));
        assert_eq!(r["pods"][0]["name"], "pod-a");
        assert_eq!(r["pods"][0]["sessions"], 40);
        check_sessions(&r, 40, 10, |s| udp_stats(server.addr, s));
        // Each session kept its source port: one reflective address per session, all distinct.
        let mut addrs: Vec<&str> = r["session_detail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["last_address"].as_str().unwrap())
            .collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 40);
    }
}

#[test]
fn affinity_tcp_counts_are_exact_and_match_the_server() {
    let server = Server::start("127.0.0.1", "pod-t", "node1", "zone-a");
    let addr = server.addr.to_string();
    let (code, r) = affinity_json(&[
        "--tcp",
        "--address",
        &addr,
        "--sessions",
        "20",
        "--interval",
        "100ms",
        "--timeout",
        "500ms",
        "--duration",
        "1s",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (n(&r, "lost"), n(&r, "late"), n(&r, "address_changes")),
        (0, 0, 0),
        "{r}"
    );
    check_sessions(&r, 20, 10, |s| tcp_stats(server.addr, s));
}

#[test]
fn affinity_new_connection_per_message_uses_the_e2e_rule() {
    let server = Server::start("127.0.0.1", "pod-n", "node1", "zone-a");
    let addr = server.addr.to_string();
    for proto in ["--udp", "--tcp"] {
        let (code, r) = affinity_json(&[
            proto,
            "--address",
            &addr,
            "--sessions",
            "5",
            "--interval",
            "50ms",
            "--timeout",
            "500ms",
            "--duration",
            "1s",
            "--new-connection-per-message",
        ]);
        assert_eq!(code, 0, "{proto}: {r}");
        // A new source port per message, but the same IP: no address change is counted.
        assert_eq!(n(&r, "address_changes"), 0);
        assert!(
            r["session_detail"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| n(s, "streak") >= 15)
        );
        // Too short for 15 replies: affinity is not confirmed.
        let (code, r) = affinity_json(&[
            proto,
            "--address",
            &addr,
            "--sessions",
            "2",
            "--interval",
            "50ms",
            "--duration",
            "300ms",
            "--new-connection-per-message",
        ]);
        assert_eq!(code, 1, "{r}");
        assert!(r["reasons"][0].as_str().unwrap().contains("fewer than 15"), "{r}");
    }
}

/// A UDP responder that answers even sequence numbers at once and odd ones after `delay`.
fn slow_responder(delay: Duration) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((len, peer)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            let seq: u64 = text.split_whitespace().nth(2).and_then(|s| s.parse().ok()).unwrap_or(0);
            let reply = format!("slow node=n zone=z client={peer} seq={seq}\n");
            let sock = sock.try_clone().unwrap();
            std::thread::spawn(move || {
                if seq % 2 == 1 {
                    std::thread::sleep(delay);
                }
                let _ = sock.send_to(reply.as_bytes(), peer);
            });
        }
    });
    addr
}

#[test]
fn affinity_late_replies_are_counted_separately() {
    let addr = slow_responder(Duration::from_millis(150)).to_string();
    let (code, r) = affinity_json(&[
        "--udp",
        "--address",
        &addr,
        "--sessions",
        "4",
        "--interval",
        "250ms",
        "--timeout",
        "60ms",
        "--duration",
        "1s",
    ]);
    assert_eq!(code, 0, "{r}");
    let rows = r["session_detail"].as_array().unwrap();
    for row in rows {
        let sent = n(row, "sent");
        // Even seqs answered in time, odd ones lost, and each of those came back late.
        assert_eq!(n(row, "answered"), sent.div_ceil(2), "{row}");
        assert_eq!(n(row, "lost"), sent / 2, "{row}");
        // Each lost one came back late, but the last may come back after the run ended.
        let late = n(row, "late");
        assert!(late == sent / 2 || late + 1 == sent / 2, "{row}");
    }
    assert!(n(&r, "late") > 0);
    assert_eq!(n(&r, "sent"), n(&r, "answered") + n(&r, "lost"));
}

#[test]
fn affinity_counts_loss_when_the_server_stops() {
    let server = Server::start("127.0.0.1", "pod-s", "node1", "zone-a");
    let addr = server.addr.to_string();
    let child = Command::new(BIN)
        .args([
            "affinity",
            "--udp",
            "--address",
            &addr,
            "--sessions",
            "10",
            "--interval",
            "100ms",
            "--timeout",
            "200ms",
            "--duration",
            "2s",
            "-o",
            "json",
            "--no-save",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    server.terminate();
    let out = child.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "no change, only loss: {r}");
    let (sent, answered, lost) = (n(&r, "sent"), n(&r, "answered"), n(&r, "lost"));
    assert_eq!(sent, answered + lost);
    // About half of the 2 s ran without a server: every message from then on is lost.
    assert!(answered >= 50 && lost >= 50, "{r}");
    for row in r["session_detail"].as_array().unwrap() {
        assert!(n(row, "lost") >= 5, "{row}");
    }
}

#[test]
fn affinity_saves_and_compare_lists_affinity_runs() {
    let server = Server::start("127.0.0.1", "pod-c", "node1", "zone-a");
    let addr = server.addr.to_string();
    let saves = tempfile::tempdir().unwrap();
    let dir = saves.path().to_str().unwrap();
    for _ in 0..2 {
        let (code, out, err) = svclb(&[
            "affinity",
            "--udp",
            "--address",
            &addr,
            "--sessions",
            "3",
            "--interval",
            "100ms",
            "--duration",
            "300ms",
            "--tag",
            "aff",
            "--save",
            dir,
        ]);
        assert_eq!(code, 0, "{err}");
        // The summary's columns say what they count.
        let header = out.lines().find(|l| l.trim_start().starts_with("target")).unwrap();
        let header: Vec<&str> = header.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(
            &header[8..],
            [
                "pod changes",
                "address changes",
                "changes during pool change",
                "elapsed"
            ],
            "{out}"
        );
    }
    let (code, _, err) = svclb(&[
        "spread",
        "--address",
        &addr,
        "--conns",
        "10",
        "--tag",
        "sp",
        "--save",
        dir,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(saves.path().join("aff-2.json").exists(), "never overwritten");
    let (code, out, err) = svclb(&["compare", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Affinity runs:"), "{out}");
    assert!(
        out.contains("aff-2") && out.contains("HOLDS") && out.contains("sp "),
        "{out}"
    );
    // csv is one table: with spread and affinity runs, it must be named.
    let (code, _, err) = svclb(&["compare", dir, "-o", "csv"]);
    assert_eq!(code, 2);
    assert!(err.contains("pick one with --table"), "{err}");
    let (code, csv, _) = svclb(&["compare", dir, "-o", "csv", "--table", "affinity"]);
    assert_eq!(code, 0);
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.starts_with("tag,target,proto,sessions,"), "{csv}");
    let (_, json, _) = svclb(&["compare", dir, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["affinity_runs"].as_array().unwrap().len(), 2);
    assert_eq!(v["runs"].as_array().unwrap().len(), 1);
}

#[test]
fn affinity_bad_input_is_one_line_exit_2() {
    for (args, needle) in [
        (&["affinity", "--address", "127.0.0.1:1"][..], "--udp"),
        // Without --address or --lab the cluster is the target; these never reach a real cluster.
        (
            &["affinity", "--udp", "--kubeconfig", "/nonexistent/kubeconfig"],
            "cannot read kubeconfig /nonexistent/kubeconfig",
        ),
        (
            &[
                "affinity",
                "--udp",
                "--from",
                "pod",
                "--kubeconfig",
                "tests/data/kubeconfig-down.yaml",
            ],
            "context kind-down: cannot reach the API server",
        ),
        (
            &["affinity", "--udp", "--address", "127.0.0.1:1", "--sessions", "0"],
            "--sessions 0",
        ),
        (
            &["affinity", "--udp", "--address", "127.0.0.1:1", "--interval", "0s"],
            "--interval 0s",
        ),
        (
            &["affinity", "--udp", "--address", "127.0.0.1:1", "--pod", "pod-001"],
            "not with --address",
        ),
        (
            &["affinity", "--udp", "--address", "127.0.0.1:1", "--from", "pod"],
            "not with --address",
        ),
        (
            &["affinity", "--udp", "--address", "127.0.0.1:1", "--no-deploy"],
            "cannot be used with",
        ),
        (
            &["affinity", "--tcp", "--plain-udp", "--address", "127.0.0.1:1"],
            "--plain-udp",
        ),
        (&["affinity", "--udp", "--address", "nowhere"], "HOST:PORT"),
    ] {
        let (code, out, err) = svclb(args);
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    }
}

#[test]
fn ctrl_c_saves_a_partial_record_says_interrupted_and_exits_130() {
    let s = Server::start("127.0.0.61", "pod-x", "n", "z");
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(common::BIN)
        .args(["affinity", "--udp", "--address", &s.addr.to_string()])
        .args([
            "--sessions",
            "20",
            "--interval",
            "100ms",
            "--duration",
            "1m",
            "--tag",
            "cut",
        ])
        .arg("--save")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let saved = common::interrupt(child, std::time::Duration::from_millis(1500), dir.path(), "cut");
    assert!(saved["sent"].as_u64().unwrap() >= 20, "{}", saved["sent"]);
    assert_eq!(saved["sent"], saved["answered"]);
}
