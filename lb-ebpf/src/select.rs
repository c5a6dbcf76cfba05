//! Backend choice: ClientIP affinity if the frontend has it and the client
//! has a live entry, else the flow hash indexes the frontend's Maglev ring.
//! The packet path and the socket hooks (`sock.rs`) share it.
use lb_common::{
    flow::flow_hash_v4, AffinityKeyV4, AffinityValue, BackendV4, CtKeyV4, FrontendKeyV4,
    FrontendValue,
};

use crate::maps::{AFFINITY_V4, BACKENDS_V4, MAGLEV_SLOTS};

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
    pick(fe, fe_key, flow.src_addr, now, || {
        flow_hash_v4(
            flow.src_addr,
            flow.dst_addr,
            flow.src_port,
            flow.dst_port,
            flow.proto,
        )
    })
}

/// The backend for a new flow or socket of `client_addr`. `hash` places it
/// on the ring; a closure, so an affinity hit never pays for hashing.
#[inline(always)]
pub fn pick(
    fe: &FrontendValue,
    fe_key: &FrontendKeyV4,
    client_addr: u32,
    now: u64,
    hash: impl FnOnce() -> u32,
) -> Option<BackendV4> {
    if fe.ring_size == 0 {
        return None;
    }
    let affinity = AffinityKeyV4 {
        frontend: *fe_key,
        client_addr,
    };
    if fe.affinity_timeout_s != 0 {
        if let Some(a) = AFFINITY_V4.get_ptr_mut(affinity) {
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
        // Losing this write only costs the client its stickiness.
        let _ = AFFINITY_V4.insert(affinity, value, 0);
    }
    Some(be)
}
