//! TCP: on accept write the identity line, then answer every received line.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::SessionCounts;
use super::conns::Conns;
use crate::wire::{Identity, MAX_REQUEST, request, stats_line, stats_request};

pub(super) async fn serve(
    listener: TcpListener,
    identity: Arc<Identity>,
    counts: Arc<SessionCounts>,
    conns: Arc<Conns>,
) -> Result<()> {
    conns
        .accept(&listener, "tcp", |stream, peer, slot| {
            // Replies are small writes after the greeting: without NODELAY, Nagle holds each one
            // until the client's delayed ACK of the previous (up to 200 ms).
            let _ = stream.set_nodelay(true);
            let stream = slot.track(stream);
            tokio::spawn(slot.run(handle(stream, peer, identity.clone(), counts.clone())));
        })
        .await;
    Ok(())
}

/// Answers the lines of one connection; a line longer than [`MAX_REQUEST`] is answered per
/// `MAX_REQUEST`-byte piece.
async fn handle(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    peer: SocketAddr,
    identity: Arc<Identity>,
    counts: Arc<SessionCounts>,
) {
    let line = identity.line(peer);
    let mut out = Vec::with_capacity(line.len() + 32);
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; MAX_REQUEST];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        // (end of the line, start of the next): at the newline, or a piece of a long line.
        while let Some((end, next)) = match buf.iter().take(MAX_REQUEST + 1).position(|&b| b == b'\n') {
            Some(pos) => Some((pos, pos + 1)),
            None => (buf.len() > MAX_REQUEST).then_some((MAX_REQUEST, MAX_REQUEST)),
        } {
            out.clear();
            if let Some(session) = stats_request(&buf[..end]) {
                out.extend_from_slice(stats_line(&identity.name, session, counts.get(session)).as_bytes());
            } else {
                out.extend_from_slice(line.as_bytes());
                if let Some((session, seq)) = request(&buf[..end]) {
                    counts.record(session);
                    out.extend_from_slice(b" seq=");
                    out.extend_from_slice(seq.as_bytes());
                }
            }
            out.push(b'\n');
            buf.drain(..next);
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}
