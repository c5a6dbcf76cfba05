//! This CPU's exact-match cache of established flows (`FlowCacheEntryV4`):
//! a hit costs a multiply and an array read where `CT_V4` costs a jhash and
//! a bucket walk. Only packets that cannot change a flow's state use it, so
//! every TCP transition still happens on the entry in `CT_V4`.
use lb_common::{
    conntrack::{TCP_FIN, TCP_RST, TCP_SYN},
    flow_cache_slot, CtKeyV4, CtValueV4, CT_REFRESH_NS,
};

use crate::maps::FLOW_CACHE_V4;

/// SYN, FIN and RST segments go to `CT_V4`, which tracks the TCP state.
#[inline(always)]
pub fn usable(tcp_flags: u8, first_fragment: bool) -> bool {
    tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 && !first_fragment
}

/// The cached copy of `key`'s entry, while it needs no refresh.
#[inline(always)]
pub fn get(key: &CtKeyV4, now: u64) -> Option<*mut CtValueV4> {
    let e = FLOW_CACHE_V4.get_ptr_mut(flow_cache_slot(key))?;
    let (cached, until) = unsafe { (words(&(*e).key), (*e).ct.expires_ns) };
    if cached != words(key) || now > until {
        return None;
    }
    Some(unsafe { &raw mut (*e).ct })
}

/// Keeps a copy of `ct` after it translated a packet of `key`. The packet
/// has made every state transition a later usable packet of the same
/// direction could make (the first reply marks the entry established).
#[inline(always)]
pub fn put(key: &CtKeyV4, ct: *const CtValueV4) {
    let mut v = unsafe { *ct };
    v.expires_ns = v.expires_ns.min(v.last_seen_ns + CT_REFRESH_NS);
    if let Some(e) = FLOW_CACHE_V4.get_ptr_mut(flow_cache_slot(key)) {
        unsafe {
            (*e).key = *key;
            (*e).ct = v;
        }
    }
}

/// The key as two words: two compares instead of seven.
#[inline(always)]
fn words(k: &CtKeyV4) -> [u64; 2] {
    unsafe { core::mem::transmute::<CtKeyV4, [u64; 2]>(*k) }
}
