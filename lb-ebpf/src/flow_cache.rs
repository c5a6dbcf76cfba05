//! This CPU's exact-match cache of established flows (`FlowCacheEntryV4`,
//! `FlowCacheEntryV6`): a hit costs a multiply and an array read where
//! `CT_V4` and `CT_V6` cost a jhash and a bucket walk. Only packets that
//! cannot change a flow's state use it, so every TCP transition still
//! happens on the entry in connection tracking.
//!
//! Unsafe in this module: the jiffies helper, and accesses through a cache
//! slot pointer and a connection-tracking entry pointer, valid until the
//! program returns. The slot is this CPU's own copy, so no other CPU writes
//! it while the packet path uses it. IPv6 keys are read as 64-bit words,
//! which both keys compared are aligned to (`same_v6`).
use aya_ebpf::helpers::generated::bpf_jiffies64;
use lb_common::{
    conntrack::{TCP_FIN, TCP_RST, TCP_SYN},
    flow_cache_slot, flow_cache_slot_v6, CtKeyV4, CtKeyV6, CtValue, FlowCacheEntryV4,
    FlowCacheEntryV6, CT_REFRESH_NS, FLOW_CACHE_JIFFIES,
};

use crate::{
    conntrack::Table,
    maps::{FLOW_CACHE_V4, FLOW_CACHE_V6},
};

/// A family's flow cache: how keys compare, and the map.
pub trait Cached: Table {
    type Entry;
    /// Whether the keys at `a` and `b` are equal, compared where they lie:
    /// copies of IPv6 keys would take stack the IPv6 path does not have.
    fn same(a: *const Self, b: *const Self) -> bool;
    /// This CPU's slot for the key.
    fn cache_slot(&self) -> Option<*mut Self::Entry>;
    /// The entry's key, copy and expiry, as field projections.
    fn parts(e: *mut Self::Entry) -> (*mut Self, *mut Self::Value, *mut u64);
}

macro_rules! cached {
    ($key:ty, $entry:ty, $map:ident, $slot:ident, $same:ident) => {
        impl Cached for $key {
            type Entry = $entry;
            #[inline(always)]
            fn same(a: *const Self, b: *const Self) -> bool {
                $same(a, b)
            }
            #[inline(always)]
            fn cache_slot(&self) -> Option<*mut $entry> {
                $map.get_ptr_mut($slot(self))
            }
            #[inline(always)]
            fn parts(e: *mut $entry) -> (*mut Self, *mut Self::Value, *mut u64) {
                unsafe {
                    (
                        &raw mut (*e).key,
                        &raw mut (*e).ct,
                        &raw mut (*e).until_jiffies,
                    )
                }
            }
        }
    };
}
cached!(
    CtKeyV4,
    FlowCacheEntryV4,
    FLOW_CACHE_V4,
    flow_cache_slot,
    same_v4
);
cached!(
    CtKeyV6,
    FlowCacheEntryV6,
    FLOW_CACHE_V6,
    flow_cache_slot_v6,
    same_v6
);

#[inline(always)]
fn same_v4(a: *const CtKeyV4, b: *const CtKeyV4) -> bool {
    unsafe { (*a).words() == (*b).words() }
}

/// Five 64-bit word pairs folded into one test, so that a mismatch is one
/// branch. Both keys are 8-byte aligned: a slot's lies in a map value, the
/// packet's in a `service6::KeyRoom`.
#[inline(always)]
fn same_v6(a: *const CtKeyV6, b: *const CtKeyV6) -> bool {
    const WORDS: usize = core::mem::size_of::<CtKeyV6>() / 8;
    let (a, b) = (a.cast::<[u64; WORDS]>(), b.cast::<[u64; WORDS]>());
    let mut diff = 0;
    for i in 0..WORDS {
        diff |= unsafe { (*a)[i] ^ (*b)[i] };
    }
    diff == 0
}

/// The cache's clock (see `FLOW_CACHE_JIFFIES`).
#[inline(always)]
pub fn jiffies() -> u64 {
    unsafe { bpf_jiffies64() }
}

/// This CPU's slot for `key`, looked up once per packet for both `get` and
/// `put`; `None` for packets that must go to connection tracking
/// (`usable`).
#[inline(always)]
pub fn slot<K: Cached>(key: &K, tcp_flags: u8, first_fragment: bool) -> Option<*mut K::Entry> {
    if !usable(tcp_flags, first_fragment) {
        return None;
    }
    key.cache_slot()
}

/// Whether a packet may use the cache: not SYN, FIN and RST segments
/// (connection tracking tracks the TCP state), nor first fragments.
#[inline(always)]
pub fn usable(tcp_flags: u8, first_fragment: bool) -> bool {
    tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 && !first_fragment
}

/// The slot's copy of `key`'s entry, while it is fresh.
#[inline(always)]
pub fn get<K: Cached>(slot: *mut K::Entry, key: &K, jiffies: u64) -> Option<*mut K::Value> {
    let (cached, ct, until) = K::parts(slot);
    if !K::same(cached, key) || jiffies > unsafe { *until } {
        return None;
    }
    Some(ct)
}

/// Keeps a copy of `ct` after it translated a packet of `key`. The packet
/// has made every state transition a later usable packet of the same
/// direction could make (the first reply marks the entry established).
#[inline(always)]
pub fn put<K: Cached>(slot: *mut K::Entry, key: &K, ct: *mut K::Value, now: u64, jiffies: u64) {
    if lasts(ct, now) {
        stage(slot, key, ct, jiffies + FLOW_CACHE_JIFFIES);
    }
}

/// Copies `ct`, the entry of `key` after a packet that may (`usable`) or
/// may not use the cache, into `slot` and returns the copy, which later
/// packets may use when the packet could and the entry lasts. The IPv6
/// path translates every packet by such a copy: one kind of entry pointer
/// for the verifier to follow through the rewrite, not two.
#[inline(always)]
pub fn keep<K: Cached>(
    slot: *mut K::Entry,
    key: &K,
    ct: *mut K::Value,
    usable: bool,
    now: u64,
) -> *mut K::Value {
    let until = if usable && lasts(ct, now) {
        jiffies() + FLOW_CACHE_JIFFIES
    } else {
        0
    };
    stage(slot, key, ct, until)
}

/// Copies `ct`, the entry of `key`, into `slot`, for later packets to use
/// until `until` jiffies (0: none may), and returns the copy.
#[inline(always)]
fn stage<K: Cached>(slot: *mut K::Entry, key: &K, ct: *mut K::Value, until: u64) -> *mut K::Value {
    let (cached, copy, until_jiffies) = K::parts(slot);
    // Not assignments, which become calls of a byte-by-byte `memmove`.
    unsafe {
        core::ptr::copy_nonoverlapping(key, cached, 1);
        core::ptr::copy_nonoverlapping(ct, copy, 1);
        *until_jiffies = until;
    }
    copy
}

/// Whether `ct` outlives any copy made now: an entry that expires before
/// the copy would is not copied, as its packets must find it gone.
#[inline(always)]
fn lasts<V: CtValue>(ct: *mut V, now: u64) -> bool {
    let expires = unsafe { *V::expires_ns(ct) };
    expires > now + CT_REFRESH_NS
}
