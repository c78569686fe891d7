//! Shared test helpers: real `kubectl-svclb serve` processes on loopback addresses.
#![allow(dead_code)] // each test crate uses its own subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

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
        BufReader::new(child.stderr.take().expect("stderr"))
            .read_line(&mut line)
            .expect("serve banner");
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
