//! `--srccidr`: a random valid host address of a CIDR per connection, IPv4 and IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail};
use ipnet::IpNet;

/// Picks random host addresses of a network.
#[derive(Debug, Clone)]
pub struct SourcePicker {
    v4: bool,
    first: u128,
    count: u128,
}

impl SourcePicker {
    /// Host addresses of `net`: IPv4 skips the network and broadcast addresses (except /31 and
    /// /32), IPv6 skips the subnet-router anycast address (except /127 and /128).
    pub fn new(net: IpNet, target: IpAddr) -> Result<Self> {
        if net.addr().is_ipv4() != target.is_ipv4() {
            bail!(
                "--srccidr {net} is {} but the target {target} is {}: use a source range of the target's family",
                family(net.addr()),
                family(target)
            );
        }
        let (first, last, v4) = match net {
            IpNet::V4(n) => {
                let (lo, hi) = (u32::from(n.network()) as u128, u32::from(n.broadcast()) as u128);
                if n.prefix_len() < 31 {
                    (lo + 1, hi - 1, true)
                } else {
                    (lo, hi, true)
                }
            }
            IpNet::V6(n) => {
                let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                if n.prefix_len() < 127 {
                    (lo + 1, hi, false)
                } else {
                    (lo, hi, false)
                }
            }
        };
        Ok(Self {
            v4,
            first,
            count: last - first + 1,
        })
    }

    /// A random host address.
    pub fn pick(&self) -> IpAddr {
        let n = self.first + rand::random_range(0..self.count);
        if self.v4 {
            IpAddr::V4(Ipv4Addr::from(n as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(n))
        }
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// The one-line error for a source address that cannot be bound, with the fix.
pub fn bind_hint(src: IpAddr, e: &std::io::Error, cidr: Option<IpNet>) -> anyhow::Error {
    let cidr = cidr.map_or_else(|| src.to_string(), |c| c.to_string());
    let fix = if src.is_ipv4() {
        format!(
            "`ip route add local {cidr} dev lo` (plus `sysctl -w net.ipv4.ip_nonlocal_bind=1` to send from it \
             over other interfaces)"
        )
    } else {
        // IPv6 binds only assigned addresses unless non-local binding is allowed.
        format!("`ip -6 route add local {cidr} dev lo` and `sysctl -w net.ipv6.ip_nonlocal_bind=1`")
    };
    anyhow::anyhow!("cannot bind source address {src} of --srccidr {cidr}: {e}; make the range local first: {fix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(cidr: &str, target: &str) -> Vec<IpAddr> {
        let p = SourcePicker::new(cidr.parse().unwrap(), target.parse().unwrap()).unwrap();
        (0..2000).map(|_| p.pick()).collect()
    }

    #[test]
    fn ipv4_hosts_only() {
        let all = picks("10.1.2.0/30", "127.0.0.1");
        assert!(
            all.iter()
                .all(|a| ["10.1.2.1", "10.1.2.2"].contains(&a.to_string().as_str()))
        );
        assert!(all.iter().any(|a| a.to_string() == "10.1.2.1"));
        assert!(all.iter().any(|a| a.to_string() == "10.1.2.2"));
        assert!(
            picks("127.0.0.9/32", "127.0.0.1")
                .iter()
                .all(|a| a.to_string() == "127.0.0.9")
        );
    }

    #[test]
    fn ipv6_skips_anycast() {
        let all = picks("fd00::/126", "::1");
        assert!(all.iter().all(|a| a.to_string() != "fd00::"));
        assert!(all.iter().any(|a| a.to_string() == "fd00::3"));
    }

    #[test]
    fn family_mismatch_is_an_error() {
        let err = SourcePicker::new("fd00::/64".parse().unwrap(), "127.0.0.1".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("IPv6"), "{err}");
    }
}
