//! Per-CPU counters: no atomics, summed by the reader.
//!
//! Unsafe in this module: increments through `STATS` and `SVC_STATS`
//! pointers, this CPU's own copies, so no atomics are needed: the reader
//! sums the CPUs.
use lb_common::{Reason, SvcStats};

use crate::maps::{STATS, SVC_STATS};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(c) = STATS.get_ptr_mut(reason as u32) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_service(svc_id: u32, bytes: u64) {
    if let Some(s) = SVC_STATS.get_ptr_mut(svc_id) {
        let s: &mut SvcStats = unsafe { &mut *s };
        s.packets += 1;
        s.bytes += bytes;
    }
}
