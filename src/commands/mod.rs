//! One file per subcommand, each thin: parse → engine → report.

pub mod affinity;
pub mod cluster;
pub mod compare;
pub mod completion;
pub mod lab;
pub mod serve;
pub mod spread;
mod spread_cluster;
mod spread_lab;

use std::time::Duration;

/// Parses durations as `2s`, `500ms`, `1m30s`, `1.5s`, `10m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|_| format!("bad duration {s:?}: use e.g. 2s, 500ms, 1m30s"))?;
    Duration::try_from(d).map_err(|_| format!("bad duration {s:?}: must not be negative"))
}

/// A multi-threaded tokio runtime with `workers` threads (0 = one per CPU).
pub fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        b.worker_threads(workers);
    }
    Ok(b.enable_all().build()?)
}

/// Raises the open-file limit to its hard maximum: storms and servers hold thousands of sockets.
pub fn raise_nofile() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
    }
}
