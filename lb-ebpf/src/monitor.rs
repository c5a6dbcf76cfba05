//! Events for `xdplb monitor` (`lb_common::monitor`), written where a drop,
//! a reject, a new flow or another event worth seeing is decided. The
//! established and reply paths have no event and never come here.
//!
//! Each event first reads the lease in `MONITOR_ON`: while no monitor runs
//! it is 0, and an event site costs one array load and a branch; the event
//! is built, the clock read and the ring reserved only under a live lease.
//!
//! Unsafe in this module: the clock helper, reads through `MONITOR_ON`,
//! frontend and connection-tracking pointers, valid until the program
//! returns, and header reads through pointers `parse::ptr_at` checked.
use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use lb_common::{
    monitor::MonitorEventOf, CtKey, CtKeyV4, CtKeyV6, CtValue, FrontendKeyV4, FrontendKeyV6,
    Reason, CT_DIR_FORWARD,
};

use crate::{
    frame::Frame,
    maps::{FRONTENDS_V4, FRONTENDS_V6, MONITOR, MONITOR_ON},
    parse::{Ipv4Hdr, Ipv6Hdr},
    stats,
};

/// `bpf_ktime_get_ns` if a monitor holds the lease. The first event site
/// to find the lease expired (its monitor was killed) clears it, so the
/// sites go back to not reading the clock.
#[inline(always)]
fn leased() -> Option<u64> {
    let lease = MONITOR_ON.get_ptr_mut(0)?;
    let until = unsafe { *lease };
    if until == 0 {
        return None;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if now >= until {
        unsafe { *lease = 0 };
        return None;
    }
    Some(now)
}

/// Writes the event `build` makes, under a lease only. A full ring counts
/// the event as lost: the reader is behind, and the packet goes on. Either
/// family's events go to the one ring, each record its event's size.
#[inline(always)]
fn emit<A: Copy + 'static>(build: impl FnOnce() -> MonitorEventOf<A>) {
    let Some(now) = leased() else {
        return;
    };
    match MONITOR.reserve_untyped::<MonitorEventOf<A>>(0) {
        Some(mut slot) => {
            slot.write(MonitorEventOf {
                ktime_ns: now,
                ..build()
            });
            slot.submit(0);
        }
        None => stats::count(Reason::MonitorEventsLost),
    }
}

/// What events read of a flow's key beyond `CtKey`, for either family.
pub trait Key: CtKey<Addr: Default + 'static> {
    /// The Service port of the frontend the key addresses, 0 if none;
    /// read for the event only, where the decision did not keep it.
    fn svc_id(&self) -> u32;
}

impl Key for CtKeyV4 {
    #[inline(always)]
    fn svc_id(&self) -> u32 {
        Frontend::svc_id(&self.frontend())
    }
}

impl Key for CtKeyV6 {
    #[inline(always)]
    fn svc_id(&self) -> u32 {
        Frontend::svc_id(&self.frontend())
    }
}

/// The event of packet `key` (as it arrived) counted under `reason`.
#[inline(always)]
fn of_key<K: Key>(reason: Reason, ifindex: u32, key: &K) -> MonitorEventOf<K::Addr> {
    let ((saddr, sport), (daddr, dport)) = (key.src(), key.dst());
    MonitorEventOf {
        reason: reason as u32,
        ifindex,
        saddr,
        daddr,
        sport,
        dport,
        proto: key.proto(),
        dir: key.dir(),
        ..MonitorEventOf::default()
    }
}

/// A packet of a flow with the entry `ct`, entering at `ifindex`: a new
/// flow and its backend (and source NAT), or an answer sent about a
/// translated packet.
#[inline(always)]
pub fn flow<K: Key, V: CtValue<Addr = K::Addr>>(
    ifindex: u32,
    reason: Reason,
    key: &K,
    ct: *const V,
) {
    emit(|| of_flow(reason, ifindex, key, ct));
}

/// As `flow`, for a path that kept no pointer to the entry: `find` looks
/// it up only while a monitor holds the lease, so the path pays nothing
/// for the event otherwise.
#[inline(always)]
pub fn flow_found<K: Key, V: CtValue<Addr = K::Addr>>(
    ifindex: u32,
    reason: Reason,
    key: &K,
    find: impl FnOnce(&K) -> Option<*const V>,
) {
    emit(|| match find(key) {
        Some(ct) => of_flow(reason, ifindex, key, ct),
        None => of_key(reason, ifindex, key),
    });
}

#[inline(always)]
fn of_flow<K: Key, V: CtValue<Addr = K::Addr>>(
    reason: Reason,
    ifindex: u32,
    key: &K,
    ct: *const V,
) -> MonitorEventOf<K::Addr> {
    let mut e = of_key(reason, ifindex, key);
    e.svc_id = unsafe { V::svc_id(ct) };
    (e.to_addr, e.to_port) = unsafe { V::nat(ct) };
    // On a reverse entry these name the client, not a source the packet
    // gets.
    if key.dir() == CT_DIR_FORWARD {
        (e.snat_addr, e.snat_port) = unsafe { V::snat(ct) };
    }
    e
}

/// A packet to a frontend refused before it had a flow: dropped, or
/// answered with a reject.
#[inline(always)]
pub fn refused<K: Key>(ifindex: u32, reason: Reason, key: &K) {
    emit(|| MonitorEventOf {
        svc_id: key.svc_id(),
        ..of_key(reason, ifindex, key)
    });
}

/// A source-NAT port taken for a new flow of `svc_id` to `backend`.
#[inline(always)]
pub fn snat<K: Key>(
    ifindex: u32,
    key: &K,
    backend: (K::Addr, u16),
    svc_id: u32,
    snat: (K::Addr, u16),
) {
    emit(|| MonitorEventOf {
        svc_id,
        to_addr: backend.0,
        to_port: backend.1,
        snat_addr: snat.0,
        snat_port: snat.1,
        ..of_key(Reason::SnatNewFlow, ifindex, key)
    });
}

/// The addresses of an IP header, for either family.
pub trait Header {
    type Addr: Copy + Default + 'static;
    /// # Safety
    /// `ip` points to a header inside the frame.
    unsafe fn addrs(ip: *const Self) -> (Self::Addr, Self::Addr);
}

impl Header for Ipv4Hdr {
    type Addr = u32;
    #[inline(always)]
    unsafe fn addrs(ip: *const Self) -> (u32, u32) {
        ((*ip).src, (*ip).dst)
    }
}

impl Header for Ipv6Hdr {
    type Addr = [u32; 4];
    #[inline(always)]
    unsafe fn addrs(ip: *const Self) -> ([u32; 4], [u32; 4]) {
        ((*ip).src, (*ip).dst)
    }
}

/// A packet of transport `proto` dropped before its ports were read.
#[inline(always)]
pub fn malformed<H: Header>(ifindex: u32, ip: *const H, proto: u8) {
    emit(|| {
        let (saddr, daddr) = unsafe { H::addrs(ip) };
        MonitorEventOf {
            reason: Reason::DropMalformed as u32,
            ifindex,
            saddr,
            daddr,
            proto,
            ..MonitorEventOf::default()
        }
    });
}

/// An ICMP or ICMPv6 (`proto`) error about a flow of `svc_id`, from `src`
/// to `dst`, sent on to `to` (0: the destination stays).
#[inline(always)]
pub fn icmp_error<C: Frame, A: Copy + Default + 'static>(
    ctx: &C,
    (src, dst): (A, A),
    to: A,
    svc_id: u32,
    proto: u8,
) {
    emit(|| MonitorEventOf {
        reason: Reason::XlateIcmpError as u32,
        svc_id,
        ifindex: ctx.ifindex(),
        saddr: src,
        daddr: dst,
        to_addr: to,
        proto,
        ..MonitorEventOf::default()
    });
}

/// What events read of a frontend key, for either family.
pub trait Frontend {
    type Addr: Copy + Default + 'static;
    fn at(&self) -> (Self::Addr, u16, u8);
    /// The Service port of the frontend, 0 if none; read for the event
    /// only, where the decision did not keep it.
    fn svc_id(&self) -> u32;
}

impl Frontend for FrontendKeyV4 {
    type Addr = u32;
    #[inline(always)]
    fn at(&self) -> (u32, u16, u8) {
        (self.addr, self.port, self.proto)
    }
    #[inline(always)]
    fn svc_id(&self) -> u32 {
        FRONTENDS_V4
            .get_ptr(self)
            .map_or(0, |v| unsafe { (*v).svc_id })
    }
}

impl Frontend for FrontendKeyV6 {
    type Addr = [u32; 4];
    #[inline(always)]
    fn at(&self) -> ([u32; 4], u16, u8) {
        (self.addr, self.port, self.proto)
    }
    #[inline(always)]
    fn svc_id(&self) -> u32 {
        FRONTENDS_V6
            .get_ptr(self)
            .map_or(0, |v| unsafe { (*v).svc_id })
    }
}

/// A socket hook's decision on a socket addressing `fe`: translated to the
/// backend (address, port) of Service port `svc_id`, or refused (`None`).
/// The socket's source is not known yet.
#[inline(always)]
pub fn socket<F: Frontend>(fe: &F, to: Option<(u32, (F::Addr, u16))>) {
    emit(|| {
        let (daddr, dport, proto) = fe.at();
        let mut e = MonitorEventOf {
            reason: Reason::SockRefused as u32,
            daddr,
            dport,
            proto,
            ..MonitorEventOf::default()
        };
        match to {
            Some((svc_id, (addr, port))) => {
                e.reason = Reason::SockTranslated as u32;
                e.svc_id = svc_id;
                (e.to_addr, e.to_port) = (addr, port);
            }
            None => e.svc_id = fe.svc_id(),
        }
        e
    });
}
