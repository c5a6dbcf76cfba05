//! This node's interfaces: which pod interfaces exist (read again on every
//! link event and once a second) and which addresses serve NodePorts.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Result};

/// Shell-style match with `*` only, the one wildcard interface patterns
/// need (kube-proxy and CNIs use prefixes such as `veth*`).
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            name.starts_with(head)
                && (0..=name.len() - head.len()).any(|i| matches(rest, &name[head.len() + i..]))
        }
    }
}

pub fn present() -> BTreeSet<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Addresses of both families per interface, from getifaddrs.
fn addresses() -> Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: getifaddrs returned a valid list, freed below; the
        // family says which sockaddr each address is.
        let ifa = unsafe { &*cur };
        let family = if ifa.ifa_addr.is_null() {
            None
        } else {
            Some(unsafe { (*ifa.ifa_addr).sa_family } as i32)
        };
        let addr = match family {
            Some(libc::AF_INET) => {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))))
            }
            Some(libc::AF_INET6) => {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
            }
            _ => None,
        };
        if let Some(addr) = addr {
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned();
            out.push((name, addr));
        }
        cur = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// IPv4 addresses per interface, from getifaddrs.
pub fn ipv4_addresses() -> Result<Vec<(String, Ipv4Addr)>> {
    Ok(addresses()?
        .into_iter()
        .filter_map(|(name, addr)| match addr {
            IpAddr::V4(a) => Some((name, a)),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// IPv6 addresses per interface, from getifaddrs.
pub fn ipv6_addresses() -> Result<Vec<(String, Ipv6Addr)>> {
    Ok(addresses()?
        .into_iter()
        .filter_map(|(name, addr)| match addr {
            IpAddr::V6(a) => Some((name, a)),
            IpAddr::V4(_) => None,
        })
        .collect())
}

/// A `--nodeport-addresses` CIDR of either family.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let Some((a, l)) = s.split_once('/') else {
        bail!("{s}: not a CIDR (want address/length)")
    };
    let addr: IpAddr = a.parse()?;
    let len: u8 = l.parse()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        bail!("{s}: prefix length over {max}");
    }
    Ok((addr, len))
}

/// Networks and prefix lengths.
pub type Cidrs<A> = Vec<(A, u8)>;

/// `cidrs` split by family, as kube-proxy applies each family's own.
pub fn split_cidrs(cidrs: &[(IpAddr, u8)]) -> (Cidrs<Ipv4Addr>, Cidrs<Ipv6Addr>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for &(addr, len) in cidrs {
        match addr {
            IpAddr::V4(a) => v4.push((a, len)),
            IpAddr::V6(a) => v6.push((a, len)),
        }
    }
    (v4, v6)
}

fn in_cidr<A: Into<IpAddr>>(addr: A, (net, len): (A, u8)) -> bool {
    match (addr.into(), net.into()) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// kube-proxy's rule: without --nodeport-addresses, the addresses of the
/// node's external interfaces; with it, every local address in those CIDRs.
pub fn nodeport_addresses(external: &[String], cidrs: &[(Ipv4Addr, u8)]) -> Result<Vec<Ipv4Addr>> {
    Ok(choose(ipv4_addresses()?, external, cidrs, |a| {
        !a.is_loopback()
    }))
}

/// `addrs`, the IPv4 NodePort addresses, with 127.0.0.1 when `localhost`
/// NodePorts are on and `cidrs` (`--nodeport-addresses`) are none or one
/// holds it: kube-proxy's rule for its localhost NodePorts. Only the
/// socket hooks serve them (the packet path refuses loopback
/// destinations), so only the node's own processes reach them.
pub fn with_localhost(
    mut addrs: Vec<Ipv4Addr>,
    localhost: bool,
    cidrs: &[(Ipv4Addr, u8)],
) -> Vec<Ipv4Addr> {
    let taken = cidrs.is_empty() || cidrs.iter().any(|c| in_cidr(Ipv4Addr::LOCALHOST, *c));
    if localhost && taken {
        addrs.push(Ipv4Addr::LOCALHOST);
        addrs.sort();
        addrs.dedup();
    }
    addrs
}

/// `nodeport_addresses` of IPv6, each family with its own CIDRs. Link-local
/// addresses are left out: every link has them, so they name no node. The
/// first is also the address to source-NAT IPv6 from: the list is sorted,
/// so a global unicast address (2000::/3) comes before a unique local one.
pub fn nodeport_addresses_v6(
    external: &[String],
    cidrs: &[(Ipv6Addr, u8)],
) -> Result<Vec<Ipv6Addr>> {
    Ok(choose(ipv6_addresses()?, external, cidrs, |a| {
        !(a.is_loopback() || a.is_unspecified() || a.is_unicast_link_local())
    }))
}

/// Of `addrs` (interface, address), the usable ones `nodeport_addresses`
/// describes, sorted and unique.
fn choose<A: Copy + Ord + Into<IpAddr>>(
    addrs: Vec<(String, A)>,
    external: &[String],
    cidrs: &[(A, u8)],
    usable: impl Fn(A) -> bool,
) -> Vec<A> {
    let mut out: Vec<A> = addrs
        .into_iter()
        .filter(|(name, addr)| {
            usable(*addr)
                && if cidrs.is_empty() {
                    external.contains(name)
                } else {
                    cidrs.iter().any(|c| in_cidr(*addr, *c))
                }
        })
        .map(|(_, a)| a)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_cidrs() {
        assert!(matches("veth*", "veth12ab"));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "a-x-b-y-c"));
        assert!(!matches("veth*", "eth0"));
        assert!(!matches("eth0", "eth01"));
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert!(in_cidr("10.2.3.4".parse::<IpAddr>().unwrap(), c));
        assert!(!in_cidr("11.0.0.1".parse::<IpAddr>().unwrap(), c));
        assert!(parse_cidr("10.0.0.0").is_err() && parse_cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn cidrs_of_both_families() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let c = parse_cidr("2001:db8::/32").unwrap();
        assert_eq!(c, ("2001:db8::".parse().unwrap(), 32));
        assert!(in_cidr(IpAddr::V6(v6("2001:db8:1::5")), c));
        assert!(!in_cidr(IpAddr::V6(v6("2001:db9::5")), c));
        assert!(
            !in_cidr("10.0.0.1".parse::<IpAddr>().unwrap(), c),
            "families never match"
        );
        let all = parse_cidr("::/0").unwrap();
        assert!(in_cidr(IpAddr::V6(v6("fd00::1")), all));
        assert!(parse_cidr("2001:db8::/129").is_err() && parse_cidr("2001:db8::").is_err());
        let cidrs: Vec<_> = ["10.0.0.0/8", "fd00::/8", "192.168.0.0/16"]
            .iter()
            .map(|c| parse_cidr(c).unwrap())
            .collect();
        let (v4s, v6s) = split_cidrs(&cidrs);
        assert_eq!(
            v4s,
            [
                ("10.0.0.0".parse().unwrap(), 8),
                ("192.168.0.0".parse().unwrap(), 16)
            ]
        );
        assert_eq!(v6s, [(v6("fd00::"), 8)]);
    }

    #[test]
    fn localhost_nodeports_follow_kube_proxys_rule() {
        let node = vec![Ipv4Addr::new(192, 168, 1, 10)];
        let lo = Ipv4Addr::LOCALHOST;
        let cidr = |c: &str| match parse_cidr(c).unwrap() {
            (IpAddr::V4(a), len) => (a, len),
            _ => unreachable!(),
        };
        assert_eq!(with_localhost(node.clone(), true, &[]), [lo, node[0]]);
        assert_eq!(with_localhost(node.clone(), false, &[]), node, "turned off");
        let lan = [cidr("192.168.0.0/16")];
        assert_eq!(
            with_localhost(node.clone(), true, &lan),
            node,
            "not in the CIDRs"
        );
        let both = [cidr("192.168.0.0/16"), cidr("127.0.0.0/8")];
        assert_eq!(with_localhost(node.clone(), true, &both), [lo, node[0]]);
    }

    #[test]
    fn ipv6_nodeport_addresses_follow_kube_proxys_rule() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let addrs = || {
            [
                ("lo", "::1"),
                ("eth0", "fe80::1"),
                ("eth0", "fd00:1::10"),
                ("eth0", "2001:db8::10"),
                ("eth1", "fd00:1::10"),
                ("eth1", "fd00:2::10"),
                ("cni0", "fd00:244::1"),
            ]
            .map(|(name, a)| (name.to_string(), v6(a)))
            .to_vec()
        };
        let usable =
            |a: Ipv6Addr| !(a.is_loopback() || a.is_unspecified() || a.is_unicast_link_local());
        let external = ["eth0".to_string(), "eth1".to_string(), "lo".to_string()];
        assert_eq!(
            choose(addrs(), &external, &[], usable),
            [v6("2001:db8::10"), v6("fd00:1::10"), v6("fd00:2::10")],
            "external interfaces' addresses, sorted, unique, global first"
        );
        assert_eq!(
            choose(addrs(), &external, &[(v6("fd00::"), 8)], usable),
            [v6("fd00:1::10"), v6("fd00:2::10"), v6("fd00:244::1")],
            "with CIDRs, any interface's addresses in them"
        );
        assert_eq!(
            choose(addrs(), &external, &[(v6("::"), 0)], usable),
            [
                v6("2001:db8::10"),
                v6("fd00:1::10"),
                v6("fd00:2::10"),
                v6("fd00:244::1")
            ],
            "never loopback or link-local"
        );
    }
}
