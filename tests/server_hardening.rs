//! The test server against hostile and careless peers, and where it listens. Real `serve`
//! processes on their own 127.0.16.x addresses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-svclb");

/// A running `serve`, killed on drop, whose stderr is drained (a closed stderr would fail its logging).
struct Serve {
    child: Child,
    addr: SocketAddr,
    http: Option<SocketAddr>,
}

impl Serve {
    /// `serve --name pod --node n --zone z ARGS`.
    fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--name", "pod", "--node", "n", "--zone", "z"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
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
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, addr, http }
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

/// #16.9: a request is at most 256 bytes, so session names are capped: 2,000 datagrams with 60 KB
/// names (120 MB of names) are answered with the plain line, not counted, and leave memory as it was.
#[test]
fn long_session_names_are_answered_but_not_counted_and_do_not_grow_memory() {
    let s = Serve::start(&["--address", "127.0.16.1:0", "--http", "127.0.16.1:0"]);
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
    let s = Serve::start(&["--address", "127.0.16.2:0", "--no-http"]);
    let u = udp_client("127.0.16.2");
    let me = u.local_addr().unwrap();
    assert_eq!(ask(&u, s.addr, b""), format!("pod node=n zone=z client={me}\n"));
}

/// #17.3: HTTP listens on the host of --address (port 8080) unless --http says otherwise, and a
/// taken port names the flags that fix it.
#[test]
fn http_binds_the_host_of_address_and_a_taken_port_names_the_flags() {
    let s = Serve::start(&["--address", "127.0.16.7:0"]);
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
