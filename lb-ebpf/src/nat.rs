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
//! `parse` checked (`L4::check` points into the checked TCP or UDP header).
use lb_common::{
    checksum::{add, apply},
    CtValueV4,
};

use crate::parse::{Ipv4Hdr, L4};

/// Rewrites a TCP or UDP packet whose IPv4 header is `ihl` bytes long by its
/// flow's entry: a forward packet gets the backend as destination (and the
/// SNAT address as source, if any), a reply the frontend as source (and the
/// client as destination, if source-NATed). The checksum differences were
/// computed when the entry was made, from this very tuple. Returns whether
/// the checksum field was a partial one, which only an skb can carry on.
#[inline(always)]
pub fn rewrite(ip: *mut Ipv4Hdr, l4: &L4, ihl: usize, ct: &CtValueV4, forward: bool) -> bool {
    let nat = (ct.nat_addr, ct.nat_port);
    let snat = (ct.snat_addr != 0).then_some((ct.snat_addr, ct.snat_port));
    let (dst, src) = if forward {
        (Some(nat), snat)
    } else {
        (snat, Some(nat))
    };
    unsafe {
        let l4_len = u16::from_be((*ip).tot_len).wrapping_sub(ihl as u16);
        let check = *l4.check;
        let mut partial = false;
        if !(l4.is_udp && check == 0) {
            partial = check == add(ct.csum_pseudo, l4_len.to_be());
            *l4.check = if partial {
                add(check, ct.csum_addrs)
            } else {
                // UDP transmits a computed zero as all ones (RFC 768).
                match apply(check, ct.csum_l4) {
                    0 if l4.is_udp => 0xffff,
                    c => c,
                }
            };
        }
        (*ip).check = apply((*ip).check, ct.csum_addrs);
        if let Some((addr, port)) = dst {
            (*ip).dst = addr;
            (*l4.ports)[1] = port;
        }
        if let Some((addr, port)) = src {
            (*ip).src = addr;
            (*l4.ports)[0] = port;
        }
        partial
    }
}
