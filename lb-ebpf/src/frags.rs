//! IP fragments. The first fragment carries the ports and is balanced like
//! any packet; its translation is remembered by (addresses, IP id) so the
//! later fragments, which carry no ports, follow it to the same backend
//! (Cilium's approach). A later fragment without that state is passed to the
//! kernel untouched, never sent to a guessed backend.
//!
//! Unsafe in this module: IPv4 header accesses through a pointer
//! `parse::ptr_at` checked, and reads of a `FRAGS_V4` entry, valid until the
//! program returns.
use lb_common::{checksum::update32, FragKeyV4, FragValueV4};

use crate::{maps::FRAGS_V4, parse::Ipv4Hdr};

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
