//! Neighbour Advertisements for the IPv6 LoadBalancer addresses this node
//! announces, as `arp` answers ARP for the IPv4 ones: the Neighbour
//! Solicitation is turned into its advertisement in place and sent back
//! out of the interface it came in by, so no address is added to the node
//! and the kernel's neighbour discovery never sees the solicitation.
//!
//! Answered in the IPv4 entry before the tail call to the IPv6 one, whose
//! verifier budget is spent on translation.
use lb_common::{
    checksum::{fold, Addr},
    AnnounceKeyV6, Reason,
};

use crate::{
    frame::Frame,
    maps::ANNOUNCE_V6,
    parse::{ptr_at, EthHdr, Ipv6Hdr, ETH_HLEN, IPV6_HLEN},
};

const IPPROTO_ICMPV6: u8 = 58;
const NDP_SOLICIT: u8 = 135;
const NDP_ADVERT: u8 = 136;
/// Solicited and Override (RFC 4861 4.4), in the flags word as sent.
const ADVERT_FLAGS: u32 = u32::from_ne_bytes([0x60, 0, 0, 0]);
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
/// A solicitation without options, and one with a Source Link-Layer
/// Address option (8 bytes for Ethernet); other lengths go to the kernel.
const LEN_BARE: u16 = 24u16.to_be();
const LEN_WITH_LL: u16 = 32u16.to_be();
/// The version word of the advertisement: version 6, no traffic class or
/// flow label.
const VERSION_6: u32 = u32::from_ne_bytes([0x60, 0, 0, 0]);
const ICMPV6_AT: usize = ETH_HLEN + IPV6_HLEN;

/// A Neighbour Solicitation or Advertisement (RFC 4861 4.3, 4.4).
#[repr(C)]
struct NdpMsg {
    kind: u8,
    code: u8,
    check: u16,
    /// Reserved in a solicitation, flags in an advertisement.
    flags: u32,
    target: [u32; 4],
}

/// A link-layer address option for Ethernet.
#[repr(C)]
struct LlOpt {
    kind: u8,
    len: u8,
    mac: [u8; 6],
}

/// Answers a Neighbour Solicitation for an address announced on the
/// receiving interface; `None` for any other frame, which goes on as
/// before. Solicitations from the unspecified address are duplicate
/// address detection, and ones with a hop limit below 255 did not come
/// from the link (RFC 4861 7.1.1): both are left to the kernel, as are
/// solicitations sent to another host's MAC (`sent_to`).
#[inline(always)]
pub fn advertise<C: Frame>(ctx: &C) -> Option<(Reason, u32)> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    let (next_hdr, hop_limit, len, src) = unsafe {
        (
            (*ip).next_hdr,
            (*ip).hop_limit,
            (*ip).payload_len,
            (*ip).src,
        )
    };
    if next_hdr != IPPROTO_ICMPV6 || hop_limit != 255 || src == [0; 4] {
        return None;
    }
    let msg = ptr_at::<NdpMsg>(ctx, ICMPV6_AT)?;
    let (kind, code, target) = unsafe { ((*msg).kind, (*msg).code, (*msg).target) };
    if kind != NDP_SOLICIT || code != 0 {
        return None;
    }
    let opt = if len == LEN_WITH_LL {
        let opt = ptr_at::<LlOpt>(ctx, ICMPV6_AT + core::mem::size_of::<NdpMsg>())?;
        if unsafe { (*opt).kind != OPT_SOURCE_LL || (*opt).len != 1 } {
            return None;
        }
        Some(opt)
    } else if len == LEN_BARE {
        None
    } else {
        return None;
    };
    let key = AnnounceKeyV6 {
        addr: target,
        ifindex: ctx.ifindex(),
    };
    let mac = unsafe { ANNOUNCE_V6.get(key) }?.mac;
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    if !sent_to(unsafe { (*eth).dst }, mac, target) || !sums_right(ip, msg, len, opt) {
        return None;
    }
    // The advertisement's checksum from scratch, as the words are in the
    // packet: the pseudo-header (source = target, destination, length,
    // next header) and the message, whose target is the source again.
    let mut sum = target.sum()
        + src.sum()
        + u32::from(len)
        + u32::from(u16::from_ne_bytes([0, IPPROTO_ICMPV6]))
        + u32::from(u16::from_ne_bytes([NDP_ADVERT, 0]))
        + ADVERT_FLAGS.sum()
        + target.sum();
    unsafe {
        (*eth).dst = (*eth).src;
        (*eth).src = mac;
        (*ip).vtc_flow = VERSION_6;
        (*ip).src = target;
        (*ip).dst = src;
        (*msg).kind = NDP_ADVERT;
        (*msg).flags = ADVERT_FLAGS;
        if let Some(opt) = opt {
            (*opt).kind = OPT_TARGET_LL;
            (*opt).mac = mac;
            sum += u32::from(u16::from_ne_bytes([OPT_TARGET_LL, 1])) + mac_sum(mac);
        }
        (*msg).check = !fold(sum);
    }
    Some((Reason::NdpAdvert, ctx.bounce()))
}

/// Whether a solicitation for `target` was sent to this interface (`mac`):
/// to the target's solicited-node multicast group, or to the interface
/// itself (a reachability probe). One sent to another host's MAC reached
/// the node only in promiscuous mode or through a bridge port, and the
/// kernel drops such a frame (`PACKET_OTHERHOST`).
#[inline(always)]
fn sent_to(dst: [u8; 6], mac: [u8; 6], target: [u32; 4]) -> bool {
    let [_, a, b, c] = target[3].to_ne_bytes();
    dst == mac || dst == [0x33, 0x33, 0xff, a, b, c]
}

/// Whether the solicitation's checksum is right: the kernel drops one
/// whose checksum is not (RFC 4861 7.1.1), and it is not answered here
/// either. Summed as the words are in the packet, as the advertisement's.
#[inline(always)]
fn sums_right(ip: *const Ipv6Hdr, msg: *const NdpMsg, len: u16, opt: Option<*mut LlOpt>) -> bool {
    let (src, dst, check, reserved, target) = unsafe {
        (
            (*ip).src,
            (*ip).dst,
            (*msg).check,
            (*msg).flags,
            (*msg).target,
        )
    };
    let mut sum = src.sum()
        + dst.sum()
        + u32::from(len)
        + u32::from(u16::from_ne_bytes([0, IPPROTO_ICMPV6]))
        + u32::from(u16::from_ne_bytes([NDP_SOLICIT, 0]))
        + u32::from(check)
        + reserved.sum()
        + target.sum();
    if let Some(opt) = opt {
        sum += u32::from(u16::from_ne_bytes([OPT_SOURCE_LL, 1])) + mac_sum(unsafe { (*opt).mac });
    }
    fold(sum) == 0xffff
}

/// The one's-complement sum of a MAC's three 16-bit words.
#[inline(always)]
fn mac_sum(mac: [u8; 6]) -> u32 {
    u32::from(u16::from_ne_bytes([mac[0], mac[1]]))
        + u32::from(u16::from_ne_bytes([mac[2], mac[3]]))
        + u32::from(u16::from_ne_bytes([mac[4], mac[5]]))
}
