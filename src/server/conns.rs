//! What TCP and HTTP connections share: a cap on open connections, an idle timeout, and accepting
//! with back-off.
//!
//! At the cap a new connection is still accepted and answered: the least recently active open
//! connection is closed for it, so a storm always finds a slot even when idle peers hold all of
//! them. A connection is active when bytes move either way; one that moved nothing for the idle
//! timeout is closed (by one task that looks four times per timeout). Accept errors (out of descriptors, buffers, memory) pause accepting briefly and
//! are logged at most once a second.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

/// Limits on TCP and HTTP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A connection that moves no byte either way for this long is closed (at most a quarter of it
    /// later); `None` = never.
    pub idle_timeout: Option<Duration>,
    /// An HTTP request's headers must arrive within this; `None` = no limit.
    pub header_timeout: Option<Duration>,
    /// Most open connections (TCP and HTTP together); at the cap the least recently active one is
    /// closed for each new one.
    pub max_conns: usize,
}

/// Descriptors [`Limits::default`] keeps for everything but connections: listeners, the runtime,
/// and connections closing while new ones are accepted.
const FD_RESERVE: u64 = 256;

impl Limits {
    /// The default `max_conns`: the open-file limit less a reserve (at least half the limit).
    pub fn default_max_conns() -> usize {
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
        let conns = soft.saturating_sub(FD_RESERVE).max(soft / 2).max(1);
        usize::try_from(conns).unwrap_or(usize::MAX)
    }
}

impl Default for Limits {
    /// 60 s idle timeout, 10 s for request headers, the cap from the open-file limit.
    fn default() -> Self {
        Self {
            idle_timeout: Some(Duration::from_secs(60)),
            header_timeout: Some(Duration::from_secs(10)),
            max_conns: Self::default_max_conns(),
        }
    }
}

/// The open connections of one server.
pub(super) struct Conns {
    /// Those that may be closed for a new one.
    open: Mutex<Open>,
    /// One permit per connection until its task has ended and its descriptor is closed: a
    /// connection closed for a new one still counts until then, so descriptors never overshoot.
    slots: Arc<Semaphore>,
    /// The semaphore's permits: the cap on open connections.
    cap: usize,
    limits: Limits,
    epoch: Instant,
    next_id: AtomicU64,
    /// Set when the server drains: HTTP connections finish their request and close.
    draining: watch::Sender<bool>,
    /// Told whenever a connection's slot is given up.
    closed: Notify,
}

struct Open {
    conns: HashMap<u64, Arc<Conn>>,
    /// The next connections to close at the cap, least recently active last, with their activity
    /// stamp when picked: one that was active since is spared.
    victims: Vec<(u64, Weak<Conn>)>,
}

/// One open connection.
pub(super) struct Conn {
    id: u64,
    /// Milliseconds since the server's epoch when bytes last moved.
    last: AtomicU64,
    epoch: Instant,
    evicted: Notify,
}

impl Conn {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }
}

/// A connection's place among the open ones, given up when dropped.
pub(super) struct Slot {
    conns: Arc<Conns>,
    conn: Arc<Conn>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.lock().conns.remove(&self.conn.id);
        // The permit goes first: whoever is told sees the connection gone.
        self.permit.take();
        self.conns.closed.notify_waiters();
    }
}

impl Slot {
    /// `io` with its traffic counted as this connection's activity.
    pub(super) fn track<S>(&self, io: S) -> Tracked<S> {
        Tracked {
            io,
            conn: self.conn.clone(),
        }
    }

    /// Runs `conn` (the connection's whole life) until it ends or the connection is closed (for a
    /// new one at the cap, or idle).
    pub(super) async fn run(self, conn: impl Future<Output = ()>) {
        tokio::select! {
            () = conn => {}
            () = self.conn.evicted.notified() => {}
        }
    }
}

impl Conns {
    pub(super) fn new(limits: Limits) -> Arc<Self> {
        let cap = limits.max_conns.min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            open: Mutex::new(Open {
                conns: HashMap::new(),
                victims: Vec::new(),
            }),
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            limits,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            draining: watch::Sender::new(false),
            closed: Notify::new(),
        })
    }

    pub(super) fn limits(&self) -> Limits {
        self.limits
    }

    /// Connections whose task has not ended yet.
    pub(super) fn open(&self) -> usize {
        self.cap - self.slots.available_permits()
    }

    /// The server drains: HTTP connections are told to finish their request and close.
    pub(super) fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Completes once the server drains.
    pub(super) async fn draining(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Completes once no connection is open.
    pub(super) async fn closed(&self) {
        loop {
            // Created before the count is read: a slot given up in between still wakes it.
            let told = self.closed.notified();
            if self.open() == 0 {
                return;
            }
            told.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for a new connection; at the cap, closes the least recently active one and
    /// waits until it is closed.
    async fn admit(self: &Arc<Self>) -> Slot {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.lock().evict_one();
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            last: AtomicU64::new(0),
            epoch: self.epoch,
            evicted: Notify::new(),
        });
        conn.touch();
        self.lock().conns.insert(conn.id, conn.clone());
        Slot {
            conns: self.clone(),
            conn,
            permit: Some(permit),
        }
    }

    /// Closes the connections that moved nothing for `idle`, looking four times per `idle`: one
    /// task for all of them keeps timers off the path of every connection.
    pub(super) async fn close_idle(self: Arc<Self>, idle: Duration) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(cutoff) = self.epoch.elapsed().checked_sub(idle) else {
                continue;
            };
            let cutoff = cutoff.as_millis() as u64;
            self.lock().conns.retain(|_, conn| {
                let keep = conn.last() > cutoff;
                if !keep {
                    conn.evicted.notify_one();
                }
                keep
            });
        }
    }

    /// Accepts connections forever, handing each with its slot to `serve`.
    pub(super) async fn accept(
        self: &Arc<Self>,
        listener: &TcpListener,
        what: &'static str,
        mut serve: impl FnMut(TcpStream, SocketAddr, Slot),
    ) {
        let mut log = ErrorLog::new(what);
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => serve(stream, peer, self.admit().await),
                Err(e) => {
                    log.note(&e);
                    // Out of descriptors or memory: the connection waits in the backlog while
                    // others close; retrying at once would only spin.
                    if is_resource_error(&e) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }
}

impl Open {
    /// Tells the least recently active open connection to close and forgets it.
    fn evict_one(&mut self) {
        let mut fresh = false;
        loop {
            let Some((stamp, conn)) = self.victims.pop() else {
                if fresh || self.conns.is_empty() {
                    return;
                }
                self.pick_victims();
                fresh = true;
                continue;
            };
            let Some(conn) = conn.upgrade() else { continue };
            // Active since it was picked: spared, unless the pick is this moment's.
            if !fresh && conn.last() != stamp {
                continue;
            }
            if self.conns.remove(&conn.id).is_some() {
                conn.evicted.notify_one();
                return;
            }
        }
    }

    /// The least recently active 1/64 of the open connections (at least one), least active last:
    /// one pass over all of them serves many evictions.
    fn pick_victims(&mut self) {
        let mut all: Vec<(u64, &Arc<Conn>)> = self.conns.values().map(|c| (c.last(), c)).collect();
        let k = (all.len() / 64).max(1);
        if k < all.len() {
            all.select_nth_unstable_by_key(k, |(last, _)| *last);
            all.truncate(k);
        }
        all.sort_unstable_by_key(|(last, _)| std::cmp::Reverse(*last));
        self.victims = all.into_iter().map(|(last, c)| (last, Arc::downgrade(c))).collect();
    }
}

fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Logs accept errors at most once a second, with how many were not logged.
struct ErrorLog {
    what: &'static str,
    last: Option<Instant>,
    unlogged: u64,
}

impl ErrorLog {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            last: None,
            unlogged: 0,
        }
    }

    fn note(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return;
        }
        match std::mem::take(&mut self.unlogged) {
            0 => eprintln!("svclb serve: {} accept: {e}", self.what),
            n => eprintln!(
                "svclb serve: {} accept: {e} (and {n} more errors since the last message)",
                self.what
            ),
        }
        self.last = Some(now);
    }
}

/// An I/O object whose reads and writes mark its connection active.
pub(super) struct Tracked<S> {
    io: S,
    conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_conns: usize) -> Limits {
        Limits {
            idle_timeout: None,
            header_timeout: None,
            max_conns,
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_least_recently_active_connection_is_closed_first() {
        let conns = Conns::new(limits(3));
        let pause = || std::thread::sleep(Duration::from_millis(3));
        let mut slots = Vec::new();
        for _ in 0..3 {
            pause();
            slots.push(conns.admit().await);
        }
        // The first one is the oldest, but it moved bytes last: the second is the idlest.
        pause();
        slots[0].conn.touch();
        let fourth = conns.admit();
        tokio::pin!(fourth);
        let wait = Duration::from_millis(50);
        assert!(
            tokio::time::timeout(wait, &mut fourth).await.is_err(),
            "the new one waits until the closed one is gone"
        );
        let told = |slot: &Slot| {
            let conn = slot.conn.clone();
            async move { tokio::time::timeout(wait, conn.evicted.notified()).await.is_ok() }
        };
        assert!(told(&slots[1]).await);
        assert!(!told(&slots[0]).await && !told(&slots[2]).await);
        drop(slots.remove(1));
        let fourth = tokio::time::timeout(wait, fourth)
            .await
            .expect("admitted once the closed one is gone");
        let mut open: Vec<u64> = conns.lock().conns.keys().copied().collect();
        open.sort_unstable();
        assert_eq!(open, [slots[0].conn.id, slots[1].conn.id, fourth.conn.id]);
    }

    #[test]
    fn default_cap_leaves_descriptors_free() {
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        let max = Limits::default_max_conns() as u64;
        assert!(max >= 1 && max < soft, "{max} of {soft}");
    }
}
