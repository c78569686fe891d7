//! Shared test helpers: real `kubectl-svclb serve` processes on loopback addresses.
#![allow(dead_code)] // each test crate uses its own subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_kubectl-svclb");

/// A running `serve` child, killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub http: Option<SocketAddr>,
}

impl Server {
    /// Starts `serve` on `ip` (ports chosen by the kernel) with the given identity.
    pub fn start(ip: &str, name: &str, node: &str, zone: &str) -> Self {
        Self::start_with(ip, &["--name", name, "--node", node, "--zone", zone])
    }

    pub fn start_with(ip: &str, extra: &[&str]) -> Self {
        let addr = if ip.contains(':') {
            format!("[{ip}]:0")
        } else {
            format!("{ip}:0")
        };
        let mut child = Command::new(BIN)
            .args(["serve", "--address", &addr, "--http", &addr])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve");
        let mut line = String::new();
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        stderr.read_line(&mut line).expect("serve banner");
        // Kept open (and read): with its stderr closed the server dies of SIGPIPE when it logs,
        // e.g. that it drains on SIGTERM.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        // "svclb serve: NAME on tcp+udp ADDR, http ADDR"
        let after = line
            .split("tcp+udp ")
            .nth(1)
            .unwrap_or_else(|| panic!("banner: {line}"));
        let mut parts = after.trim().split(", http ");
        let addr = parts.next().unwrap().parse().expect("tcp addr");
        let http = parts.next().map(|h| h.parse().expect("http addr"));
        Self { child, addr, http }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits: returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait serve")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI, returns (exit code, stdout, stderr).
pub fn svclb(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl-svclb");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `spread -o json --no-save` and parses the record.
pub fn spread_json(args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["spread", "-o", "json", "--no-save"];
    all.extend_from_slice(args);
    let (code, out, err) = svclb(&all);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\nstderr: {err}"));
    (code, v)
}

/// Runs the CLI with its lab state in `dir` (SVCLB_LAB_DIR), as the lab tests do.
pub fn lab_svclb(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SVCLB_LAB_DIR", dir)
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl-svclb")
}

/// The command's stdout as JSON; panics with stdout and stderr when it is not.
pub fn output_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Network namespaces whose names start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Whether `parent` has a child process running the storm agent (`kubectl-svclb agent --request ...`).
pub fn has_agent_child(parent: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.filter_map(|e| e.ok()).any(|e| {
        let dir = e.path();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        // The storm agent (`agent --request JSON`), not the lab's own agents (`lab agent node`).
        ppid == Some(parent) && cmdline.split(|b| *b == 0).any(|arg| arg == b"--request")
    })
}

/// Storm agents (`... --request ...`) running inside a network namespace whose name starts with
/// `prefix` (`/proc/PID/ns/net` against `/run/netns/NAME`), whoever their parent is now.
pub fn agents_in_netns(prefix: &str) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let inodes: Vec<String> = netns_with_prefix(prefix)
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/run/netns/{n}")).ok())
        .map(|m| format!("net:[{}]", m.ino()))
        .collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let ns = std::fs::read_link(e.path().join("ns/net")).ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let agent = cmdline.split(|b| *b == 0).any(|arg| arg == b"--request");
            (agent && inodes.iter().any(|i| ns.to_str() == Some(i.as_str()))).then_some(pid)
        })
        .collect()
}

/// A named lab in its own state directory, removed on drop (also when the test fails); a passing
/// test also checks that `lab down` left no namespace.
pub struct LabGuard {
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl LabGuard {
    /// `lab up --name <tag><pid> ARGS`.
    pub fn up(tag: &str, args: &[&str]) -> Self {
        let name = format!("{tag}{}", std::process::id() % 100_000);
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec!["lab", "up", "--name", name.as_str()];
        all.extend_from_slice(args);
        let out = lab_svclb(dir.path(), &all);
        let guard = Self { name, dir };
        assert!(out.status.success(), "lab up: {}", String::from_utf8_lossy(&out.stderr));
        guard
    }

    /// Runs the CLI against this lab's state directory.
    pub fn run(&self, args: &[&str]) -> Output {
        lab_svclb(self.dir.path(), args)
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = self.run(&["lab", "down", "--name", &self.name]);
        let left = netns_with_prefix(&format!("svclb-{}.", self.name));
        if !std::thread::panicking() {
            assert!(left.is_empty(), "lab down left namespaces: {left:?}");
        }
    }
}

/// Sends SIGINT to a run after `after`, waits for it, and checks what every interrupted run does
/// (exit 130, the verdict line says INTERRUPTED, the partial record saved as `<dir>/<tag>.json` and
/// marked interrupted). Returns the saved record.
pub fn interrupt(child: std::process::Child, after: std::time::Duration, dir: &Path, tag: &str) -> serde_json::Value {
    std::thread::sleep(after);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("INTERRUPTED: after "), "{report}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{tag}.json"))).unwrap()).unwrap();
    assert_eq!(saved["stopped"], "interrupted");
    saved
}
