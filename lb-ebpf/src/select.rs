//! Backend choice: ClientIP affinity if the frontend has it and the client
//! has a live entry, else the flow hash indexes the frontend's Maglev ring.
//! The packet path and the socket hooks (`sock.rs`) share it.
use lb_common::{
    flow::flow_hash_v4, sock::SockAffinityKeyV4, AffinityKeyV4, AffinityValue, BackendV4, CtKeyV4,
    FrontendKeyV4, FrontendValue,
};

use crate::maps::{AFFINITY_V4, BACKENDS_V4, MAGLEV_SLOTS, SOCK_AFFINITY_V4};

/// Who a ClientIP affinity entry belongs to: a packet's source address, or
/// the network namespace of a socket that has none yet.
pub enum Client {
    Addr(u32),
    Netns(u64),
}

impl Client {
    #[inline(always)]
    fn entry(&self, fe_key: &FrontendKeyV4) -> Option<*mut AffinityValue> {
        match *self {
            Client::Addr(client_addr) => AFFINITY_V4.get_ptr_mut(AffinityKeyV4 {
                frontend: *fe_key,
                client_addr,
            }),
            Client::Netns(netns_cookie) => SOCK_AFFINITY_V4.get_ptr_mut(SockAffinityKeyV4 {
                frontend: *fe_key,
                netns_cookie,
            }),
        }
    }

    #[inline(always)]
    fn remember(&self, fe_key: &FrontendKeyV4, value: &AffinityValue) {
        // Losing this write only costs the client its stickiness.
        let _ = match *self {
            Client::Addr(client_addr) => AFFINITY_V4.insert(
                AffinityKeyV4 {
                    frontend: *fe_key,
                    client_addr,
                },
                *value,
                0,
            ),
            Client::Netns(netns_cookie) => SOCK_AFFINITY_V4.insert(
                SockAffinityKeyV4 {
                    frontend: *fe_key,
                    netns_cookie,
                },
                *value,
                0,
            ),
        };
    }
}

#[inline(always)]
fn by_id(id: u32) -> Option<BackendV4> {
    let be = *BACKENDS_V4.get(id)?;
    (be.addr != 0).then_some(be)
}

/// `None` when the frontend has no usable backend.
#[inline(always)]
pub fn backend(
    fe: &FrontendValue,
    fe_key: &FrontendKeyV4,
    flow: &CtKeyV4,
    now: u64,
) -> Option<BackendV4> {
    pick(fe, fe_key, Client::Addr(flow.src_addr), now, || {
        flow_hash_v4(
            flow.src_addr,
            flow.dst_addr,
            flow.src_port,
            flow.dst_port,
            flow.proto,
        )
    })
}

/// The backend for a new flow or socket of `client`. `hash` places it on
/// the ring; a closure, so an affinity hit never pays for hashing.
#[inline(always)]
pub fn pick(
    fe: &FrontendValue,
    fe_key: &FrontendKeyV4,
    client: Client,
    now: u64,
    hash: impl FnOnce() -> u32,
) -> Option<BackendV4> {
    if fe.ring_size == 0 {
        return None;
    }
    if fe.affinity_timeout_s != 0 {
        if let Some(a) = client.entry(fe_key) {
            let (seen, id) = unsafe { ((*a).last_seen_ns, (*a).backend_id) };
            let live = now.saturating_sub(seen) <= fe.affinity_timeout_s as u64 * 1_000_000_000;
            if let (true, Some(be)) = (live, by_id(id)) {
                unsafe { (*a).last_seen_ns = now };
                return Some(be);
            }
        }
    }
    let slot = fe.ring_offset.wrapping_add(hash() % fe.ring_size);
    let id = *MAGLEV_SLOTS.get(slot)?;
    let be = by_id(id)?;
    if fe.affinity_timeout_s != 0 {
        let value = AffinityValue {
            last_seen_ns: now,
            backend_id: id,
            _pad: 0,
        };
        client.remember(fe_key, &value);
    }
    Some(be)
}
