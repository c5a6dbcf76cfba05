//! ARP replies for the LoadBalancer addresses this node announces: the
//! request is turned into its reply in place and sent back out of the
//! interface it came in by, so no address is added to the node and the
//! kernel's own ARP handling never sees the request.
use lb_common::{AnnounceKeyV4, Reason};

use crate::{
    frame::Frame,
    maps::ANNOUNCE_V4,
    parse::{ptr_at, EthHdr, ETH_HLEN, ETH_P_IP},
};

pub const ETH_P_ARP: u16 = 0x0806u16.to_be();
const ARPHRD_ETHER: u16 = 1u16.to_be();
const ARPOP_REQUEST: u16 = 1u16.to_be();
const ARPOP_REPLY: u16 = 2u16.to_be();

/// An Ethernet/IPv4 ARP packet. Addresses are byte arrays: after the
/// 14-byte Ethernet header they sit at unaligned offsets.
#[repr(C)]
struct ArpHdr {
    htype: u16,
    ptype: u16,
    hlen: u8,
    plen: u8,
    op: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

/// Answers an ARP request for an address announced on the receiving
/// interface; `None` for any other frame, which goes on as before.
/// Gratuitous requests (sender = target) are another node claiming the
/// address, not a question, and are left to the kernel, as are requests
/// sent to another host's MAC.
#[inline(always)]
pub fn reply<C: Frame>(ctx: &C) -> Option<(Reason, u32)> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let arp = ptr_at::<ArpHdr>(ctx, ETH_HLEN)?;
    let (htype, ptype, hlen, plen, op, spa, tpa) = unsafe {
        (
            (*arp).htype,
            (*arp).ptype,
            (*arp).hlen,
            (*arp).plen,
            (*arp).op,
            (*arp).spa,
            (*arp).tpa,
        )
    };
    if htype != ARPHRD_ETHER
        || ptype != ETH_P_IP
        || hlen != 6
        || plen != 4
        || op != ARPOP_REQUEST
        || spa == tpa
    {
        return None;
    }
    let key = AnnounceKeyV4 {
        addr: u32::from_ne_bytes(tpa),
        ifindex: ctx.ifindex(),
    };
    let mac = unsafe { ANNOUNCE_V4.get(key) }?.mac;
    // Broadcast, or to this interface (a reachability probe): a request
    // to another host's MAC reached the node only in promiscuous mode or
    // through a bridge port, and the kernel drops it (`PACKET_OTHERHOST`).
    let dst = unsafe { (*eth).dst };
    if dst != [0xff; 6] && dst != mac {
        return None;
    }
    unsafe {
        let sha = (*arp).sha;
        (*eth).dst = sha;
        (*eth).src = mac;
        (*arp).op = ARPOP_REPLY;
        (*arp).tha = sha;
        (*arp).tpa = spa;
        (*arp).sha = mac;
        (*arp).spa = tpa;
    }
    Some((Reason::ArpReply, ctx.bounce()))
}
