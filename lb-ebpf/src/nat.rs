//! Address and port rewrites with their checksum updates. Complete
//! checksums get RFC 1624 incremental updates, so no payload byte is read.
//!
//! A packet sent by a local socket through a veth with checksum offload
//! (CHECKSUM_PARTIAL, how pod traffic arrives) carries in its TCP/UDP field
//! only the folded pseudo-header sum; the stack or the NIC completes it
//! later. Updating that like a full checksum corrupts it. XDP cannot see
//! `ip_summed`, but the field itself tells: a complete checksum equals the
//! pseudo-header sum by a 1 in 65,536 chance. Such a field is recomputed
//! from the new addresses instead, and port changes (outside the
//! pseudo-header) leave it alone, as the kernel's own
//! `inet_proto_csum_replace4` does for partial checksums.
use lb_common::checksum::{pseudo_partial, update16, update32};

use crate::parse::{Ipv4Hdr, L4};

/// Rewrites the destination and/or source (address, port) of a TCP or UDP
/// packet whose IPv4 header is `ihl` bytes long.
#[inline(always)]
pub fn translate(
    ip: *mut Ipv4Hdr,
    l4: &L4,
    ihl: usize,
    dst: Option<(u32, u16)>,
    src: Option<(u32, u16)>,
) {
    let (saddr, daddr, tot_len, proto) = unsafe {
        (
            (*ip).src,
            (*ip).dst,
            u16::from_be((*ip).tot_len),
            (*ip).proto,
        )
    };
    let l4_len = tot_len.wrapping_sub(ihl as u16);
    let check = unsafe { *l4.check };
    let no_checksum = l4.is_udp && check == 0;
    let partial = !no_checksum && check == pseudo_partial(saddr, daddr, proto, l4_len);
    let update_l4 = !no_checksum && !partial;
    unsafe {
        if let Some((addr, port)) = dst {
            rewrite(ip, &raw mut (*ip).dst, l4, 1, addr, port, update_l4);
        }
        if let Some((addr, port)) = src {
            rewrite(ip, &raw mut (*ip).src, l4, 0, addr, port, update_l4);
        }
        if partial {
            *l4.check = pseudo_partial((*ip).src, (*ip).dst, proto, l4_len);
        }
    }
}

#[inline(always)]
unsafe fn rewrite(
    ip: *mut Ipv4Hdr,
    field: *mut u32,
    l4: &L4,
    which: usize,
    addr: u32,
    port: u16,
    update_l4: bool,
) {
    unsafe {
        let old_addr = *field;
        let old_port = (*l4.ports)[which];
        *field = addr;
        (*ip).check = update32((*ip).check, old_addr, addr);
        (*l4.ports)[which] = port;
        if !update_l4 {
            return;
        }
        let mut c = update16(update32(*l4.check, old_addr, addr), old_port, port);
        // UDP transmits a computed zero as all ones (RFC 768).
        if l4.is_udp && c == 0 {
            c = 0xffff;
        }
        *l4.check = c;
    }
}
