//! The unsolicited Neighbour Advertisement (RFC 4861 7.2.6) a node sends
//! when it takes an IPv6 address over, IPv6's gratuitous ARP.
use std::net::Ipv6Addr;

use super::{send, Iface};

const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMPV6: u8 = 58;
const NDP_ADVERT: u8 = 136;
/// Override, and not Solicited: the neighbours replace the MAC they
/// cached for the address.
const FLAG_OVERRIDE: u8 = 0x20;
const OPT_TARGET_LL: u8 = 2;
/// All-nodes multicast, ff02::1, and its Ethernet address.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// The advertisement: flags word, target, Target Link-Layer Address option.
const ICMPV6_LEN: usize = 32;
const FRAME_LEN: usize = 14 + 40 + ICMPV6_LEN;

/// Sends the advertisement of `addr` at `iface`'s MAC to all nodes on it.
pub(super) fn advertise(iface: &Iface, addr: Ipv6Addr) -> std::io::Result<()> {
    send(
        iface,
        ETH_P_IPV6,
        ALL_NODES_MAC,
        &advert_frame(iface.mac, addr),
    )
}

/// The advertisement of `addr` at `mac`, from `addr` to all nodes, hop
/// limit 255 as neighbour discovery requires of every message.
fn advert_frame(mac: [u8; 6], addr: Ipv6Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&ALL_NODES_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    let ip = &mut f[14..54];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(ICMPV6_LEN as u16).to_be_bytes());
    ip[6] = IPPROTO_ICMPV6;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&addr.octets());
    ip[24..40].copy_from_slice(&ALL_NODES.octets());
    let msg = &mut f[54..];
    msg[0] = NDP_ADVERT;
    msg[4] = FLAG_OVERRIDE;
    msg[8..24].copy_from_slice(&addr.octets());
    msg[24] = OPT_TARGET_LL;
    msg[25] = 1;
    msg[26..32].copy_from_slice(&mac);
    let check = checksum(addr, ALL_NODES, msg);
    msg[2..4].copy_from_slice(&check.to_be_bytes());
    f
}

/// The ICMPv6 checksum of `msg` (its checksum field zero) from `src` to
/// `dst`, over the IPv6 pseudo-header (RFC 8200 8.1).
fn checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let len = (msg.len() as u32).to_be_bytes();
    let pseudo = [
        &src.octets()[..],
        &dst.octets(),
        &len,
        &[0, 0, 0, IPPROTO_ICMPV6],
        msg,
    ];
    let mut sum: u32 = pseudo
        .iter()
        .flat_map(|part| part.chunks(2))
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use etherparse::{
        Icmpv6Slice, Icmpv6Type, IpNumber, LinkSlice, NetSlice, SlicedPacket, TransportSlice,
    };

    use super::*;

    #[test]
    fn an_unsolicited_advertisement_overrides_to_all_nodes_with_a_valid_checksum() {
        let mac = [2, 0, 0, 0, 0, 9];
        let addr: Ipv6Addr = "fd00:10::200".parse().unwrap();
        let f = advert_frame(mac, addr);
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(LinkSlice::Ethernet2(eth)) = p.link else {
            panic!("Ethernet")
        };
        assert_eq!(eth.destination(), ALL_NODES_MAC);
        assert_eq!(eth.source(), mac);
        let Some(NetSlice::Ipv6(ip)) = p.net else {
            panic!("IPv6")
        };
        let h = ip.header();
        assert_eq!(h.source_addr(), addr);
        assert_eq!(h.destination_addr(), ALL_NODES);
        assert_eq!(h.hop_limit(), 255);
        assert_eq!(h.next_header(), IpNumber::IPV6_ICMP);
        let Some(TransportSlice::Icmpv6(icmp)) = p.transport else {
            panic!("ICMPv6")
        };
        let icmp: Icmpv6Slice = icmp;
        assert!(icmp.is_checksum_valid(h.source(), h.destination()));
        assert!(matches!(
            icmp.icmp_type(),
            Icmpv6Type::Unknown {
                type_u8: 136,
                code_u8: 0,
                bytes5to8: [0x20, 0, 0, 0]
            }
        ));
        let body = icmp.payload();
        assert_eq!(body[..16], addr.octets(), "target");
        assert_eq!(
            body[16..],
            [2, 1, 2, 0, 0, 0, 0, 9],
            "target link-layer address"
        );
    }
}
