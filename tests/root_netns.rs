//! Tests that need root: they build a private network namespace (never touching the root one).
// Network namespaces and netfilter: Linux only (the darwin workflow runs the rest).
#![cfg(target_os = "linux")]

mod common;

use std::process::Command;

/// A network namespace for one test, deleted on drop (also when the test fails).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("svclbtest-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(
            ok.success(),
            "root_* tests need root and iproute2 (ip netns add {name} failed)"
        );
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip").arg("-n").arg(&self.0).args(args).status().unwrap();
        assert!(st.success(), "ip -n {} {args:?}", self.0);
    }
    fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what runs inside, then remove the namespace.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn root_ipv6_srccidr_in_a_namespace() {
    let ns = Netns::new("v6src");
    let mut server = ns
        .exec(common::BIN)
        .args(["serve", "--address", "[::1]:5001", "--no-http", "--name", "pod-v6"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let spread = |extra: &[&str]| {
        let out = ns
            .exec(common::BIN)
            .args([
                "spread",
                "--address",
                "[::1]:5001",
                "--conns",
                "300",
                "--no-save",
                "-o",
                "json",
            ])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Without a local route the range cannot be bound: the error names the route to add.
    let (code, _, err) = spread(&["--srccidr", "fd00:99::/64"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ip -6 route add local fd00:99::/64 dev lo"), "{err}");
    assert!(err.contains("net.ipv6.ip_nonlocal_bind=1"), "{err}");
    ns.ip(&["-6", "route", "add", "local", "fd00:99::/64", "dev", "lo"]);
    let st = ns
        .exec("sysctl")
        .args(["-qw", "net.ipv6.ip_nonlocal_bind=1"])
        .status()
        .unwrap();
    assert!(st.success());
    let (code, out, err) = spread(&["--srccidr", "fd00:99::/64"]);
    assert_eq!(code, Some(0), "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["ok"], 300);
    assert_eq!(r["backends"][0]["name"], "pod-v6");
    let _ = server.kill();
    let _ = server.wait();
}
