//! How a server ends: SIGINT at once; SIGTERM after a drain, as a pod's server is told to stop.
//!
//! On SIGTERM the server keeps serving for the drain delay (what a preStop sleep gives a pod
//! while its endpoint leaves every node's rules), then closes its listeners (TCP, UDP, HTTP:
//! new connections are refused, readiness fails) and finishes the open TCP and HTTP connections
//! (HTTP ones after their current request); it exits when none is left. A second SIGTERM or a
//! SIGINT ends it at once.
//!
//! The drain delay is `serve --drain-delay`, unless the SIGTERM carries its own: one sent with
//! sigqueue(3) whose value is the delay in milliseconds ([`terminate`]). That is how the lab
//! passes `delete-pod --drain-delay` to a server it started long before.

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

/// What a signal asks of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Stop now.
    Now,
    /// Keep serving this long, then close the listeners and finish the open connections.
    Drain(Duration),
}

/// The delay the last queued SIGTERM carried (ms), or [`NOT_QUEUED`].
static QUEUED_DRAIN_MS: AtomicU64 = AtomicU64::new(NOT_QUEUED);
const NOT_QUEUED: u64 = u64::MAX;

/// Records the value of every SIGTERM. Registered before tokio's own SIGTERM action, so it has
/// run when tokio's wakes the task that reads it (signal-hook-registry calls actions in order).
fn record_queued_values() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the action only reads the siginfo and stores an atomic (async-signal-safe).
        let registered = unsafe {
            signal_hook_registry::register_sigaction(libc::SIGTERM, |info: &libc::siginfo_t| {
                QUEUED_DRAIN_MS.store(queued_value(info).unwrap_or(NOT_QUEUED), Ordering::SeqCst);
            })
        };
        if let Err(e) = registered {
            eprintln!("svclb serve: SIGTERM values are ignored: {e}");
        }
    });
}

#[cfg(target_os = "linux")]
fn queued_value(info: &libc::siginfo_t) -> Option<u64> {
    // SAFETY: si_value is meaningful for SI_QUEUE signals, which carry a sigval.
    (info.si_code == libc::SI_QUEUE).then(|| unsafe { info.si_value().sival_ptr } as usize as u64)
}

#[cfg(not(target_os = "linux"))]
fn queued_value(_info: &libc::siginfo_t) -> Option<u64> {
    None
}

/// The stops SIGINT and SIGTERM ask for, in order; a plain SIGTERM drains for `drain`. Must be
/// called inside a tokio runtime.
pub fn signals(drain: Duration) -> std::io::Result<mpsc::UnboundedReceiver<Stop>> {
    use tokio::signal::unix::{SignalKind, signal};
    record_queued_values();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let stop = tokio::select! {
                Some(()) = int.recv() => Stop::Now,
                Some(()) = term.recv() => match QUEUED_DRAIN_MS.swap(NOT_QUEUED, Ordering::SeqCst) {
                    NOT_QUEUED => Stop::Drain(drain),
                    ms => Stop::Drain(Duration::from_millis(ms)),
                },
                else => return,
            };
            if tx.send(stop).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Sends SIGTERM to the server `pid`, carrying `drain` (sigqueue(3)): it serves that long more,
/// whatever its `--drain-delay`.
#[cfg(target_os = "linux")]
pub fn terminate(pid: u32, drain: Duration) -> std::io::Result<()> {
    let ms = u64::try_from(drain.as_millis()).unwrap_or(u64::MAX - 1);
    let value = libc::sigval {
        sival_ptr: ms as usize as *mut libc::c_void,
    };
    // SAFETY: sigqueue(2) on a pid; the value is a plain integer in the pointer field.
    if unsafe { libc::sigqueue(pid as libc::pid_t, libc::SIGTERM, value) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// sigqueue is Linux's here; the lab, its only caller, needs Linux.
#[cfg(not(target_os = "linux"))]
pub fn terminate(_pid: u32, _drain: Duration) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}
