//! TCP sessions: one tokio task per session, each holding its connection (or, with a new connection
//! per message, opening one per message). A message is a request line; its reply is the line with
//! its `seq=`. The greeting line a server writes on accept carries no `seq=` and is skipped.
//!
//! A connection that failed (reset, closed) or missed two replies in a row is closed and replaced
//! at the next message: that is a new source port, which shows as an address change (and, without
//! affinity, usually a pod change). One missed reply keeps the connection, so a late reply is seen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{Config, Counters, Msg, Session, Sink};

/// Missed replies in a row after which a connection is replaced.
const MAX_MISSES: u32 = 2;
/// Longest reply line kept.
const MAX_LINE: usize = 4096;

pub(super) fn start(cfg: Arc<Config>, sink: Sink, stop: watch::Receiver<bool>, start: Instant) -> usize {
    let start = tokio::time::Instant::from_std(start);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..cfg.sessions {
        tasks.spawn(session(cfg.clone(), i, sink.clone(), stop.clone(), start));
    }
    let tx = sink.tx.clone();
    tokio::spawn(async move {
        let mut rows = Vec::with_capacity(tasks.len());
        while let Some(res) = tasks.join_next().await {
            if let Ok(row) = res {
                rows.push(row);
            }
        }
        let _ = tx.send(Msg::Rows(rows));
    });
    1
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(cfg: &Config, deadline: tokio::time::Instant) -> Option<Conn> {
        let stream = tokio::time::timeout_at(deadline, crate::storm::connect_tcp_to(cfg.address))
            .await
            .ok()?
            .ok()?;
        let _ = stream.set_nodelay(true);
        Some(Conn {
            stream,
            buf: Vec::with_capacity(256),
        })
    }

    /// The next line, or `None` on EOF, error or an overlong line.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(line);
            }
            if self.buf.len() > MAX_LINE {
                return None;
            }
            let mut chunk = [0u8; 512];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Closes with RST (SO_LINGER 0): no TIME_WAIT piles up with a connection per message.
    fn abort(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

async fn session(
    cfg: Arc<Config>,
    id: u32,
    sink: Sink,
    mut stop: watch::Receiver<bool>,
    start: tokio::time::Instant,
) -> super::SessionRow {
    let mut s = Session::new(id);
    let mut conn: Option<Conn> = None;
    let mut misses = 0u32;
    let mut out = Vec::with_capacity(64);
    let offset = cfg.offset(id);
    for round in 0u32.. {
        let due = start + offset + cfg.interval * round;
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if *stop.borrow() {
            break;
        }
        let sent_at = tokio::time::Instant::now();
        let deadline = sent_at + cfg.timeout;
        if conn.is_none() {
            conn = Conn::open(&cfg, deadline).await;
        }
        let seq = s.message(&cfg.prefix, &mut out, sent_at.into_std(), &sink);
        let Some(c) = conn.as_mut() else {
            Counters::add(&sink.counters.connect_failures);
            s.expire(seq, &sink);
            continue;
        };
        let mut broken = c.stream.write_all(&out).await.is_err();
        while !broken && s.pending.iter().any(|(p, _)| *p == seq) {
            match tokio::time::timeout_at(deadline, c.line()).await {
                Ok(Some(line)) => {
                    s.on_reply(&line, &sink);
                }
                Ok(None) => broken = true,
                Err(_) => break,
            }
        }
        if s.pending.is_empty() {
            misses = 0;
        } else {
            misses += 1;
            s.expire_all(&sink);
        }
        if broken || misses >= MAX_MISSES || cfg.new_connection_per_message {
            if let Some(c) = conn.take() {
                c.abort();
            }
            misses = 0;
        }
    }
    if let Some(c) = conn.take() {
        c.abort();
    }
    s.row()
}
