//! Backend choice: the flow hash indexes the frontend's Maglev ring.
use lb_common::{BackendV4, FrontendValue};

use crate::maps::{BACKENDS_V4, MAGLEV_SLOTS};

/// `fe.ring_size` must be non-zero.
#[inline(always)]
pub fn backend(fe: &FrontendValue, hash: u32) -> Option<BackendV4> {
    let slot = fe.ring_offset.wrapping_add(hash % fe.ring_size);
    let id = *MAGLEV_SLOTS.get(slot)?;
    let be = *BACKENDS_V4.get(id)?;
    if be.addr == 0 {
        return None;
    }
    Some(be)
}
