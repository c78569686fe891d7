//! The storm engine and the test server over real loopback sockets.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{Server, spread_json, svclb};

fn count_of(record: &serde_json::Value, name: &str) -> u64 {
    record["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .map_or(0, |b| b["count"].as_u64().unwrap())
}

#[test]
fn tcp_storm_exact_totals() {
    let s = Server::start("127.0.0.21", "pod-a", "node-1", "zone-a");
    let addr = s.addr.to_string();
    let (code, r) = spread_json(&["--address", &addr, "--conns", "3000", "--parallel", "50"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["conns"], 3000);
    assert_eq!(r["ok"], 3000);
    assert_eq!(r["failed"]["total"], 0);
    assert_eq!(count_of(&r, "pod-a"), 3000);
    assert_eq!(r["backends"][0]["node"], "node-1");
    assert_eq!(r["backends"][0]["zone"], "zone-a");
    assert_eq!(r["target"]["protocol"], "tcp");
    assert_eq!(r["stats"]["verdict"], "PASS");
    assert!(r["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
}

#[test]
fn udp_storm_exact_totals() {
    let s = Server::start("127.0.0.22", "pod-u", "node-2", "zone-b");
    let addr = s.addr.to_string();
    let (code, r) = spread_json(&["--address", &addr, "--conns", "2000", "--parallel", "20", "--udp"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!((r["conns"].as_u64(), r["ok"].as_u64()), (Some(2000), Some(2000)));
    assert_eq!(count_of(&r, "pod-u"), 2000);
    assert_eq!(r["target"]["protocol"], "udp");
}

#[test]
fn ipv6_loopback_storm() {
    let s = Server::start("::1", "pod-6", "n", "z");
    let (code, r) = spread_json(&["--address", &s.addr.to_string(), "--conns", "500"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(count_of(&r, "pod-6"), 500);
    let (code, r) = spread_json(&["--address", &s.addr.to_string(), "--conns", "500", "--udp"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(count_of(&r, "pod-6"), 500);
}

#[test]
fn two_servers_spread_and_expected_backends() {
    // Loopback has no load balancer: storm each server and check that expecting two backends
    // from one fails with the missing one named.
    let a = Server::start("127.0.0.23", "pod-a", "n1", "z1");
    let (code, r) = spread_json(&[
        "--address",
        &a.addr.to_string(),
        "--conns",
        "200",
        "--expect-backends",
        "2",
    ]);
    assert_eq!(code, 1, "verdict must fail: {r}");
    assert_eq!(r["stats"]["verdict"], "FAIL");
    assert_eq!(r["stats"]["backends"], 2);
    assert_eq!(r["stats"]["min"], 0);
    assert!(r["stats"]["reasons"][0].as_str().unwrap().contains("only 1 of 2"));
    // The backend that never answered is listed with 0.
    assert_eq!(r["backends"].as_array().unwrap().len(), 2);
    assert_eq!(count_of(&r, "<missing-1>"), 0);
    assert!(
        r["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "<missing-1>" && b["count"] == 0)
    );
}

#[test]
fn srccidr_sources_are_random_hosts_of_the_range() {
    let s = Server::start("127.0.0.24", "pod-s", "n", "z");
    let (code, r) = spread_json(&[
        "--address",
        &s.addr.to_string(),
        "--conns",
        "300",
        "--srccidr",
        "127.77.0.0/24",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["params"]["srccidr"], "127.77.0.0/24");
    // The server saw the random sources: ask it over UDP from one of them.
    let sock = UdpSocket::bind("127.77.0.9:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(b"clientip", s.addr).unwrap();
    let mut buf = [0u8; 128];
    let n = sock.recv(&mut buf).unwrap();
    assert!(std::str::from_utf8(&buf[..n]).unwrap().starts_with("127.77.0.9:"));
}

#[test]
fn srccidr_that_cannot_bind_says_which_route_is_needed() {
    let s = Server::start("127.0.0.25", "pod-x", "n", "z");
    // 192.0.2.0/24 (TEST-NET-1) is not local: binding fails before anything is sent.
    let (code, out, err) = svclb(&[
        "spread",
        "--no-save",
        "--address",
        &s.addr.to_string(),
        "--conns",
        "10",
        "--srccidr",
        "192.0.2.0/24",
    ]);
    assert_eq!(code, 2, "{out}{err}");
    // The error is one line, after the line saying what was about to be stormed.
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert_eq!(lines[0], format!("svclb: 10 TCP connections to {}", s.addr));
    assert!(lines[1].starts_with("error: "), "{err}");
    assert!(err.contains("ip route add local 192.0.2.0/24 dev lo"), "{err}");
    assert!(err.contains("net.ipv4.ip_nonlocal_bind"), "{err}");
    let (code, _, err) = svclb(&[
        "spread",
        "--no-save",
        "--address",
        &s.addr.to_string(),
        "--srccidr",
        "fd00::/64",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("IPv6") && err.contains("IPv4"), "{err}");
}

#[test]
fn refused_connections_are_counted_and_a_run_where_nothing_answered_is_one_line() {
    // Bind then drop a listener: its port is closed.
    let port = TcpListener::bind("127.0.0.26:0").unwrap().local_addr().unwrap().port();
    let saves = tempfile::tempdir().unwrap();
    let dir = saves.path().to_str().unwrap();
    let addr = format!("127.0.0.26:{port}");
    let (code, out, err) = svclb(&[
        "spread",
        "--address",
        &addr,
        "--conns",
        "50",
        "--save",
        dir,
        "--tag",
        "closed",
    ]);
    // Nothing answered: one line and exit 2, no report; the record is still saved.
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    let last = err.lines().last().unwrap();
    assert_eq!(last, format!("error: all 50 connections to {addr} failed: refused"));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saves.path().join("closed.json")).unwrap()).unwrap();
    assert_eq!(r["failed"]["refused"], 50);
    assert_eq!(r["ok"], 0);
    assert_eq!(r["stats"]["verdict"], "FAIL");
    // UDP to a closed port: ICMP port unreachable comes back as refused.
    let (code, _, err) = svclb(&["spread", "--address", &addr, "--conns", "20", "--udp", "--no-save"]);
    assert_eq!(code, 2);
    assert!(err.contains("all 20 connections") && err.contains("refused"), "{err}");
}

#[test]
fn silent_peer_times_out_and_bare_hostname_peer_is_read() {
    let silent = TcpListener::bind("127.0.0.27:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().take(5) {
            held.push(s.unwrap());
        }
        std::thread::sleep(Duration::from_millis(800));
    });
    let saves = tempfile::tempdir().unwrap();
    let (code, _, err) = svclb(&[
        "spread",
        "--address",
        &addr.to_string(),
        "--conns",
        "5",
        "--timeout",
        "300ms",
        "--save",
        saves.path().to_str().unwrap(),
        "--tag",
        "silent",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.ends_with(&format!("all 5 connections to {addr} failed: timeout\n")),
        "{err}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(saves.path().join("silent.json")).unwrap()).unwrap();
    assert_eq!(r["failed"]["timeout"], 5, "{r}");
    holder.join().unwrap();

    // mconnect's server and agnhost serve-hostname write a bare hostname, no newline.
    let bare = TcpListener::bind("127.0.0.28:0").unwrap();
    let addr = bare.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for s in bare.incoming().take(40) {
            let mut s = s.unwrap();
            let _ = s.write_all(b"mconnect-deployment-5897ffb75c-dbgt5");
        }
    });
    let (code, r) = spread_json(&["--address", &addr.to_string(), "--conns", "40", "--parallel", "4"]);
    server.join().unwrap();
    assert_eq!(code, 0, "{r}");
    assert_eq!(count_of(&r, "mconnect-deployment-5897ffb75c-dbgt5"), 40);
}

#[test]
fn tcp_lines_and_udp_datagrams_follow_the_wire_protocol() {
    let s = Server::start("127.0.0.29", "pod-w", "node-w", "zone-w");
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let local = c.local_addr().unwrap();
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    let expect = format!("pod-w node=node-w zone=zone-w client={local}\n");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), expect);
    c.write_all(b"svclb s1 7\nhello\n").unwrap();
    let mut got = String::new();
    while got.matches('\n').count() < 2 {
        let n = c.read(&mut buf).unwrap();
        got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    assert_eq!(got, format!("{} seq=7\n{}", expect.trim_end(), expect));

    let u = UdpSocket::bind("127.0.0.29:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let me = u.local_addr().unwrap();
    for (req, want) in [
        (
            &b"svclb abc 42"[..],
            format!("pod-w node=node-w zone=zone-w client={me} seq=42\n"),
        ),
        (b"hostname", "pod-w".to_string()),
        (b"clientip", me.to_string()),
        (b"anything", format!("pod-w node=node-w zone=zone-w client={me}\n")),
    ] {
        u.send_to(req, s.addr).unwrap();
        let n = u.recv(&mut buf).unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), want);
    }
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, Vec<u8>) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    (head, all[split + 4..].to_vec())
}

#[test]
fn http_endpoints() {
    let s = Server::start("127.0.0.30", "pod-h", "node-h", "zone-h");
    let http = s.http.unwrap();
    let (head, body) = http_get(http, "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.starts_with("pod-h node=node-h zone=zone-h client=127.0.0.1:"),
        "{body}"
    );
    assert_eq!(http_get(http, "/hostname").1, b"pod-h");
    assert!(
        String::from_utf8(http_get(http, "/clientip").1)
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let (head, body) = http_get(http, "/bytes?n=200000");
    assert!(head.to_ascii_lowercase().contains("content-length: 200000"), "{head}");
    assert_eq!(body.len(), 200_000);
    let (head, _) = http_get(http, "/bytes?n=oops");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(http_get(http, "/nope").0.starts_with("HTTP/1.1 404"));
}

#[test]
fn serve_holds_ten_thousand_concurrent_connections_and_exits_on_sigterm() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let s = Server::start_with("127.0.0.31", &["--name", "pod-c", "--no-http"]);
    let mut held = Vec::with_capacity(10_000);
    let mut buf = [0u8; 256];
    for i in 0..10_000 {
        let mut c = TcpStream::connect(s.addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = c.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"pod-c "), "connection {i}");
        held.push(c);
    }
    // All 10,000 are still open and answered: every one echoes a request.
    for (i, c) in held.iter_mut().enumerate().step_by(997) {
        writeln!(c, "svclb held {i}").unwrap();
        let n = c.read(&mut buf).unwrap();
        assert!(
            std::str::from_utf8(&buf[..n])
                .unwrap()
                .ends_with(&format!(" seq={i}\n"))
        );
    }
    // On SIGTERM the server finishes its open connections: let them go first.
    drop(held);
    let status = s.terminate();
    assert!(status.success(), "serve must exit cleanly on SIGTERM: {status:?}");
}

#[test]
fn interrupt_saves_partial_record() {
    let s = Server::start("127.0.0.32", "pod-i", "n", "z");
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(common::BIN)
        .args([
            "spread",
            "--address",
            &s.addr.to_string(),
            "--conns",
            "100000",
            "--rate",
            "500",
            "--tag",
            "partial",
        ])
        .arg("--save")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let saved = common::interrupt(child, Duration::from_millis(1500), dir.path(), "partial");
    let ok = saved["ok"].as_u64().unwrap();
    assert!(ok > 100 && ok < 100_000, "partial run: {ok}");
    assert_eq!(saved["conns"], saved["ok"]);
    assert_eq!(count_of(&saved, "pod-i"), ok);
}

#[test]
fn deadline_and_rate_bound_the_run() {
    let s = Server::start("127.0.0.33", "pod-d", "n", "z");
    let t0 = std::time::Instant::now();
    let (_, r) = spread_json(&[
        "--address",
        &s.addr.to_string(),
        "--conns",
        "100000",
        "--rate",
        "1000",
        "--deadline",
        "1s",
    ]);
    let took = t0.elapsed();
    assert_eq!(r["stopped"], "deadline");
    let conns = r["conns"].as_u64().unwrap();
    assert!((900..=1100).contains(&conns), "rate 1000/s for 1s made {conns}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}
