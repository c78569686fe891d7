//! UDP with quinn-udp: batched receive (recvmmsg, GRO) and replies sent from the address each
//! datagram was sent to (IP_PKTINFO), so a wildcard-bound server answers correctly on any address.

use std::io::IoSliceMut;
use std::sync::Arc;

use anyhow::Result;
use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::SessionCounts;
use crate::wire::{Identity, canonical, request, stats_line, stats_request};

const BUF_SIZE: usize = 64 * 1024;

pub(super) struct UdpServer {
    socket: UdpSocket,
    state: UdpSocketState,
    identity: Arc<Identity>,
    counts: Arc<SessionCounts>,
}

impl UdpServer {
    pub(super) fn new(socket: UdpSocket, identity: Arc<Identity>, counts: Arc<SessionCounts>) -> Result<Self> {
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Self {
            socket,
            state,
            identity,
            counts,
        })
    }

    pub(super) async fn serve(self) -> Result<()> {
        let mut storage = vec![0u8; BUF_SIZE * BATCH_SIZE];
        let mut meta = [RecvMeta::default(); BATCH_SIZE];
        let mut reply = Vec::with_capacity(256);
        loop {
            let count = {
                let mut bufs: Vec<IoSliceMut<'_>> = storage.chunks_mut(BUF_SIZE).map(IoSliceMut::new).collect();
                self.socket
                    .async_io(Interest::READABLE, || {
                        self.state.recv((&self.socket).into(), &mut bufs, &mut meta)
                    })
                    .await
            };
            let count = match count {
                Ok(n) => n,
                // ICMP errors for earlier replies surface here; they concern one peer only.
                Err(_) => continue,
            };
            for (i, m) in meta.iter().take(count).enumerate() {
                let buf = &storage[i * BUF_SIZE..i * BUF_SIZE + m.len];
                let stride = m.stride.max(1);
                // A 0-byte datagram is a datagram too: it gets the line.
                for datagram in buf.chunks(stride).chain(buf.is_empty().then_some(buf)) {
                    self.build_reply(datagram, m, &mut reply);
                    let transmit = Transmit {
                        destination: m.addr,
                        ecn: None,
                        contents: &reply,
                        segment_size: None,
                        src_ip: m.dst_ip,
                    };
                    // Best effort, like any UDP server: a full send buffer loses this reply.
                    let _ = self
                        .socket
                        .async_io(Interest::WRITABLE, || {
                            self.state.try_send((&self.socket).into(), &transmit)
                        })
                        .await;
                }
            }
        }
    }

    fn build_reply(&self, datagram: &[u8], meta: &RecvMeta, reply: &mut Vec<u8>) {
        reply.clear();
        let peer = canonical(meta.addr);
        match trimmed(datagram) {
            b"hostname" => reply.extend_from_slice(self.identity.name.as_bytes()),
            b"clientip" => reply.extend_from_slice(peer.to_string().as_bytes()),
            data => {
                if let Some(session) = stats_request(data) {
                    let line = stats_line(&self.identity.name, session, self.counts.get(session));
                    reply.extend_from_slice(line.as_bytes());
                    reply.push(b'\n');
                    return;
                }
                reply.extend_from_slice(self.identity.line(peer).as_bytes());
                if let Some((session, seq)) = request(datagram) {
                    self.counts.record(session);
                    reply.extend_from_slice(b" seq=");
                    reply.extend_from_slice(seq.as_bytes());
                }
                reply.push(b'\n');
            }
        }
    }
}

fn trimmed(data: &[u8]) -> &[u8] {
    let end = data.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |p| p + 1);
    &data[..end]
}
