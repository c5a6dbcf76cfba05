//! This CPU's exact-match cache of established flows (`FlowCacheEntryV4`):
//! a hit costs a multiply and an array read where `CT_V4` costs a jhash and
//! a bucket walk. Only packets that cannot change a flow's state use it, so
//! every TCP transition still happens on the entry in `CT_V4`.
//!
//! Unsafe in this module: the jiffies helper, and accesses through a
//! `FLOW_CACHE_V4` slot pointer and a `CT_V4` entry pointer, valid until the
//! program returns. The slot is this CPU's own copy, so no other CPU writes
//! it while the packet path uses it.
use aya_ebpf::helpers::generated::bpf_jiffies64;
use lb_common::{
    conntrack::{TCP_FIN, TCP_RST, TCP_SYN},
    flow_cache_slot, CtKeyV4, CtValueV4, FlowCacheEntryV4, CT_REFRESH_NS, FLOW_CACHE_JIFFIES,
};

use crate::maps::FLOW_CACHE_V4;

/// The cache's clock (see `FLOW_CACHE_JIFFIES`).
#[inline(always)]
pub fn jiffies() -> u64 {
    unsafe { bpf_jiffies64() }
}

/// This CPU's slot for `key`, looked up once per packet for both `get` and
/// `put`; `None` for packets that must go to `CT_V4`: SYN, FIN and RST
/// segments (`CT_V4` tracks the TCP state) and first fragments.
#[inline(always)]
pub fn slot(key: &CtKeyV4, tcp_flags: u8, first_fragment: bool) -> Option<*mut FlowCacheEntryV4> {
    if tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 || first_fragment {
        return None;
    }
    FLOW_CACHE_V4.get_ptr_mut(flow_cache_slot(key))
}

/// The slot's copy of `key`'s entry, while it is fresh.
#[inline(always)]
pub fn get(slot: *mut FlowCacheEntryV4, key: &CtKeyV4, jiffies: u64) -> Option<*mut CtValueV4> {
    let (cached, until) = unsafe { ((*slot).key.words(), (*slot).until_jiffies) };
    if cached != key.words() || jiffies > until {
        return None;
    }
    Some(unsafe { &raw mut (*slot).ct })
}

/// Keeps a copy of `ct` after it translated a packet of `key`. The packet
/// has made every state transition a later usable packet of the same
/// direction could make (the first reply marks the entry established). An
/// entry that expires before the copy would is not copied: its packets
/// must find it gone.
#[inline(always)]
pub fn put(
    slot: *mut FlowCacheEntryV4,
    key: &CtKeyV4,
    ct: *const CtValueV4,
    now: u64,
    jiffies: u64,
) {
    let v = unsafe { *ct };
    if v.expires_ns <= now + CT_REFRESH_NS {
        return;
    }
    unsafe {
        (*slot).key = *key;
        (*slot).ct = v;
        (*slot).until_jiffies = jiffies + FLOW_CACHE_JIFFIES;
    }
}
