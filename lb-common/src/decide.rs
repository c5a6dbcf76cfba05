//! How a new flow to a frontend is decided from what the maps hold: one set
//! of rules for the packet path, the socket hooks and `xdplb explain`, each
//! reading (and, for the data plane, refreshing) the maps through its own
//! `View`. The packet path only adds what needs the packet (sending a
//! reject, source NAT, connection tracking). A view reads one address
//! family's maps: IPv4's for all three, IPv6's for the socket hooks.
use crate::{
    AffinityValue, BackendV4, BackendV6, FrontendKeyV4, FrontendKeyV6, FrontendValue, Reason,
    FE_DROP_EMPTY, FE_SOURCE_RANGES,
};

/// Who a ClientIP affinity entry belongs to: a packet's source address, or
/// the network namespace of a socket that has none yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client<A = u32> {
    Addr(A),
    Netns(u64),
}

/// A frontend key of one address family.
pub trait Key {
    /// `Default`: the unspecified address, a socket's source before it has one.
    type Addr: Copy + Default;
    fn addr(&self) -> Self::Addr;
}

impl Key for FrontendKeyV4 {
    type Addr = u32;
    #[inline(always)]
    fn addr(&self) -> u32 {
        self.addr
    }
}

impl Key for FrontendKeyV6 {
    type Addr = [u32; 4];
    #[inline(always)]
    fn addr(&self) -> [u32; 4] {
        self.addr
    }
}

/// A backend of one address family.
pub trait Backend: Copy {
    /// Whether the entry names a backend: a removed one's id reads as
    /// zeroes or nothing.
    fn is_live(&self) -> bool;
}

impl Backend for BackendV4 {
    #[inline(always)]
    fn is_live(&self) -> bool {
        self.addr != 0
    }
}

impl Backend for BackendV6 {
    #[inline(always)]
    fn is_live(&self) -> bool {
        self.addr != [0; 4]
    }
}

/// The maps a decision reads.
pub trait View {
    /// Where an affinity entry was found, so using it needs no second
    /// lookup (the data plane's pointer into the map; nothing for a
    /// read-only view).
    type Entry;
    type Key: Key;
    type Backend: Backend;
    fn frontend(&self, key: &Self::Key) -> Option<FrontendValue>;
    /// Whether `addr` is a Service address whose unknown ports are refused.
    fn is_frontend_addr(&self, addr: <Self::Key as Key>::Addr) -> bool;
    /// Whether `src` is in the loadBalancerSourceRanges of `svc_id`.
    fn in_source_ranges(&self, svc_id: u32, src: <Self::Key as Key>::Addr) -> bool;
    fn affinity(
        &self,
        fe: &Self::Key,
        client: &ClientOf<Self>,
    ) -> Option<(AffinityValue, Self::Entry)>;
    /// The backend id in slot `index` of the ring array.
    fn slot(&self, index: u32) -> Option<u32>;
    fn backend(&self, id: u32) -> Option<Self::Backend>;
    /// A live affinity entry was used at `now` (the data plane refreshes
    /// it; a read-only view does nothing).
    fn affinity_used(&self, entry: Self::Entry, now: u64);
    /// A new affinity entry (the data plane writes it).
    fn affinity_chosen(&self, fe: &Self::Key, client: &ClientOf<Self>, value: &AffinityValue);
}

/// The affinity client of a view's address family.
pub type ClientOf<V> = Client<<<V as View>::Key as Key>::Addr>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<B = BackendV4> {
    /// No frontend: the packet or socket is left alone.
    NotOurs,
    /// Rejected or dropped, as `reason` says.
    Refused(Reason),
    Backend {
        fe: FrontendValue,
        id: u32,
        backend: B,
        by: By,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// The client's live ClientIP affinity entry.
    Affinity,
    /// The flow's hash on the frontend's Maglev ring.
    Ring { hash: u32, slot: u32 },
}

/// A backend id that names a backend.
#[inline(always)]
fn live_backend<V: View>(v: &V, id: u32) -> Option<V::Backend> {
    v.backend(id).filter(Backend::is_live)
}

/// Whether an affinity entry last used at `seen` still holds at `now`.
#[inline(always)]
pub fn affinity_live(seen: u64, now: u64, timeout_s: u32) -> bool {
    now.saturating_sub(seen) <= timeout_s as u64 * 1_000_000_000
}

/// The backend for a new flow or socket of `client` to frontend `fe`:
/// a live affinity entry first, else `hash` on the ring; `None` when the
/// frontend has no usable backend. `hash` is a closure, so an affinity hit
/// never pays for hashing.
#[inline(always)]
pub fn pick<V: View>(
    v: &V,
    fe: &FrontendValue,
    fe_key: &V::Key,
    client: &ClientOf<V>,
    now: u64,
    hash: impl FnOnce() -> u32,
) -> Option<(u32, V::Backend, By)> {
    if fe.ring_size == 0 {
        return None;
    }
    if fe.affinity_timeout_s != 0 {
        if let Some((a, entry)) = v.affinity(fe_key, client) {
            if affinity_live(a.last_seen_ns, now, fe.affinity_timeout_s) {
                if let Some(be) = live_backend(v, a.backend_id) {
                    v.affinity_used(entry, now);
                    return Some((a.backend_id, be, By::Affinity));
                }
            }
        }
    }
    let hash = hash();
    let slot = fe.ring_offset.wrapping_add(hash % fe.ring_size);
    let id = v.slot(slot)?;
    let be = live_backend(v, id)?;
    if fe.affinity_timeout_s != 0 {
        let value = AffinityValue {
            last_seen_ns: now,
            backend_id: id,
            _pad: 0,
        };
        v.affinity_chosen(fe_key, client, &value);
    }
    Some((id, be, By::Ring { hash, slot }))
}

/// The verdict on a frontend that has no usable backend: traffic policy
/// Local drops (kube-proxy's behaviour), anything else is rejected.
#[inline(always)]
pub fn no_backend(fe: &FrontendValue) -> Reason {
    if fe.flags & FE_DROP_EMPTY != 0 {
        Reason::DropNoLocalBackend
    } else {
        Reason::RejectNoBackend
    }
}

/// Decides a new flow from `src` to `fe_key`. `in_cluster`: from a pod or
/// the node, where loadBalancerSourceRanges do not apply.
#[inline(always)]
pub fn new_flow<V: View>(
    v: &V,
    fe_key: &V::Key,
    src: <V::Key as Key>::Addr,
    in_cluster: bool,
    client: &ClientOf<V>,
    now: u64,
    hash: impl FnOnce() -> u32,
) -> Decision<V::Backend> {
    let Some(fe) = v.frontend(fe_key) else {
        return if v.is_frontend_addr(fe_key.addr()) {
            Decision::Refused(Reason::RejectUnknownPort)
        } else {
            Decision::NotOurs
        };
    };
    if fe.flags & FE_SOURCE_RANGES != 0 && !in_cluster && !v.in_source_ranges(fe.svc_id, src) {
        return Decision::Refused(Reason::DropSourceRange);
    }
    match pick(v, &fe, fe_key, client, now, hash) {
        Some((id, backend, by)) => Decision::Backend {
            fe,
            id,
            backend,
            by,
        },
        None => Decision::Refused(no_backend(&fe)),
    }
}
