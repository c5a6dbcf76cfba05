//! IP fragments. The first fragment carries the ports and is balanced like
//! any packet; its translation is remembered by (addresses, IP id) so the
//! later fragments, which carry no ports, follow it to the same backend
//! (Cilium's approach). A later fragment without that state is passed to the
//! kernel untouched, never sent to a guessed backend.
//!
//! IPv6 datagrams follow the same rules (`FRAGS_V6`), keyed by their
//! Fragment header's 32-bit identification; an IPv6 header has no checksum
//! to update.
//!
//! Unsafe in this module: IP header accesses through a pointer
//! `parse::ptr_at` checked, and reads of a `FRAGS_V4` or `FRAGS_V6` entry,
//! valid until the program returns.
use lb_common::{checksum::update32, CtKeyV6, FragKeyV4, FragKeyV6, FragValueV4, FragValueV6};

use crate::{
    maps::{FRAGS_V4, FRAGS_V6},
    parse::{self, Ipv4Hdr, Ipv6Hdr},
};

#[inline(always)]
fn key(ip: *const Ipv4Hdr) -> FragKeyV4 {
    unsafe {
        FragKeyV4 {
            src_addr: (*ip).src,
            dst_addr: (*ip).dst,
            id: (*ip).id,
            proto: (*ip).proto,
            _pad: 0,
        }
    }
}

/// Before the first fragment is rewritten: its key as it arrived.
#[inline(always)]
pub fn first_key(ip: *const Ipv4Hdr) -> FragKeyV4 {
    key(ip)
}

/// After the first fragment is rewritten: remember where it went.
#[inline(always)]
pub fn remember(k: &FragKeyV4, ip: *const Ipv4Hdr) {
    let v = unsafe {
        FragValueV4 {
            src_addr: (*ip).src,
            dst_addr: (*ip).dst,
        }
    };
    // Losing this only means the later fragments go to the kernel as they are.
    let _ = FRAGS_V4.insert(*k, v, 0);
}

/// Rewrites a later fragment like its first; `false` when it is unknown.
#[inline(always)]
pub fn follow(ip: *mut Ipv4Hdr) -> bool {
    let Some(v) = FRAGS_V4.get_ptr(key(ip)) else {
        return false;
    };
    unsafe {
        let (src, dst) = ((*v).src_addr, (*v).dst_addr);
        let mut check = update32((*ip).check, (*ip).src, src);
        check = update32(check, (*ip).dst, dst);
        (*ip).src = src;
        (*ip).dst = dst;
        (*ip).check = check;
    }
    true
}

/// After the first fragment of an IPv6 datagram is rewritten (`ip`):
/// remember where it went; `arrived` is its tuple as it arrived.
#[inline(always)]
pub fn remember_v6(arrived: &CtKeyV6, ip: *const Ipv6Hdr) {
    let id = parse::fragment_id_v6(ip);
    let k = FragKeyV6 {
        src_addr: arrived.src_addr,
        dst_addr: arrived.dst_addr,
        id,
        proto: arrived.proto,
        _pad: [0; 3],
    };
    let v = unsafe {
        FragValueV6 {
            src_addr: (*ip).src,
            dst_addr: (*ip).dst,
        }
    };
    // Losing this only means the later fragments go to the kernel as they are.
    let _ = FRAGS_V6.insert(k, v, 0);
}

/// Rewrites a later fragment of IPv6 datagram `id` (upper-layer `proto`)
/// like its first; `false` when it is unknown.
#[inline(always)]
pub fn follow_v6(ip: *mut Ipv6Hdr, proto: u8, id: u32) -> bool {
    let k = unsafe {
        FragKeyV6 {
            src_addr: (*ip).src,
            dst_addr: (*ip).dst,
            id,
            proto,
            _pad: [0; 3],
        }
    };
    let Some(v) = FRAGS_V6.get_ptr(k) else {
        return false;
    };
    unsafe {
        (*ip).src = (*v).src_addr;
        (*ip).dst = (*v).dst_addr;
    }
    true
}
