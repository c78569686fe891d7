//! UDP sessions: one socket (one source port) per session, driven by a few threads. Each thread owns
//! a share of the sessions, one mio poll (epoll on Linux, kqueue on macOS) for their sockets and one send schedule: sessions send
//! round-robin in a fixed order, so the next due message and the next timeout are always at the
//! front of a queue (no per-session timers). Sockets go through quinn-udp (batched receive with
//! recvmmsg, GRO where the kernel has it) or, with `plain_udp`, plain `send_to`/`recv_from`.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};

use super::{Config, Counters, Msg, Session, Sink};
use crate::wire::canonical;

/// Receive slot size: replies are one short line; GRO may coalesce a few.
const SLOT: usize = 8 * 1024;
/// Longest sleep: the stop flag is seen within this.
const MAX_WAIT: Duration = Duration::from_millis(100);
const MAX_THREADS: usize = 4;
/// Sessions per thread below which another thread is not worth it.
const SESSIONS_PER_THREAD: usize = 2500;

struct Sock {
    socket: UdpSocket,
    /// quinn-udp state; `None` on the plain path.
    state: Option<UdpSocketState>,
}

impl Sock {
    fn open(target: SocketAddr, plain: bool) -> std::io::Result<Sock> {
        let bind: SocketAddr = if target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        // mio sockets are non-blocking.
        let socket = UdpSocket::bind(bind)?;
        let state = if plain {
            None
        } else {
            Some(UdpSocketState::new((&socket).into())?)
        };
        Ok(Sock { socket, state })
    }

    fn send(&self, target: SocketAddr, data: &[u8]) -> std::io::Result<()> {
        match &self.state {
            Some(state) => state.try_send(
                (&self.socket).into(),
                &Transmit {
                    destination: target,
                    ecn: None,
                    contents: data,
                    segment_size: None,
                    src_ip: None,
                },
            ),
            None => self.socket.send_to(data, target).map(|_| ()),
        }
    }
}

/// Sessions' sockets registered by session index; edge-triggered, so a ready socket is read until
/// it would block.
struct Poller(Poll);

impl Poller {
    fn new() -> Result<Poller> {
        Ok(Poller(Poll::new().context("cannot create a poll set")?))
    }

    fn add(&self, sock: &mut Sock, token: usize) -> std::io::Result<()> {
        self.0
            .registry()
            .register(&mut sock.socket, Token(token), Interest::READABLE)
    }

    fn remove(&self, sock: &mut Sock) {
        let _ = self.0.registry().deregister(&mut sock.socket);
    }

    fn wait(&mut self, events: &mut Events, timeout: Duration) {
        // EINTR and other failures end up as an empty wake-up; the loop re-checks its clocks.
        if self.0.poll(events, Some(timeout)).is_err() {
            events.clear();
        }
    }
}

struct Shard {
    cfg: Arc<Config>,
    sink: Sink,
    stop: Arc<AtomicBool>,
    start: Instant,
    poller: Poller,
    sessions: Vec<Session>,
    /// Sessions' sockets; `None` when opening a new one failed (new socket per message).
    socks: Vec<Option<Sock>>,
    offsets: Vec<Duration>,
    /// Messages in flight in send order: (session index, seq, deadline).
    deadlines: VecDeque<(usize, u64, Instant)>,
}

/// Opens every session's socket and starts the threads; returns how many parts report rows.
pub(super) fn start(cfg: Arc<Config>, sink: Sink, stop: Arc<AtomicBool>) -> Result<usize> {
    let n = cfg.sessions as usize;
    let threads = n.div_ceil(SESSIONS_PER_THREAD).clamp(1, MAX_THREADS);
    let mut shards: Vec<Shard> = Vec::with_capacity(threads);
    for _ in 0..threads {
        shards.push(Shard {
            cfg: cfg.clone(),
            sink: sink.clone(),
            stop: stop.clone(),
            start: Instant::now(),
            poller: Poller::new()?,
            sessions: Vec::new(),
            socks: Vec::new(),
            offsets: Vec::new(),
            deadlines: VecDeque::new(),
        });
    }
    // Session i goes to shard i % threads, so every shard's schedule is spread over the interval.
    for i in 0..cfg.sessions {
        let shard = &mut shards[i as usize % threads];
        let mut sock = match Sock::open(cfg.address, cfg.plain_udp) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => bail!(
                "cannot open socket {} of {}: too many open files: raise the limit (ulimit -n) or use fewer --sessions",
                i + 1,
                cfg.sessions
            ),
            Err(e) => return Err(e).context(format!("cannot open a UDP socket for session {i}")),
        };
        shard.poller.add(&mut sock, shard.sessions.len())?;
        shard.sessions.push(Session::new(i));
        shard.socks.push(Some(sock));
        shard.offsets.push(cfg.offset(i));
    }
    // The schedule starts once every socket is open (10,000 opens take a while): otherwise the
    // first messages would go out in one burst to catch up.
    let start = Instant::now();
    for (k, mut shard) in shards.into_iter().enumerate() {
        shard.start = start;
        std::thread::Builder::new()
            .name(format!("affinity-udp-{k}"))
            .spawn(move || shard.run())
            .context("cannot start a session thread")?;
    }
    Ok(threads)
}

impl Shard {
    fn run(mut self) {
        let mut storage = vec![0u8; SLOT * BATCH_SIZE];
        let mut meta = [RecvMeta::default(); BATCH_SIZE];
        let mut events = Events::with_capacity(256);
        let mut out = Vec::with_capacity(64);
        let (mut next, mut round) = (0usize, 0u32);
        let due = |this: &Shard, next: usize, round: u32| this.start + this.offsets[next] + this.cfg.interval * round;
        loop {
            let now = Instant::now();
            let stopping = self.stop.load(Ordering::Relaxed);
            if !stopping {
                while due(&self, next, round) <= now {
                    self.send(next, &mut out);
                    next += 1;
                    if next == self.sessions.len() {
                        next = 0;
                        round += 1;
                    }
                }
            }
            let now = Instant::now();
            while let Some(&(j, seq, deadline)) = self.deadlines.front() {
                if deadline > now {
                    break;
                }
                self.deadlines.pop_front();
                self.sessions[j].expire(seq, &self.sink);
            }
            if stopping && self.deadlines.is_empty() {
                break;
            }
            let mut wake = now + MAX_WAIT;
            if !stopping {
                wake = wake.min(due(&self, next, round));
            }
            if let Some(&(_, _, d)) = self.deadlines.front() {
                wake = wake.min(d);
            }
            self.poller.wait(&mut events, wake.saturating_duration_since(now));
            for ev in &events {
                self.drain(ev.token().0, &mut storage, &mut meta);
            }
        }
        let rows = self.sessions.iter().map(Session::row).collect();
        let _ = self.sink.tx.send(Msg::Rows(rows));
    }

    fn send(&mut self, j: usize, out: &mut Vec<u8>) {
        let now = Instant::now();
        if self.cfg.new_connection_per_message {
            // The old socket leaves the poll set and closes; its messages in flight expire as lost.
            if let Some(mut old) = self.socks[j].take() {
                self.poller.remove(&mut old);
            }
            let opened = Sock::open(self.cfg.address, self.cfg.plain_udp)
                .and_then(|mut sock| self.poller.add(&mut sock, j).map(|()| sock));
            match opened {
                Ok(sock) => self.socks[j] = Some(sock),
                Err(_) => Counters::add(&self.sink.counters.connect_failures),
            }
        }
        let seq = self.sessions[j].message(&self.cfg.prefix, out, now, &self.sink);
        self.deadlines.push_back((j, seq, now + self.cfg.timeout));
        // A failed send (no socket, full buffer, unreachable) is a message that is never answered:
        // it expires as lost like any other.
        if let Some(sock) = &self.socks[j] {
            let _ = sock.send(self.cfg.address, out);
        }
    }

    /// Reads every datagram waiting on session `j`'s socket.
    fn drain(&mut self, j: usize, storage: &mut [u8], meta: &mut [RecvMeta; BATCH_SIZE]) {
        let target = canonical(self.cfg.address);
        // Errors are pending ICMP reports, one per read (the socket keeps one, cleared by the read that
        // returns it); a bound keeps a socket that keeps failing from spinning.
        let mut errors = 0;
        loop {
            if errors == 8 {
                return;
            }
            let Some(sock) = &self.socks[j] else { return };
            match &sock.state {
                Some(state) => {
                    let mut bufs: Vec<IoSliceMut<'_>> = storage.chunks_mut(SLOT).map(IoSliceMut::new).collect();
                    let n = match state.recv((&sock.socket).into(), &mut bufs, meta) {
                        Ok(n) => n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                        // ICMP errors (port unreachable) for an earlier datagram: keep reading.
                        Err(_) => {
                            errors += 1;
                            continue;
                        }
                    };
                    drop(bufs);
                    for (k, m) in meta.iter().take(n).enumerate() {
                        let data = &storage[k * SLOT..k * SLOT + m.len];
                        let from_target = canonical(m.addr) == target;
                        for datagram in data.chunks(m.stride.max(1)) {
                            if from_target {
                                self.sessions[j].on_reply(datagram, &self.sink);
                            } else {
                                Counters::add(&self.sink.counters.stray);
                            }
                        }
                    }
                }
                None => {
                    let (len, from) = match sock.socket.recv_from(&mut storage[..SLOT]) {
                        Ok(r) => r,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                        Err(_) => {
                            errors += 1;
                            continue;
                        }
                    };
                    if canonical(from) == target {
                        self.sessions[j].on_reply(&storage[..len], &self.sink);
                    } else {
                        Counters::add(&self.sink.counters.stray);
                    }
                }
            }
        }
    }
}
