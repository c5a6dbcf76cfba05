//! Address and port rewrites, one direction per function, each with its
//! incremental checksum updates (RFC 1624) so no byte of payload is read.
use lb_common::checksum::{update16, update32};

use crate::parse::{Ipv4Hdr, L4};

/// Destination becomes the backend.
#[inline(always)]
pub fn dnat(ip: *mut Ipv4Hdr, l4: &L4, addr: u32, port: u16) {
    unsafe { rewrite(ip, &raw mut (*ip).dst, l4, 1, addr, port) }
}

/// Source becomes the frontend again (replies).
#[inline(always)]
pub fn snat(ip: *mut Ipv4Hdr, l4: &L4, addr: u32, port: u16) {
    unsafe { rewrite(ip, &raw mut (*ip).src, l4, 0, addr, port) }
}

#[inline(always)]
unsafe fn rewrite(ip: *mut Ipv4Hdr, field: *mut u32, l4: &L4, which: usize, addr: u32, port: u16) {
    unsafe {
        let old_addr = *field;
        let old_port = (*l4.ports)[which];
        *field = addr;
        (*ip).check = update32((*ip).check, old_addr, addr);
        (*l4.ports)[which] = port;
        let check = *l4.check;
        // A zero UDP checksum means "none" (IPv4 only) and must stay zero.
        if l4.is_udp && check == 0 {
            return;
        }
        let mut c = update16(update32(check, old_addr, addr), old_port, port);
        // UDP transmits a computed zero as all ones (RFC 768).
        if l4.is_udp && c == 0 {
            c = 0xffff;
        }
        *l4.check = c;
    }
}
