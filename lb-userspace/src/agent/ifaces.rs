//! This node's interfaces: which pod interfaces exist (read again on every
//! link event and once a second) and which IPv4 addresses serve NodePorts.
use std::{collections::BTreeSet, net::Ipv4Addr};

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

/// IPv4 addresses per interface, from getifaddrs.
pub fn ipv4_addresses() -> Result<Vec<(String, Ipv4Addr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: getifaddrs returned a valid list, freed below.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_INET {
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned();
            out.push((name, Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
        }
        cur = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let Some((a, l)) = s.split_once('/') else {
        bail!("{s}: not a CIDR (want a.b.c.d/n)")
    };
    let len: u8 = l.parse()?;
    if len > 32 {
        bail!("{s}: prefix length over 32");
    }
    Ok((a.parse()?, len))
}

fn in_cidr(addr: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(addr) & mask == u32::from(net) & mask
}

/// kube-proxy's rule: without --nodeport-addresses, the addresses of the
/// node's external interfaces; with it, every local address in those CIDRs.
pub fn nodeport_addresses(external: &[String], cidrs: &[(Ipv4Addr, u8)]) -> Result<Vec<Ipv4Addr>> {
    let mut out: Vec<Ipv4Addr> = ipv4_addresses()?
        .into_iter()
        .filter(|(name, addr)| {
            !addr.is_loopback()
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
    Ok(out)
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
        assert!(in_cidr("10.2.3.4".parse().unwrap(), c));
        assert!(!in_cidr("11.0.0.1".parse().unwrap(), c));
        assert!(parse_cidr("10.0.0.0").is_err() && parse_cidr("10.0.0.0/33").is_err());
    }
}
