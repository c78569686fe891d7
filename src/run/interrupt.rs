//! Ctrl-C and SIGTERM, once for every run: a setup phase (building a lab, deploying) asks
//! [`Interrupt::is_set`] between its steps; a measuring phase awaits [`Interrupt::wait`], then
//! stops its agents, which report what they measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// An interrupt that fired or may fire; clones share it.
#[derive(Clone, Default)]
pub struct Interrupt {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Interrupt {
    /// Fires on the first SIGINT or SIGTERM from now on. Must be called inside a tokio runtime.
    pub fn watch() -> Interrupt {
        let i = Interrupt::default();
        let fire = i.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            fire.fire();
        });
        i
    }

    /// Fires after `d` (tests, and runs stopped by a timer).
    pub fn after(d: Duration) -> Interrupt {
        let i = Interrupt::default();
        let fire = i.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            fire.fire();
        });
        i
    }

    pub fn fire(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Completes once the interrupt fired (at once if it already has).
    pub async fn wait(&self) {
        loop {
            // Registered before the flag is read: a fire in between still wakes it.
            let notified = self.notify.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
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

/// Completes when a line `stop` arrives on stdin (never at EOF): how a run stops an agent it
/// runs through exec, where no signal can be sent. stdin is read on a plain thread: a read
/// pending in tokio's blocking pool would keep the runtime, and so the agent, from exiting after
/// it printed its output.
pub async fn stdin_stop() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            match line {
                Ok(l) if l.trim() == "stop" => {
                    let _ = tx.send(());
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    if rx.await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_completes_for_a_fire_before_and_after_it_started() {
        let i = Interrupt::default();
        assert!(!i.is_set());
        let waiter = tokio::spawn({
            let i = i.clone();
            async move { i.wait().await }
        });
        tokio::task::yield_now().await;
        i.fire();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        // Already fired: at once.
        tokio::time::timeout(Duration::from_millis(10), i.wait()).await.unwrap();
        let later = Interrupt::after(Duration::from_millis(20));
        tokio::time::timeout(Duration::from_secs(1), later.wait())
            .await
            .unwrap();
        assert!(later.is_set());
    }
}
