//! The yardstick for `spread`'s connection rate: the minimal tokio connect / read / close loop
//! (SO_LINGER 0, as the storm closes). Usage: tokio_baseline ADDR CONNS PARALLEL
//! Prints `<conns> <seconds> <conn/s>`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: tokio_baseline ADDR CONNS PARALLEL";
    let addr: SocketAddr = args.next().expect(usage).parse().expect(usage);
    let conns: u64 = args.next().expect(usage).parse().expect(usage);
    let parallel: usize = args.next().expect(usage).parse().expect(usage);
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (next, ok) = (next.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while next.fetch_add(1, Ordering::Relaxed) < conns {
                if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await
                    && matches!(s.read(&mut buf).await, Ok(n) if n > 0)
                {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let secs = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!("{ok} {secs:.3} {:.0}", ok as f64 / secs);
}
