//! The lab's IPv6 plumbing (`lab up --ip-family ipv6|dual`): every interface that has an IPv4
//! address gets its IPv6 counterpart ([`v6`]: the lab's ULA /96 and the IPv4 bits), with the
//! same MAC, permanent neighbour entries and routes as its IPv4 side. Addresses are added
//! `nodad` (no duplicate address detection: they are unique by construction, and a tentative
//! address would drop the first packets). Pods route through a link-local gateway, `fe80::1`,
//! a permanent neighbour entry naming the node's end of their veth. Everything stays in the
//! lab's namespaces, as the IPv4 side.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::service::IpFamily;

use super::topology::{CLIENT_IP, MacOf, NODE_NET_PREFIX, NODE_NET_ROUTER, lb_route, mac_text, v6, v6_net};
use super::{Node, Pod};

/// The node network's prefix length in IPv6.
const NODE_NET_PREFIX_V6: u8 = NODE_NET_PREFIX + 96;

/// Sysctls a node needs to route IPv6 (new interfaces inherit `default`).
pub(super) const NODE_SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv6/conf/all/forwarding", "1"),
    ("net/ipv6/conf/default/forwarding", "1"),
];

/// The client ignores ICMPv6 redirects: IPv6 has no `send_redirects` to stop a node from sending
/// them when it forwards the client's NodePort traffic back onto the node network.
pub(super) const CLIENT_SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv6/conf/all/accept_redirects", "0"),
    ("net/ipv6/conf/default/accept_redirects", "0"),
];

fn neigh(b: &mut String, of: MacOf, ip: Ipv4Addr, dev: &str) {
    let _ = writeln!(
        b,
        "neigh add {} lladdr {} dev {dev} nud permanent",
        v6(ip),
        mac_text(of, ip)
    );
}

/// The router's address on the bridge (`ip -batch` lines in the `net` namespace).
pub(super) fn router(b: &mut String) {
    let _ = writeln!(b, "addr add {}/{NODE_NET_PREFIX_V6} dev br0 nodad", v6(NODE_NET_ROUTER));
}

/// Node `n`'s address, neighbours and routes (after its IPv4 `eth0` is up).
pub(super) fn node(b: &mut String, n: &Node, nodes: &[Node]) {
    let _ = writeln!(b, "addr add {}/{NODE_NET_PREFIX_V6} dev eth0 nodad", v6(n.ip));
    let others: Vec<&Node> = nodes.iter().filter(|o| o.name != n.name).collect();
    for ip in others.iter().map(|o| o.ip).chain([NODE_NET_ROUTER, CLIENT_IP]) {
        neigh(b, MacOf::NodeNet, ip, "eth0");
    }
    for o in &others {
        let _ = writeln!(b, "route add {} via {} dev eth0", v6_net(o.pod_cidr), v6(o.ip));
    }
    let _ = writeln!(b, "route add default via {} dev eth0", v6(NODE_NET_ROUTER));
}

/// The client's address, neighbours and route to the LoadBalancer IP: via the first node, or
/// with `ecmp` over every node (the load balancer's health checks then narrow it).
pub(super) fn client(b: &mut String, nodes: &[Node], ecmp: bool) {
    let _ = writeln!(b, "addr add {}/{NODE_NET_PREFIX_V6} dev eth0 nodad", v6(CLIENT_IP));
    for ip in nodes.iter().map(|n| n.ip).chain([NODE_NET_ROUTER]) {
        neigh(b, MacOf::NodeNet, ip, "eth0");
    }
    let hops: Vec<Ipv4Addr> = if ecmp {
        nodes.iter().map(|n| n.ip).collect()
    } else {
        vec![nodes[0].ip]
    };
    let _ = writeln!(b, "route add {}", lb_route(IpFamily::Ipv6, &hops));
}

/// On pod `p`'s node: its neighbour entry and its /128 on the node's end of its veth.
pub(super) fn node_side_of_pod(b: &mut String, p: &Pod) {
    neigh(b, MacOf::Pod, p.ip, &p.veth);
    let _ = writeln!(b, "route add {}/128 dev {}", v6(p.ip), p.veth);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_gets_its_address_neighbours_and_routes_in_ipv6() {
        let node = |i: u8| Node {
            name: format!("node{i}"),
            zone: "zone-a".into(),
            ip: Ipv4Addr::new(172, 31, 0, 10 + i),
            pod_cidr: format!("10.244.{i}.0/24").parse().unwrap(),
            netns: format!("svclb-t.node{i}"),
        };
        let nodes = [node(1), node(2)];
        let mut b = String::new();
        super::node(&mut b, &nodes[0], &nodes);
        assert_eq!(
            b,
            "addr add fd00:5b1a::ac1f:b/120 dev eth0 nodad\n\
             neigh add fd00:5b1a::ac1f:c lladdr 0e:5a:ac:1f:00:0c dev eth0 nud permanent\n\
             neigh add fd00:5b1a::ac1f:1 lladdr 0e:5a:ac:1f:00:01 dev eth0 nud permanent\n\
             neigh add fd00:5b1a::ac1f:2 lladdr 0e:5a:ac:1f:00:02 dev eth0 nud permanent\n\
             route add fd00:5b1a::af4:200/120 via fd00:5b1a::ac1f:c dev eth0\n\
             route add default via fd00:5b1a::ac1f:1 dev eth0\n"
        );
    }
}
