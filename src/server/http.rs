//! HTTP (hyper): `/` the identity line, `/hostname` and `/clientip` as agnhost netexec,
//! `/bytes?n=N` N bytes streamed (for transfer and cost tests, the server's reply line in the
//! `x-svclb-backend` header), `/stats` the per-session received
//! counters as `<session> <received>` lines, streamed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::SessionCounts;
use super::conns::Conns;
use crate::wire::{BACKEND_HEADER, Identity, canonical};

/// Largest `/bytes` response: 16 GiB is plenty for transfer tests and bounds a typo.
const MAX_BYTES: u64 = 16 << 30;
const CHUNK: usize = 64 * 1024;
static ZEROS: [u8; CHUNK] = [b'x'; CHUNK];

pub(super) async fn serve(
    listener: TcpListener,
    identity: Arc<Identity>,
    counts: Arc<SessionCounts>,
    conns: Arc<Conns>,
) -> Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    // Without a timer hyper enforces no header timeout: a slowloris client would hold its slot.
    http.timer(TokioTimer::new())
        .header_read_timeout(conns.limits().header_timeout);
    conns
        .accept(&listener, "http", |stream, peer, slot| {
            let identity = identity.clone();
            let counts = counts.clone();
            let service = hyper::service::service_fn(move |req| {
                let identity = identity.clone();
                let counts = counts.clone();
                async move { Ok::<_, Infallible>(route(&req, &identity, &counts, canonical(peer))) }
            });
            let conn = http.serve_connection(TokioIo::new(slot.track(stream)), service);
            let conns = conns.clone();
            tokio::spawn(slot.run(async move {
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = conns.draining() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            }));
        })
        .await;
    Ok(())
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

fn text(status: StatusCode, body: String) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}

fn route(
    req: &Request<hyper::body::Incoming>,
    identity: &Identity,
    counts: &Arc<SessionCounts>,
    peer: SocketAddr,
) -> Reply {
    match req.uri().path() {
        "/" => text(StatusCode::OK, format!("{}\n", identity.line(peer))),
        "/hostname" => text(StatusCode::OK, identity.name.clone()),
        "/clientip" => text(StatusCode::OK, peer.to_string()),
        "/stats" => Response::builder()
            .header("content-type", "text/plain; charset=utf-8")
            .body(Stats::new(counts.clone()).boxed())
            .expect("static response parts are valid"),
        "/bytes" => match bytes_param(req.uri().query()) {
            Ok(n) => {
                let mut reply = Response::builder()
                    .header("content-type", "application/octet-stream")
                    .header("content-length", n);
                // Who served the bytes, for storms that fetch them (a name that is no header
                // value is left out: the storm then counts the reply as unparsable).
                if let Ok(line) = hyper::header::HeaderValue::from_str(&identity.line(peer)) {
                    reply = reply.header(BACKEND_HEADER, line);
                }
                reply
                    .body(Zeros { left: n }.boxed())
                    .expect("static response parts are valid")
            }
            Err(msg) => text(StatusCode::BAD_REQUEST, format!("{msg}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /hostname, /clientip, /stats or /bytes?n=N\n".into(),
        ),
    }
}

fn bytes_param(query: Option<&str>) -> Result<u64, String> {
    let n = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("n="))
        .ok_or("missing n: use /bytes?n=N")?;
    let n: u64 = n.parse().map_err(|_| format!("bad n={n}: want a byte count"))?;
    if n > MAX_BYTES {
        return Err(format!("n={n} is over the limit of {MAX_BYTES}"));
    }
    Ok(n)
}

/// A body of `left` filler bytes, produced in 64 KiB frames without allocating.
struct Zeros {
    left: u64,
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// The `/stats` body, one frame per shard of the counters: each lock is held while one shard is
/// written, never while the whole list is built or sent, and the connection's task yields after
/// every frame (hyper would otherwise write frames back to back while the client keeps up), so
/// replies to requests go on meanwhile.
struct Stats {
    counts: Arc<SessionCounts>,
    shard: usize,
    yielding: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl Stats {
    fn new(counts: Arc<SessionCounts>) -> Self {
        Self {
            counts,
            shard: 0,
            yielding: None,
        }
    }
}

impl Body for Stats {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(yielding) = self.yielding.as_mut() {
            std::task::ready!(yielding.as_mut().poll(cx));
            self.yielding = None;
        }
        while let Some(lines) = self.counts.shard_lines(self.shard) {
            self.shard += 1;
            if !lines.is_empty() {
                self.yielding = Some(Box::pin(tokio::task::yield_now()));
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(lines)))));
            }
        }
        Poll::Ready(None)
    }
}

#[cfg(test)]
mod tests {
    use super::bytes_param;

    #[test]
    fn bytes_query() {
        assert_eq!(bytes_param(Some("n=10")), Ok(10));
        assert_eq!(bytes_param(Some("a=1&n=0")), Ok(0));
        assert!(bytes_param(None).is_err());
        assert!(bytes_param(Some("n=x")).is_err());
        assert!(bytes_param(Some("n=99999999999999999")).is_err());
    }
}
