//! Announcing LoadBalancer addresses: `ANNOUNCE_V4` and `ANNOUNCE_V6`
//! hold the addresses this node answers ARP and Neighbour Solicitations
//! for (the data plane answers), a gratuitous ARP or an unsolicited
//! Neighbour Advertisement tells the LAN at once when this node takes an
//! address over, and `LB_ADDRS_V4`/`LB_ADDRS_V6` tell `xdplb services`
//! every address's pool and announcer.
mod ndp;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};
use lb_common::{
    addr::{to_map, to_map_v6},
    AnnounceKeyV6, AnnounceValue, LbAddrInfo,
};

use crate::{model::lb_addrs::Announcement, sync::NodeMaps};

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// An external interface, as ARP and NDP need it.
struct Iface {
    name: String,
    ifindex: u32,
    mac: [u8; 6],
}

impl Iface {
    fn read(name: &str) -> Result<Self> {
        let sys = format!("/sys/class/net/{name}");
        let read = |file: &str| {
            std::fs::read_to_string(format!("{sys}/{file}"))
                .with_context(|| format!("reading {sys}/{file}"))
        };
        let ifindex = read("ifindex")?.trim().parse()?;
        let text = read("address")?;
        let mut mac = [0u8; 6];
        let parts: Vec<&str> = text.trim().split(':').collect();
        if parts.len() != 6 {
            anyhow::bail!("{name} has no Ethernet address ({:?})", text.trim());
        }
        for (byte, part) in mac.iter_mut().zip(parts) {
            *byte = u8::from_str_radix(part, 16)
                .with_context(|| format!("{name}'s address {:?}", text.trim()))?;
        }
        Ok(Self {
            name: name.to_string(),
            ifindex,
            mac,
        })
    }
}

/// The addresses this node announced at its last sync.
#[derive(Default)]
pub struct Announcer {
    announced: BTreeSet<IpAddr>,
}

impl Announcer {
    /// Makes `LB_ADDRS_V4`/`LB_ADDRS_V6` hold `all` and `ANNOUNCE_V4`/
    /// `ANNOUNCE_V6` exactly those `node` announces on every interface of
    /// `ifaces`, and sends a gratuitous ARP or an unsolicited Neighbour
    /// Advertisement for each address this node did not announce before
    /// (after a restart: for all of them, which costs one frame each per
    /// interface).
    pub fn sync(
        &mut self,
        maps: &mut dyn NodeMaps,
        ifaces: &[String],
        all: &[Announcement],
        node: &str,
    ) -> Result<()> {
        write_lb_addrs(maps, all)?;
        let mine: Vec<&Announcement> = all
            .iter()
            .filter(|a| a.node.as_deref() == Some(node))
            .collect();
        let ifaces = ifaces
            .iter()
            .map(|n| Iface::read(n))
            .collect::<Result<Vec<_>>>()?;
        let mut want = BTreeMap::new();
        let mut want_v6 = BTreeMap::new();
        for a in &mine {
            for i in &ifaces {
                let value = AnnounceValue {
                    mac: i.mac,
                    _pad: 0,
                };
                match a.addr {
                    IpAddr::V4(addr) => want.insert((to_map(addr), i.ifindex), value),
                    IpAddr::V6(addr) => {
                        let key = AnnounceKeyV6 {
                            addr: to_map_v6(addr),
                            ifindex: i.ifindex,
                        };
                        want_v6.insert(key, value)
                    }
                };
            }
        }
        maps.set_announced(&want)?;
        maps.set_announced_v6(&want_v6)?;
        let now: BTreeSet<IpAddr> = mine.iter().map(|a| a.addr).collect();
        for a in mine.iter().filter(|a| !self.announced.contains(&a.addr)) {
            tracing::info!("announcing {a}");
            for iface in &ifaces {
                let (what, sent) = match a.addr {
                    IpAddr::V4(addr) => ("gratuitous ARP", gratuitous_arp(iface, addr)),
                    IpAddr::V6(addr) => (
                        "unsolicited Neighbour Advertisement",
                        ndp::advertise(iface, addr),
                    ),
                };
                if let Err(e) = sent {
                    tracing::warn!(ifname = %iface.name, "no {what} for {}: {e}", a.addr);
                }
            }
        }
        for addr in self.announced.difference(&now) {
            tracing::info!("no longer announcing {addr}");
        }
        self.announced = now;
        Ok(())
    }

    /// Empties `ANNOUNCE_V4` and `ANNOUNCE_V6`, so this node stops
    /// answering ARP and NDP for every address: the agent is exiting, and
    /// another node is to take them over. The frontends stay programmed,
    /// so traffic that still arrives (from neighbours that cached this
    /// node's MAC) is served.
    pub fn withdraw(&mut self, maps: &mut dyn NodeMaps) -> Result<()> {
        maps.set_announced(&BTreeMap::new())?;
        maps.set_announced_v6(&BTreeMap::new())?;
        for addr in std::mem::take(&mut self.announced) {
            tracing::info!("no longer announcing {addr}: exiting");
        }
        Ok(())
    }
}

/// Makes `LB_ADDRS_V4` and `LB_ADDRS_V6` hold exactly the addresses of
/// `all`.
fn write_lb_addrs(maps: &mut dyn NodeMaps, all: &[Announcement]) -> Result<()> {
    let mut want = BTreeMap::new();
    let mut want_v6 = BTreeMap::new();
    for a in all {
        let info = LbAddrInfo::new(&a.pool, a.node.as_deref().unwrap_or(""));
        match a.addr {
            IpAddr::V4(addr) => want.insert(to_map(addr), info),
            IpAddr::V6(addr) => want_v6.insert(to_map_v6(addr), info),
        };
    }
    maps.set_lb_addrs(&want)?;
    maps.set_lb_addrs_v6(&want_v6)
}

/// The 42-byte gratuitous ARP request for `addr` from `mac`: sender and
/// target address both `addr`, to the broadcast address, which Linux
/// neighbours take to update an entry they hold (RFC 5227's announcement).
fn gratuitous_frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&addr.octets());
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// Sends one gratuitous ARP for `addr` out of `iface`, so neighbours that
/// cached the previous announcer's MAC switch now rather than when their
/// entry goes stale.
fn gratuitous_arp(iface: &Iface, addr: Ipv4Addr) -> std::io::Result<()> {
    send(
        iface,
        ETH_P_ARP,
        BROADCAST,
        &gratuitous_frame(iface.mac, addr),
    )
}

/// Sends `frame` (of EtherType `proto`, to `dst`) out of `iface`.
/// Hand-written with libc: one AF_PACKET socket and one `sendto` of a
/// fixed frame, for which no crate in the dependency tree has an API, and
/// which does not warrant a new dependency. Protocol 0: the socket only
/// sends, so it never queues received frames.
fn send(iface: &Iface, proto: u16, dst: [u8; 6], frame: &[u8]) -> std::io::Result<()> {
    // SAFETY: plain syscalls on a socket this function owns; the address
    // and the frame outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut to: libc::sockaddr_ll = std::mem::zeroed();
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = proto.to_be();
        to.sll_ifindex = iface.ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&dst);
        let sent = libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        );
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gratuitous_arp_names_the_address_as_sender_and_target() {
        let mac = [2, 0, 0, 0, 0, 9];
        let f = gratuitous_frame(mac, Ipv4Addr::new(192, 168, 50, 200));
        assert_eq!(
            f,
            [
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 9, 8, 6, // Ethernet
                0, 1, 8, 0, 6, 4, 0, 1, // Ethernet/IPv4 request
                2, 0, 0, 0, 0, 9, 192, 168, 50, 200, // sender
                0, 0, 0, 0, 0, 0, 192, 168, 50, 200, // target
            ]
        );
    }
}
