//! Namespace plumbing: `ip -batch` runners, in-namespace threads, process discovery.
//!
//! Everything here targets a named lab namespace. The only commands run against the
//! root namespace are `ip netns add|del` (which create or remove the bind mount under
//! /run/netns and never touch the root namespace's links, addresses or routes) and the
//! read-only scans of /proc.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};

/// Where `ip netns` keeps its bind mounts.
const NETNS_RUN_DIR: &str = "/run/netns";

/// The bind-mount path of a named namespace.
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(ns)
}

/// Names of the existing namespaces that start with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Runs `ip [-n NS] [-force] -batch -` with `script` on stdin.
pub fn ip_batch(ns: Option<&str>, script: &str, force: bool) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    if force {
        cmd.arg("-force");
    }
    cmd.args(["-batch", "-"]);
    let what = match ns {
        Some(ns) => format!("ip -n {ns} -batch"),
        None => "ip -batch (netns add/del)".to_string(),
    };
    run_with_stdin(cmd, script.as_bytes()).map(|_| ()).with_context(|| what)
}

/// Runs a command inside namespace `ns`, feeding it `input`.
pub fn exec_with_stdin(ns: &str, program: &str, args: &[&str], input: &str) -> Result<()> {
    exec_in(ns, program, args, input.as_bytes()).map(|_| ())
}

/// Runs a command inside namespace `ns` and returns its stdout.
pub fn exec_output(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    exec_in(ns, program, args, &[])
}

/// Runs `program` spawned from a thread that entered `ns`, so the child is born in it: no
/// `ip netns exec` (one process less, and no mount namespace or /sys remount, which a node's
/// sync would pay three times).
fn exec_in(ns: &str, program: &str, args: &[&str], input: &[u8]) -> Result<String> {
    in_netns(ns, || {
        let mut cmd = Command::new(program);
        cmd.args(args);
        run_with_stdin(cmd, input)
    })
    .with_context(|| format!("{program} {} in {ns}", args.join(" ")))
}

fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot spawn")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    // A failing command may close stdin early; its stderr says why.
    let _ = writer.join();
    if !out.status.success() {
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.is_empty() {
            msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        bail!("failed ({}): {msg}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Moves the calling thread into the network namespace open at `fd` (setns(2)). Async-signal-safe,
/// so it may run between fork and exec.
#[cfg(target_os = "linux")]
pub fn enter(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: setns on the calling thread only; the caller keeps fd open for the call.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Network namespaces are Linux's; `require_host` refuses the lab before anything gets here.
#[cfg(not(target_os = "linux"))]
pub fn enter(_fd: std::os::fd::RawFd) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Runs `f` on a thread that has entered namespace `ns` (setns). Used for sysctls:
/// /proc/sys/net resolves to the namespace of the thread that opens it.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = File::open(netns_path(ns)).with_context(|| format!("no namespace {ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(file.as_raw_fd()).with_context(|| format!("setns {ns}"))?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
    })
}

/// Writes sysctls (`net/ipv4/ip_forward` style keys) inside namespace `ns`.
pub fn sysctls(ns: &str, kv: &[(&str, &str)]) -> Result<()> {
    in_netns(ns, || {
        for (k, v) in kv {
            let path = Path::new("/proc/sys").join(k);
            std::fs::write(&path, v).with_context(|| format!("sysctl {} = {v} in {ns}", path.display()))?;
        }
        Ok(())
    })
}

/// Inode of a namespace bind mount (what /proc/PID/ns/net links to).
pub fn netns_inode(ns: &str) -> Option<u64> {
    std::fs::metadata(netns_path(ns)).ok().map(|m| m.ino())
}

/// Network-namespace inode of a process, if it still exists.
pub fn pid_netns_inode(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| m.ino())
}

/// Every process whose network namespace is one of `inodes`.
pub fn pids_in(inodes: &HashSet<u64>) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| pid_netns_inode(*pid).is_some_and(|ino| inodes.contains(&ino)))
        .collect()
}

/// When process `pid` started (clock ticks after boot, /proc/PID/stat field 22): with the pid,
/// it names one process (a pid alone may have been reused).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is field 3, start time 22.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// SIGKILLs `pids` and reaps those that are our own children.
pub fn kill_and_reap(pids: &[u32]) {
    for &pid in pids {
        // SAFETY: plain syscalls on pids we identified as lab processes.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
    for &pid in pids {
        let mut status = 0;
        // Returns ECHILD at once for processes that are not our children.
        unsafe {
            libc::waitpid(pid as libc::pid_t, &mut status, 0);
        }
    }
}

/// True when `pid` is alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Runs `f` over `items` on up to `threads` threads; returns the first error.
pub fn par_each<T: Sync>(items: &[T], threads: usize, f: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, items.len().max(1));
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return Ok(());
                        };
                        f(item)?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked"))))
            .collect()
    });
    results.into_iter().collect()
}
