//! What differs between the IPv4 and the IPv6 rows: addresses, and the
//! names and syntax kube-proxy's per-family proxiers use.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ::testbed::{
    cluster::{CLIENT_ADDR, CLIENT_ADDR6},
    control_plane::Node,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub fn title(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }

    /// The prefix length of a single address.
    pub fn host_len(self) -> u8 {
        match self {
            Family::Ipv4 => 32,
            Family::Ipv6 => 128,
        }
    }

    /// kube-proxy's `--cluster-cidr` for the family: every node's pod CIDR.
    pub fn cluster_cidr(self) -> &'static str {
        match self {
            Family::Ipv4 => "10.244.0.0/16",
            Family::Ipv6 => "fd00:244::/32",
        }
    }

    /// The address a socket binds to for any address of the family.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::Ipv4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::Ipv6 => Ipv6Addr::UNSPECIFIED.into(),
        }
    }

    /// The client behind the router.
    pub fn client(self) -> IpAddr {
        match self {
            Family::Ipv4 => CLIENT_ADDR.into(),
            Family::Ipv6 => CLIENT_ADDR6.into(),
        }
    }

    pub fn node_addr(self, node: &Node) -> IpAddr {
        match self {
            Family::Ipv4 => node.addr.into(),
            Family::Ipv6 => node.addr6.into(),
        }
    }

    /// The node's pod CIDR, as a Node's `spec.podCIDRs` lists it.
    pub fn pod_cidr(self, node: &Node) -> String {
        match self {
            Family::Ipv4 => format!("{}/24", node.pod_net),
            Family::Ipv6 => format!("{}/64", node.pod_net6),
        }
    }

    /// Host number `host` of the node's pod CIDR.
    pub fn pod_addr(self, node: &Node, host: u8) -> IpAddr {
        match self {
            Family::Ipv4 => pod_v4(node, host).into(),
            Family::Ipv6 => pod_v6(node, host).into(),
        }
    }

    /// The `addressType` of an EndpointSlice of the family.
    pub fn slice_type(self) -> &'static str {
        self.title()
    }

    /// `iptables-restore` or `ip6tables-restore`: kube-proxy runs one
    /// proxier per family.
    pub fn restore_program(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables-restore",
            Family::Ipv6 => "ip6tables-restore",
        }
    }

    /// The family of kube-proxy's nftables table, and the keyword of its
    /// address matches.
    pub fn nft(self) -> &'static str {
        match self {
            Family::Ipv4 => "ip",
            Family::Ipv6 => "ip6",
        }
    }

    pub fn nft_addr_type(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4_addr",
            Family::Ipv6 => "ipv6_addr",
        }
    }

    /// The loopback addresses kube-proxy keeps out of its NodePort match.
    pub fn loopback(self) -> &'static str {
        match self {
            Family::Ipv4 => "127.0.0.0/8",
            Family::Ipv6 => "::1",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

pub fn pod_v4(node: &Node, host: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(node.pod_net) | u32::from(host))
}

pub fn pod_v6(node: &Node, host: u8) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(node.pod_net6) | u128::from(host))
}

/// `base` with its last byte replaced by `n`: the new-flow senders' extra
/// source addresses, in the subnet of the sender's own.
pub fn with_last_byte(base: IpAddr, n: u8) -> IpAddr {
    match base {
        IpAddr::V4(a) => {
            let mut o = a.octets();
            o[3] = n;
            Ipv4Addr::from(o).into()
        }
        IpAddr::V6(a) => {
            let mut o = a.octets();
            o[15] = n;
            Ipv6Addr::from(o).into()
        }
    }
}

/// `addr` offset by `n` within its family.
pub fn offset(addr: IpAddr, n: u32) -> IpAddr {
    match addr {
        IpAddr::V4(a) => Ipv4Addr::from(u32::from(a) + n).into(),
        IpAddr::V6(a) => Ipv6Addr::from(u128::from(a) + u128::from(n)).into(),
    }
}
