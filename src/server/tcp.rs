//! TCP: on accept write the identity line, then answer every received line.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::SessionCounts;
use crate::wire::{Identity, request, stats_line, stats_request};

/// Longest request line kept; longer input is answered per 256-byte chunk.
const MAX_LINE: usize = 256;

pub(super) async fn serve(listener: TcpListener, identity: Arc<Identity>, counts: Arc<SessionCounts>) -> Result<()> {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle(stream, peer, identity.clone(), counts.clone()));
            }
            // Out of file descriptors or a transient error: keep serving the others.
            Err(e) => {
                eprintln!("svclb serve: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, identity: Arc<Identity>, counts: Arc<SessionCounts>) {
    // Replies are small writes after the greeting: without NODELAY, Nagle holds each one until the
    // client's delayed ACK of the previous (up to 200 ms).
    let _ = stream.set_nodelay(true);
    let line = identity.line(peer);
    let mut out = Vec::with_capacity(line.len() + 32);
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; MAX_LINE];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf
            .iter()
            .position(|&b| b == b'\n')
            .or_else(|| (buf.len() >= MAX_LINE).then(|| buf.len() - 1))
        {
            out.clear();
            if let Some(session) = stats_request(&buf[..pos]) {
                out.extend_from_slice(stats_line(&identity.name, session, counts.get(session)).as_bytes());
            } else {
                out.extend_from_slice(line.as_bytes());
                if let Some((session, seq)) = request(&buf[..pos]) {
                    counts.record(session);
                    out.extend_from_slice(b" seq=");
                    out.extend_from_slice(seq.as_bytes());
                }
            }
            out.push(b'\n');
            buf.drain(..=pos);
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}
