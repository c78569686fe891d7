//! The test server against hostile and careless peers: long session names, idle and slow
//! connections, descriptor exhaustion, empty datagrams, and where HTTP listens. Real `serve`
//! processes on their own 127.0.16.x addresses.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-svclb");

/// A running `serve`, killed on drop, whose stderr is kept (a closed stderr would fail its logging).
struct Serve {
    child: Child,
    addr: SocketAddr,
    http: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    /// `serve --name pod --node n --zone z ARGS`, with the open-file limit set to `nofile` when given.
    fn start(args: &[&str], nofile: Option<u64>) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--name", "pod", "--node", "n", "--zone", "z"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().expect("start serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let banner = lines.next().expect("serve banner").unwrap();
        // "svclb serve: NAME on tcp+udp ADDR[, http ADDR]"
        let after = banner
            .split("tcp+udp ")
            .nth(1)
            .unwrap_or_else(|| panic!("banner: {banner}"));
        let mut parts = after.trim().split(", http ");
        let addr = parts.next().unwrap().parse().unwrap();
        let http = parts.next().map(|h| h.parse().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        Self { child, addr, http, log }
    }

    fn status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Peak resident memory in KiB.
    fn peak_rss_kib(&self) -> u64 {
        self.status("VmHWM:")
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn udp_client(ip: &str) -> UdpSocket {
    let u = UdpSocket::bind(format!("{ip}:0")).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    u
}

fn ask(u: &UdpSocket, to: SocketAddr, req: &[u8]) -> String {
    u.send_to(req, to).unwrap();
    let mut buf = [0u8; 1024];
    let n = u
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no reply to {} bytes: {e}", req.len()));
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// Connects and reads the greeting line.
fn greeted(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 256];
    let n = c.read(&mut buf)?;
    if !buf[..n].starts_with(b"pod ") {
        return Err(std::io::Error::other(format!(
            "greeting {:?}",
            String::from_utf8_lossy(&buf[..n])
        )));
    }
    Ok(c)
}

/// An HTTP/1.0 GET (as the affinity lab test sends): the body ends with the connection.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    all
}

/// How long until the peer closes `c` (reads whatever it sends meanwhile); `None` if still open at `limit`.
fn closed_within(c: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    c.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    while start.elapsed() < limit {
        match c.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// #16.9: a request is at most 256 bytes, so session names are capped: 2,000 datagrams with 60 KB
/// names (120 MB of names) are answered with the plain line, not counted, and leave memory as it was.
#[test]
fn long_session_names_are_answered_but_not_counted_and_do_not_grow_memory() {
    let s = Serve::start(&["--address", "127.0.16.1:0", "--http", "127.0.16.1:0"], None);
    let u = udp_client("127.0.16.1");
    let me = u.local_addr().unwrap();
    let plain = format!("pod node=n zone=z client={me}\n");
    // The longest request that counts, and the first that does not.
    let longest = "m".repeat(256 - "svclb  1".len());
    assert_eq!(
        ask(&u, s.addr, format!("svclb {longest} 1").as_bytes()),
        format!("{} seq=1\n", plain.trim_end())
    );
    let over = format!("{longest}x");
    assert_eq!(ask(&u, s.addr, format!("svclb {over} 1").as_bytes()), plain);
    assert_eq!(
        ask(&u, s.addr, format!("stats {longest}").as_bytes()),
        format!("pod session={longest} received=1\n")
    );

    let before = s.peak_rss_kib();
    let filler = "x".repeat(60_000);
    let start = Instant::now();
    for i in 0..2_000 {
        assert_eq!(
            ask(&u, s.addr, format!("svclb {i:05}{filler} {i}").as_bytes()),
            plain,
            "datagram {i}"
        );
    }
    let grown_kib = s.peak_rss_kib().saturating_sub(before);
    // Over TCP the same: a line over the cap is answered per 256-byte piece, never counted.
    let mut c = greeted(s.addr).unwrap();
    writeln!(c, "svclb {over} 2").unwrap();
    let mut got = String::new();
    while got.matches('\n').count() < 2 {
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap();
        got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    assert!(!got.contains("seq="), "{got}");
    let stats = http_get(s.http.unwrap(), "/stats");
    let body = stats.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(body, format!("{longest} 1\n"), "only the capped name is counted");
    assert!(
        grown_kib < 20 * 1024,
        "2,000 long-named datagrams grew peak RSS by {grown_kib} KiB (in {:?})",
        start.elapsed()
    );
}

/// #16.13: a 0-byte datagram is a datagram: it gets the line.
#[test]
fn zero_byte_datagram_is_answered() {
    let s = Serve::start(&["--address", "127.0.16.2:0", "--no-http"], None);
    let u = udp_client("127.0.16.2");
    let me = u.local_addr().unwrap();
    assert_eq!(ask(&u, s.addr, b""), format!("pod node=n zone=z client={me}\n"));
}

/// #16.10: a connection that moves nothing for --idle-timeout is closed; one that talks is kept.
#[test]
fn idle_connection_is_closed_after_the_idle_timeout() {
    let s = Serve::start(
        &["--address", "127.0.16.3:0", "--no-http", "--idle-timeout", "1s"],
        None,
    );
    let mut idle = greeted(s.addr).unwrap();
    let mut talking = greeted(s.addr).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    for i in 0..8 {
        std::thread::sleep(Duration::from_millis(250));
        writeln!(talking, "svclb t {i}").unwrap();
        let n = talking.read(&mut buf).unwrap();
        assert!(
            std::str::from_utf8(&buf[..n])
                .unwrap()
                .ends_with(&format!(" seq={i}\n"))
        );
    }
    // 2 s passed: the idle one was closed after about 1 s, the talking one is still served.
    let closed = closed_within(&mut idle, Duration::from_millis(500));
    assert!(
        closed.is_some(),
        "idle connection still open after {:?}",
        start.elapsed()
    );
    // Quiet now, it is closed an idle timeout after its last reply.
    let closed = closed_within(&mut talking, Duration::from_secs(3)).expect("talking connection closed once quiet");
    assert!(
        (Duration::from_millis(500)..=Duration::from_millis(2500)).contains(&closed),
        "{closed:?}"
    );
}

/// #16.10: a slowloris HTTP client (headers a byte at a time, never finished) is dropped after
/// --header-timeout although its bytes keep the idle timer happy.
#[test]
fn slowloris_http_client_is_dropped_after_the_header_timeout() {
    let s = Serve::start(
        &[
            "--address",
            "127.0.16.4:0",
            "--http",
            "127.0.16.4:0",
            "--header-timeout",
            "1s",
        ],
        None,
    );
    let mut c = TcpStream::connect(s.http.unwrap()).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = loop {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "slowloris client still connected after 5 s"
        );
        if c.write_all(b"X").is_err() {
            break start.elapsed();
        }
        match c.read(&mut buf) {
            Ok(0) => break start.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break start.elapsed(),
        }
    };
    assert!(closed >= Duration::from_millis(800), "dropped too early: {closed:?}");
    // A normal request on a new connection is answered.
    assert!(http_get(s.http.unwrap(), "/hostname").ends_with("\r\n\r\npod"));
}

/// #16.10: a server whose descriptors would all go to idle peers (2,000 of them at an open-file
/// limit of 600) closes the least recently active ones instead, and answers a fresh storm at once.
#[test]
fn idle_connections_beyond_the_cap_do_not_lock_out_new_ones() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let s = Serve::start(&["--address", "127.0.16.5:0", "--no-http"], Some(600));
    let mut idle = Vec::with_capacity(2_000);
    for i in 0..2_000 {
        idle.push(TcpStream::connect(s.addr).unwrap_or_else(|e| panic!("idle connection {i}: {e}")));
    }
    let start = Instant::now();
    for i in 0..300 {
        let mut c = greeted(s.addr).unwrap_or_else(|e| panic!("storm connection {i} after {:?}: {e}", start.elapsed()));
        writeln!(c, "svclb storm {i}").unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).unwrap();
        assert!(
            std::str::from_utf8(&buf[..n])
                .unwrap()
                .ends_with(&format!(" seq={i}\n"))
        );
    }
    let took = start.elapsed();
    // The default cap (600 less the reserve, at least half) held: descriptors stay under the limit.
    let fds = s.open_fds();
    assert!(fds <= 600, "{fds} descriptors open");
    assert!(took < Duration::from_secs(5), "300 new connections took {took:?}");
    assert!(
        !s.log().iter().any(|l| l.contains("Too many open files")),
        "{:?}",
        s.log()
    );
}

/// #16.10: out of descriptors, the server backs off and logs accept errors at most once a second;
/// once descriptors are back, the waiting connections are answered.
#[test]
fn accept_errors_back_off_and_are_logged_at_most_once_a_second() {
    let s = Serve::start(&["--address", "127.0.16.6:0", "--no-http"], Some(600));
    let pid = s.child.id() as libc::pid_t;
    let set_nofile = |n: u64| {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: 600,
        };
        // SAFETY: plain syscall on a child we own, with valid pointers.
        assert_eq!(
            unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) },
            0
        );
    };
    set_nofile(u64::try_from(s.open_fds()).unwrap() + 5);
    let conns: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(s.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(2_500));
    let errors: Vec<String> = s.log().into_iter().filter(|l| l.contains("accept")).collect();
    assert!(
        (1..=4).contains(&errors.len()),
        "accept errors over 2.5 s logged {} times: {errors:?}",
        errors.len()
    );
    assert!(
        errors.iter().any(|l| l.contains("more errors since the last message")),
        "{errors:?}"
    );
    set_nofile(600);
    for (i, mut c) in conns.into_iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 256];
        let n = c
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("connection {i} never greeted: {e}"));
        assert!(buf[..n].starts_with(b"pod "), "connection {i}");
    }
}

/// #17.3: HTTP listens on the host of --address (port 8080) unless --http says otherwise, and a
/// taken port names the flags that fix it.
#[test]
fn http_binds_the_host_of_address_and_a_taken_port_names_the_flags() {
    let s = Serve::start(&["--address", "127.0.16.7:0"], None);
    let http = s.http.expect("HTTP served by default");
    assert_eq!(http, "127.0.16.7:8080".parse().unwrap());
    assert!(http_get(http, "/hostname").ends_with("\r\n\r\npod"));
    // Not on every interface: another loopback address has nothing on 8080.
    assert!(TcpStream::connect("127.0.16.8:8080").is_err());

    let out = Command::new(BIN)
        .args(["serve", "--name", "pod2", "--address", "127.0.16.7:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot listen on HTTP 127.0.16.7:8080")
            && err.contains("--http ADDR")
            && err.contains("--no-http"),
        "{err}"
    );
}

fn sigterm(s: &Serve) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
}

/// Polls the child until it exits; its status, or None if still running at `limit`.
fn exited_within(s: &mut Serve, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = s.child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// SIGTERM: everything is served for `--drain-delay`; then TCP, UDP and HTTP stop (new
/// connections refused, datagrams unanswered), an open TCP connection is still answered until
/// its client closes it, an idle kept-alive HTTP connection is closed (both were open when the
/// listeners closed), and the server exits 0
/// once nothing is open.
#[test]
fn sigterm_drains_then_closes_listeners_and_finishes_open_connections() {
    let mut s = Serve::start(
        &[
            "--address",
            "127.0.16.9:0",
            "--http",
            "127.0.16.9:0",
            "--drain-delay",
            "1s",
        ],
        None,
    );
    let (addr, http) = (s.addr, s.http.unwrap());
    let u = udp_client("127.0.16.9");
    let mut held = greeted(addr).unwrap();
    let mut kept_alive = TcpStream::connect(http).unwrap();
    write!(kept_alive, "GET /hostname HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    kept_alive.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(kept_alive.read(&mut buf).unwrap() > 0);
    let t0 = Instant::now();
    sigterm(&s);
    std::thread::sleep(Duration::from_millis(200));
    // Draining: still serving new connections and datagrams.
    greeted(addr).expect("a new connection during the drain delay");
    assert!(ask(&u, addr, b"hostname").starts_with("pod"));
    assert!(http_get(http, "/hostname").contains("pod"));
    assert!(s.child.try_wait().unwrap().is_none());
    // After the drain delay: the idle HTTP connection is closed, new connections are refused,
    // datagrams go unanswered; the held connection is still served.
    let closed = closed_within(&mut kept_alive, Duration::from_secs(3)).expect("kept-alive HTTP closed");
    assert!(t0.elapsed() + closed >= Duration::from_millis(900), "closed early");
    std::thread::sleep(Duration::from_millis(200));
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    assert!(TcpStream::connect_timeout(&http, Duration::from_secs(1)).is_err());
    u.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    u.send_to(b"hostname", addr).unwrap();
    assert!(u.recv(&mut buf).is_err(), "UDP answered after the drain");
    writeln!(held, "svclb held 7").unwrap();
    let n = held.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with(" seq=7\n"));
    assert!(s.child.try_wait().unwrap().is_none(), "exited with a connection open");
    drop(held);
    let status = exited_within(&mut s, Duration::from_secs(3)).expect("exits once nothing is open");
    assert!(status.success(), "{status:?}");
    assert!(
        s.log().iter().any(|l| l.contains("finishing 2 open connections")),
        "{:?}",
        s.log()
    );
}

/// A SIGTERM carrying a value (sigqueue) drains for that many milliseconds whatever
/// `--drain-delay` says; a second SIGTERM ends the drain at once.
#[test]
fn queued_sigterm_value_sets_the_drain_and_a_second_sigterm_ends_it() {
    let mut s = Serve::start(&["--address", "127.0.16.10:0", "--no-http"], None);
    svclb::server::terminate(s.child.id(), Duration::from_millis(800)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    greeted(s.addr).expect("still accepting: the queued value, not --drain-delay 0");
    let status = exited_within(&mut s, Duration::from_secs(3)).expect("exits after the drain");
    assert!(status.success(), "{status:?}");

    let mut s = Serve::start(
        &["--address", "127.0.16.10:0", "--no-http", "--drain-delay", "30s"],
        None,
    );
    let _held = greeted(s.addr).unwrap();
    sigterm(&s);
    std::thread::sleep(Duration::from_millis(200));
    assert!(s.child.try_wait().unwrap().is_none(), "draining");
    sigterm(&s);
    let status = exited_within(&mut s, Duration::from_secs(2)).expect("the second SIGTERM ends it");
    assert!(status.success(), "{status:?}");
}
