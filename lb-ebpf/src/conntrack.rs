//! Connection tracking: lookup with expiry, creation of the forward and
//! reverse entries, and TCP state kept identical on both; one
//! implementation for both families' tables (`Table`).
//!
//! Unsafe in this module: the clock helper, which takes no arguments, and
//! field accesses through `CT_V4` and `CT_V6` entry pointers. The memory behind a
//! lookup's pointer stays valid until the program returns (an LRU map's
//! elements are preallocated), though another CPU may update the entry, or
//! delete it and reuse the element, meanwhile: every field touched is
//! aligned and at most 8 bytes, so each is read or written whole, never
//! torn.
use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::{
    checksum::{Addr, RewriteSums, Tuple},
    conntrack::{
        lifetime_s, tcp_next, STATE_CLOSING, STATE_ROUTED, STATE_SEEN_REPLY, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN,
    },
    Config, CtKey, CtKeyV4, CtKeyV6, CtValue, CtValueV4, CtValueV6, Reason, CT_DIR_REPLY,
    CT_REFRESH_NS, PROTO_TCP,
};

use crate::{
    maps::{CONFIG, CT_V4, CT_V6},
    stats,
};

#[inline(always)]
pub fn now() -> u64 {
    // Coarse time is a per-tick value, far cheaper than a clock read, and
    // timeouts measured in seconds do not need more.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The agent's settings; the defaults while it has written none, or while
/// the pinned ones are an older agent's, which left the unreplied UDP
/// lifetime 0 (no timeout the agent takes).
#[inline(always)]
pub fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) if c.udp_timeout_s != 0 && c.udp_unreplied_timeout_s != 0 => *c,
        _ => Config::DEFAULT,
    }
}

/// When an entry of protocol `proto` in `state` expires if no packet
/// refreshes it after `now`.
#[inline(always)]
fn deadline(proto: u8, state: u8, now: u64) -> u64 {
    now + lifetime_s(&config(), proto, state) as u64 * 1_000_000_000
}

/// A family's connection-tracking map, keyed by its `CtKey`.
pub trait Table: CtKey {
    type Value: CtValue<Addr = Self::Addr>;
    fn entry(&self) -> Option<*mut Self::Value>;
    fn insert(&self, value: &Self::Value) -> Option<()>;
    fn remove(&self);
    /// `mirror` of this family's entries.
    fn mirror(&self, ct: *const Self::Value, tcp_flags: u8, reply: bool, now: u64);
}

impl Table for CtKeyV4 {
    type Value = CtValueV4;
    #[inline(always)]
    fn entry(&self) -> Option<*mut CtValueV4> {
        CT_V4.get_ptr_mut(self)
    }
    #[inline(always)]
    fn insert(&self, value: &CtValueV4) -> Option<()> {
        CT_V4.insert(self, value, 0).ok()
    }
    #[inline(always)]
    fn remove(&self) {
        let _ = CT_V4.remove(self);
    }
    #[inline(always)]
    fn mirror(&self, ct: *const CtValueV4, tcp_flags: u8, reply: bool, now: u64) {
        mirror(self, ct, tcp_flags, reply, now);
    }
}

impl Table for CtKeyV6 {
    type Value = CtValueV6;
    #[inline(always)]
    fn entry(&self) -> Option<*mut CtValueV6> {
        CT_V6.get_ptr_mut(self)
    }
    #[inline(always)]
    fn insert(&self, value: &CtValueV6) -> Option<()> {
        CT_V6.insert(self, value, 0).ok()
    }
    #[inline(always)]
    fn remove(&self) {
        let _ = CT_V6.remove(self);
    }
    #[inline(always)]
    fn mirror(&self, ct: *const CtValueV6, tcp_flags: u8, reply: bool, now: u64) {
        mirror_v6(self, ct, tcp_flags, reply, now);
    }
}

/// `mirror` of IPv6 entries, in a frame of its own: the other direction's
/// key would not fit the IPv6 entries' stack, and a packet rarely needs it
/// (a state change), while every packet through `CT_V6` goes through
/// `on_packet`.
#[inline(never)]
fn mirror_v6(key: &CtKeyV6, ct: *const CtValueV6, tcp_flags: u8, reply: bool, now: u64) {
    mirror(key, ct, tcp_flags, reply, now);
}

/// Whether `addr` is set: an entry without source NAT holds the
/// unspecified address as its SNAT address.
#[inline(always)]
pub fn is_set<A: Addr>(addr: A) -> bool {
    addr != A::default()
}

/// The live entry for `key`, or `None` when there is none, it has expired,
/// or a fresh SYN reuses the tuple of a closed TCP connection.
#[inline(always)]
pub fn lookup<K: Table>(key: &K, tcp_flags: u8, now: u64) -> Option<*mut K::Value> {
    let ct = key.entry()?;
    let (state, expires) = unsafe { (*K::Value::state(ct), *K::Value::expires_ns(ct)) };
    if now > expires {
        return None;
    }
    if state & STATE_CLOSING != 0 && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return None;
    }
    Some(ct)
}

/// The checksum differences of a new flow's two rewrites, computed once
/// for all its packets (`RewriteSums`).
#[derive(Default)]
pub struct FlowSums {
    pub to_backend: RewriteSums,
    pub back: RewriteSums,
}

/// The `FlowSums` of a flow from client `key` to `backend` (address and
/// port), with the source rewritten to `snat` when given.
#[inline(always)]
pub fn sums<K: Table>(key: &K, backend: (K::Addr, u16), snat: Option<(K::Addr, u16)>) -> FlowSums {
    let seen = snat.unwrap_or(key.src());
    let tuple = key.tuple();
    let to_backend = Tuple {
        src: seen.0,
        dst: backend.0,
        sport: seen.1,
        dport: backend.1,
    };
    FlowSums {
        to_backend: RewriteSums::new(&tuple, &to_backend, key.proto()),
        back: RewriteSums::back(&tuple, &to_backend, key.proto()),
    }
}

/// Creates both entries of a new flow from client `key` to `backend`
/// (address and port), with the source rewritten to `snat` when given and
/// checksums updated by `sums` (the flow's `sums`). The entries are built
/// in `value`, memory the caller provides: the stack for IPv4, a per-CPU
/// scratch value for IPv6, whose entries would crowd the stack.
#[inline(always)]
pub fn create<K: Table>(
    key: &K,
    backend: (K::Addr, u16),
    svc_id: u32,
    snat: Option<(K::Addr, u16)>,
    sums: &FlowSums,
    now: u64,
    value: &mut K::Value,
) -> Option<*mut K::Value> {
    let proto = key.proto();
    let (client, frontend) = (key.src(), key.dst());
    let rev_key = K::reply(backend, snat.unwrap_or(client), proto);
    if let Some(old) = rev_key.entry() {
        if unsafe { K::Value::nat(old) } != frontend {
            stats::count(Reason::CtClash);
        }
    }
    value.init(frontend, svc_id, now, deadline(proto, 0, now));
    if snat.is_some() {
        value.set_snat(client);
    }
    value.set_sums(sums.back);
    rev_key.insert(value)?;
    value.set_nat(backend);
    if let Some(snat) = snat {
        value.set_snat(snat);
    }
    value.set_sums(sums.to_backend);
    key.insert(value)?;
    key.entry()
}

/// Applies one packet to its entry; returns whether the cached forwarding
/// decision is due for a refresh (which also pushes out the expiry).
#[inline(always)]
pub fn on_packet<K: Table>(key: &K, ct: *mut K::Value, tcp_flags: u8, now: u64) -> bool {
    let reply = key.dir() == CT_DIR_REPLY;
    let (state_at, seen_at, expires_at) = (
        K::Value::state(ct),
        K::Value::last_seen_ns(ct),
        K::Value::expires_ns(ct),
    );
    let (mut state, seen) = unsafe { (*state_at, *seen_at) };
    let mut changed = false;
    // The first reply marks either protocol's flow as replied (UDP's
    // lifetime depends on it too); only TCP has FIN and RST.
    if (key.proto() == PROTO_TCP && tcp_flags & (TCP_FIN | TCP_RST) != 0)
        || (reply && state & STATE_SEEN_REPLY == 0)
    {
        state = tcp_next(state, tcp_flags, reply);
        unsafe { *state_at = state };
        key.mirror(ct, tcp_flags, reply, now);
        changed = true;
    }
    let refresh = state & STATE_ROUTED == 0 || now.saturating_sub(seen) > CT_REFRESH_NS;
    if refresh {
        unsafe { *seen_at = now };
    }
    if refresh || changed {
        unsafe { *expires_at = deadline(key.proto(), state, now) };
    }
    refresh
}

/// Keeps the other direction's entry in the same TCP state, so the timeout
/// chosen for either lookup reflects the whole connection.
#[inline(always)]
fn mirror<K: Table>(key: &K, ct: *const K::Value, tcp_flags: u8, reply: bool, now: u64) {
    let (nat, snat) = unsafe { (K::Value::nat(ct), K::Value::snat(ct)) };
    // Without source NAT the client is the other side of this packet's tuple.
    let snat = is_set(snat.0).then_some(snat);
    let other = if reply {
        K::forward(snat.unwrap_or(key.dst()), nat, key.proto())
    } else {
        K::reply(nat, snat.unwrap_or(key.src()), key.proto())
    };
    if let Some(o) = other.entry() {
        unsafe {
            let state = tcp_next(*K::Value::state(o), tcp_flags, reply);
            *K::Value::state(o) = state;
            *K::Value::expires_ns(o) = deadline(key.proto(), state, now);
        }
    }
}
