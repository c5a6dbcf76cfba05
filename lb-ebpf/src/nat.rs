//! Address and port rewrites with their checksum updates. Complete
//! checksums get RFC 1624 incremental updates, so no payload byte is read.
//!
//! A packet sent by a local socket through a veth with checksum offload
//! (CHECKSUM_PARTIAL, how pod traffic arrives) carries in its TCP/UDP field
//! only the folded pseudo-header sum; the stack or the NIC completes it
//! later. Updating that like a full checksum corrupts it. XDP cannot see
//! `ip_summed`, but the field itself tells: a complete checksum equals the
//! pseudo-header sum by a 1 in 65,536 chance. Such a field gets only the
//! addresses' difference: port changes (outside the pseudo-header) leave it
//! alone, as the kernel's own `inet_proto_csum_replace4` does for partial
//! checksums.
//!
//! Unsafe in this module: header reads and rewrites through pointers
//! `parse` checked (`L4::check` points into the checked TCP or UDP header),
//! and reads of the flow's entry, valid until the program returns.
use lb_common::{
    checksum::{add, apply, diff16, fold},
    CtValue, CtValueV4, CtValueV6,
};

use crate::{
    conntrack::is_set,
    parse::{Ipv4Hdr, Ipv6Hdr, L4},
};

/// Updates the TCP or UDP checksum of a packet with `l4_len` bytes of
/// transport header and payload for its flow's rewrite. Returns whether the
/// field was a partial checksum, which only an skb can carry on.
#[inline(always)]
fn l4_checksum<V: CtValue>(l4: &L4, l4_len: u16, ct: *const V) -> bool {
    let sums = unsafe { V::sums(ct) };
    unsafe {
        let check = *l4.check;
        if l4.is_udp && check == 0 {
            return false;
        }
        let partial = check == add(sums.pseudo, l4_len.to_be());
        *l4.check = if partial {
            add(check, sums.addrs)
        } else {
            // UDP transmits a computed zero as all ones (RFC 768).
            match apply(check, sums.l4) {
                0 if l4.is_udp => 0xffff,
                c => c,
            }
        };
        partial
    }
}

/// A rewrite as (destination, source), each an address and port when it
/// changes.
type Rewrite<A> = (Option<(A, u16)>, Option<(A, u16)>);

/// The rewrite of a flow's entry: a forward
/// packet gets the backend as destination (and the SNAT address as source,
/// if any), a reply the frontend as source (and the client as destination,
/// if source-NATed).
#[inline(always)]
fn targets<V: CtValue>(ct: *const V, forward: bool) -> Rewrite<V::Addr> {
    let (nat, snat) = unsafe { (V::nat(ct), V::snat(ct)) };
    let snat = is_set(snat.0).then_some(snat);
    if forward {
        (Some(nat), snat)
    } else {
        (snat, Some(nat))
    }
}

/// Writes a rewrite (`targets`'s destination and source) into the
/// header's address fields `src_at`, `dst_at` and the transport ports,
/// which the caller has checked.
#[inline(always)]
unsafe fn write<A: Copy>(src_at: *mut A, dst_at: *mut A, l4: &L4, (dst, src): Rewrite<A>) {
    unsafe {
        if let Some((addr, port)) = dst {
            *dst_at = addr;
            (*l4.ports)[1] = port;
        }
        if let Some((addr, port)) = src {
            *src_at = addr;
            (*l4.ports)[0] = port;
        }
    }
}

/// Rewrites a TCP or UDP packet whose IPv4 header is `ihl` bytes long by its
/// flow's entry (`targets`), and takes one off its TTL when this node
/// routes it (`hop`; the caller has answered a TTL of 1). The checksum
/// differences were computed when the entry was made, from this very
/// tuple. Returns whether the checksum field was a partial one.
#[inline(always)]
pub fn rewrite(
    ip: *mut Ipv4Hdr,
    l4: &L4,
    ihl: usize,
    ct: *const CtValueV4,
    forward: bool,
    hop: bool,
) -> bool {
    let (dst, src) = targets(ct, forward);
    unsafe {
        let l4_len = u16::from_be((*ip).tot_len).wrapping_sub(ihl as u16);
        let partial = l4_checksum(l4, l4_len, ct);
        let mut diff = (*ct).csum_addrs;
        if hop {
            diff = fold(diff as u32 + set_ttl(ip, (*ip).ttl.wrapping_sub(1)) as u32);
        }
        (*ip).check = apply((*ip).check, diff);
        write(&raw mut (*ip).src, &raw mut (*ip).dst, l4, (dst, src));
        partial
    }
}

/// Sets the TTL and returns the header checksum's difference for it. The
/// TTL shares its header word with the protocol, which stays.
///
/// # Safety
/// `ip` points at a checked IPv4 header.
#[inline(always)]
unsafe fn set_ttl(ip: *mut Ipv4Hdr, ttl: u8) -> u16 {
    let (old, proto) = ((*ip).ttl, (*ip).proto);
    let word = |ttl: u8| u16::from_ne_bytes([ttl, proto]);
    (*ip).ttl = ttl;
    fold(diff16(word(old), word(ttl)))
}

/// Gives back the hop `rewrite` took off a packet that the kernel routes
/// after all, as its forwarding takes one itself.
#[inline(always)]
pub fn give_back_hop(ip: *mut Ipv4Hdr) {
    unsafe {
        let diff = set_ttl(ip, (*ip).ttl.wrapping_add(1));
        (*ip).check = apply((*ip).check, diff);
    }
}

/// `give_back_hop` for IPv6.
#[inline(always)]
pub fn give_back_hop_v6(ip: *mut Ipv6Hdr) {
    unsafe { (*ip).hop_limit = (*ip).hop_limit.wrapping_add(1) };
}

/// `rewrite` for IPv6, which has no header checksum; `l4_len` is what
/// follows the extension headers, `hop` takes one off the hop limit.
#[inline(always)]
pub fn rewrite_v6(
    ip: *mut Ipv6Hdr,
    l4: &L4,
    l4_len: u16,
    ct: *const CtValueV6,
    forward: bool,
    hop: bool,
) -> bool {
    let (dst, src) = targets(ct, forward);
    unsafe {
        let partial = l4_checksum(l4, l4_len, ct);
        write(&raw mut (*ip).src, &raw mut (*ip).dst, l4, (dst, src));
        if hop {
            (*ip).hop_limit = (*ip).hop_limit.wrapping_sub(1);
        }
        partial
    }
}
