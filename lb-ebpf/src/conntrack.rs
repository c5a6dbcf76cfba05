//! Connection tracking: lookup with expiry, creation of the forward and
//! reverse entries, and TCP state kept identical on both.
//!
//! Unsafe in this module: the clock helper, which takes no arguments, and
//! field accesses through `CT_V4` entry pointers. The memory behind a
//! lookup's pointer stays valid until the program returns (an LRU map's
//! elements are preallocated), though another CPU may update the entry, or
//! delete it and reuse the element, meanwhile: every field touched is
//! aligned and at most 8 bytes, so each is read or written whole, never
//! torn.
use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::{
    checksum::{RewriteSums, Tuple},
    conntrack::{
        lifetime_s, tcp_next, STATE_CLOSING, STATE_ROUTED, STATE_SEEN_REPLY, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN,
    },
    BackendV4, Config, CtKeyV4, CtValueV4, Reason, CT_DIR_REPLY, CT_REFRESH_NS, PROTO_TCP,
};

use crate::{
    maps::{CONFIG, CT_V4},
    stats,
};

#[inline(always)]
pub fn now() -> u64 {
    // Coarse time is a per-tick value, far cheaper than a clock read, and
    // timeouts measured in seconds do not need more.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) if c.udp_timeout_s != 0 => *c,
        _ => Config::DEFAULT,
    }
}

/// When an entry of protocol `proto` in `state` expires if no packet
/// refreshes it after `now`.
#[inline(always)]
fn deadline(proto: u8, state: u8, now: u64) -> u64 {
    now + lifetime_s(&config(), proto, state) as u64 * 1_000_000_000
}

/// The live entry for `key`, or `None` when there is none, it has expired,
/// or a fresh SYN reuses the tuple of a closed TCP connection.
#[inline(always)]
pub fn lookup(key: &CtKeyV4, tcp_flags: u8, now: u64) -> Option<*mut CtValueV4> {
    let ct = CT_V4.get_ptr_mut(key)?;
    let (state, expires) = unsafe { ((*ct).state, (*ct).expires_ns) };
    if now > expires {
        return None;
    }
    if state & STATE_CLOSING != 0 && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return None;
    }
    Some(ct)
}

/// Creates both entries of a new flow from client `key` to backend `be`,
/// with the source rewritten to `snat` when given.
#[inline(always)]
pub fn create(
    key: &CtKeyV4,
    be: &BackendV4,
    svc_id: u32,
    snat: Option<(u32, u16)>,
    now: u64,
) -> Option<*mut CtValueV4> {
    let (seen_addr, seen_port) = snat.unwrap_or((key.src_addr, key.src_port));
    let rev_key = CtKeyV4::reply((be.addr, be.port), (seen_addr, seen_port), key.proto);
    if let Some(old) = CT_V4.get_ptr(rev_key) {
        let (a, p) = unsafe { ((*old).nat_addr, (*old).nat_port) };
        if a != key.dst_addr || p != key.dst_port {
            stats::count(Reason::CtClash);
        }
    }
    let client = key.tuple();
    let to_backend = Tuple {
        src: seen_addr,
        dst: be.addr,
        sport: seen_port,
        dport: be.port,
    };
    let mut value = CtValueV4 {
        expires_ns: deadline(key.proto, 0, now),
        last_seen_ns: now,
        nat_addr: key.dst_addr,
        nat_port: key.dst_port,
        svc_id,
        ..CtValueV4::default()
    };
    if snat.is_some() {
        value.snat_addr = key.src_addr;
        value.snat_port = key.src_port;
    }
    value.set_sums(RewriteSums::new(
        to_backend.reversed(),
        client.reversed(),
        key.proto,
    ));
    CT_V4.insert(rev_key, value, 0).ok()?;
    value.nat_addr = be.addr;
    value.nat_port = be.port;
    if let Some((addr, port)) = snat {
        value.snat_addr = addr;
        value.snat_port = port;
    }
    value.set_sums(RewriteSums::new(client, to_backend, key.proto));
    CT_V4.insert(*key, value, 0).ok()?;
    CT_V4.get_ptr_mut(key)
}

/// Applies one packet to its entry; returns whether the cached forwarding
/// decision is due for a refresh (which also pushes out the expiry).
#[inline(always)]
pub fn on_packet(key: &CtKeyV4, ct: *mut CtValueV4, tcp_flags: u8, now: u64) -> bool {
    let reply = key.dir == CT_DIR_REPLY;
    let (mut state, seen) = unsafe { ((*ct).state, (*ct).last_seen_ns) };
    let mut changed = false;
    // The first reply marks either protocol's flow as replied (UDP's
    // lifetime depends on it too); only TCP has FIN and RST.
    if (key.proto == PROTO_TCP && tcp_flags & (TCP_FIN | TCP_RST) != 0)
        || (reply && state & STATE_SEEN_REPLY == 0)
    {
        state = tcp_next(state, tcp_flags, reply);
        unsafe { (*ct).state = state };
        mirror(key, ct, tcp_flags, reply, now);
        changed = true;
    }
    let refresh = state & STATE_ROUTED == 0 || now.saturating_sub(seen) > CT_REFRESH_NS;
    if refresh {
        unsafe { (*ct).last_seen_ns = now };
    }
    if refresh || changed {
        unsafe { (*ct).expires_ns = deadline(key.proto, state, now) };
    }
    refresh
}

/// Keeps the other direction's entry in the same TCP state, so the timeout
/// chosen for either lookup reflects the whole connection.
#[inline(always)]
fn mirror(key: &CtKeyV4, ct: *const CtValueV4, tcp_flags: u8, reply: bool, now: u64) {
    let (nat_addr, nat_port, snat_addr, snat_port) = unsafe {
        (
            (*ct).nat_addr,
            (*ct).nat_port,
            (*ct).snat_addr,
            (*ct).snat_port,
        )
    };
    // Without source NAT the client is the other side of this packet's tuple.
    let snat = snat_addr != 0;
    let other = if reply {
        let client = if snat {
            (snat_addr, snat_port)
        } else {
            (key.dst_addr, key.dst_port)
        };
        CtKeyV4::forward(client, (nat_addr, nat_port), key.proto)
    } else {
        let seen = if snat {
            (snat_addr, snat_port)
        } else {
            (key.src_addr, key.src_port)
        };
        CtKeyV4::reply((nat_addr, nat_port), seen, key.proto)
    };
    if let Some(o) = CT_V4.get_ptr_mut(other) {
        let state = unsafe { tcp_next((*o).state, tcp_flags, reply) };
        unsafe {
            (*o).state = state;
            (*o).expires_ns = deadline(key.proto, state, now);
        }
    }
}
