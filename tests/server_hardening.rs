//! The test server against hostile and careless peers. Real `serve` processes on their own
//! 127.0.16.x addresses.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-svclb");

/// A running `serve`, killed on drop, whose stderr is drained (a closed stderr would fail its logging).
struct Serve {
    child: Child,
    addr: SocketAddr,
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
        // "svclb serve: NAME on tcp+udp ADDR"
        let after = banner
            .split("tcp+udp ")
            .nth(1)
            .unwrap_or_else(|| panic!("banner: {banner}"));
        let addr = after.trim().parse().unwrap();
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, addr }
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

/// #16.13: a 0-byte datagram is a datagram: it gets the line.
#[test]
fn zero_byte_datagram_is_answered() {
    let s = Serve::start(&["--address", "127.0.16.2:0", "--no-http"]);
    let u = udp_client("127.0.16.2");
    let me = u.local_addr().unwrap();
    assert_eq!(ask(&u, s.addr, b""), format!("pod node=n zone=z client={me}\n"));
}
