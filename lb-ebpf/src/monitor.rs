//! Events for `xdplb monitor` (`lb_common::monitor`), written where a drop,
//! a reject, a new flow or another event worth seeing is decided. The
//! established and reply paths have no event and never come here.
//!
//! Each event first reads the lease in `MONITOR_ON`: while no monitor runs
//! it is 0, and an event site costs one array load and a branch; the event
//! is built, the clock read and the ring reserved only under a live lease.
//!
//! Unsafe in this module: the clock helper, reads through `MONITOR_ON`,
//! `FRONTENDS_V4` and `CT_V4` pointers, valid until the program returns, and
//! header reads through pointers `parse::ptr_at` checked.
use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use lb_common::{
    monitor::MonitorEvent, BackendV4, CtKeyV4, CtValueV4, FrontendKeyV4, Reason, CT_DIR_FORWARD,
};

use crate::{
    frame::Frame,
    maps::{FRONTENDS_V4, MONITOR, MONITOR_ON},
    parse::Ipv4Hdr,
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
/// the event as lost: the reader is behind, and the packet goes on.
#[inline(always)]
fn emit(build: impl FnOnce() -> MonitorEvent) {
    let Some(now) = leased() else {
        return;
    };
    match MONITOR.reserve(0) {
        Some(mut slot) => {
            slot.write(MonitorEvent {
                ktime_ns: now,
                ..build()
            });
            slot.submit(0);
        }
        None => stats::count(Reason::MonitorEventsLost),
    }
}

/// The event of packet `key` (as it arrived) counted under `reason`.
#[inline(always)]
fn of_key(reason: Reason, ifindex: u32, key: &CtKeyV4) -> MonitorEvent {
    MonitorEvent {
        reason: reason as u32,
        ifindex,
        saddr: key.src_addr,
        daddr: key.dst_addr,
        sport: key.src_port,
        dport: key.dst_port,
        proto: key.proto,
        dir: key.dir,
        ..MonitorEvent::default()
    }
}

/// A packet of a flow with the entry `ct`: a new flow and its backend (and
/// source NAT), or an answer sent about a translated packet.
#[inline(always)]
pub fn flow<C: Frame>(ctx: &C, reason: Reason, key: &CtKeyV4, ct: *const CtValueV4) {
    emit(|| {
        let v = unsafe { &*ct };
        let mut e = of_key(reason, ctx.ifindex(), key);
        e.svc_id = v.svc_id;
        (e.to_addr, e.to_port) = (v.nat_addr, v.nat_port);
        // On a reverse entry these name the client, not a source the
        // packet gets.
        if key.dir == CT_DIR_FORWARD {
            (e.snat_addr, e.snat_port) = (v.snat_addr, v.snat_port);
        }
        e
    });
}

/// A packet to a frontend refused before it had a flow: dropped, or
/// answered with a reject.
#[inline(always)]
pub fn refused<C: Frame>(ctx: &C, reason: Reason, key: &CtKeyV4) {
    emit(|| MonitorEvent {
        svc_id: svc_of(&key.frontend()),
        ..of_key(reason, ctx.ifindex(), key)
    });
}

/// A source-NAT port taken for a new flow to `be`.
#[inline(always)]
pub fn snat<C: Frame>(ctx: &C, key: &CtKeyV4, be: &BackendV4, svc_id: u32, snat: (u32, u16)) {
    emit(|| MonitorEvent {
        svc_id,
        to_addr: be.addr,
        to_port: be.port,
        snat_addr: snat.0,
        snat_port: snat.1,
        ..of_key(Reason::SnatNewFlow, ctx.ifindex(), key)
    });
}

/// A packet dropped before its ports were read.
#[inline(always)]
pub fn malformed<C: Frame>(ctx: &C, ip: *const Ipv4Hdr) {
    emit(|| unsafe {
        MonitorEvent {
            reason: Reason::DropMalformed as u32,
            ifindex: ctx.ifindex(),
            saddr: (*ip).src,
            daddr: (*ip).dst,
            proto: (*ip).proto,
            ..MonitorEvent::default()
        }
    });
}

/// An ICMP error about a flow of `svc_id`, from `src` to `dst`, sent on to
/// `to` (0: the destination stays).
#[inline(always)]
pub fn icmp_error<C: Frame>(ctx: &C, (src, dst): (u32, u32), to: u32, svc_id: u32) {
    emit(|| MonitorEvent {
        reason: Reason::XlateIcmpError as u32,
        svc_id,
        ifindex: ctx.ifindex(),
        saddr: src,
        daddr: dst,
        to_addr: to,
        proto: crate::icmp::IPPROTO_ICMP,
        ..MonitorEvent::default()
    });
}

/// A socket hook's decision on a socket addressing `fe`: translated to a
/// backend of Service port `svc_id`, or refused (`None`). The socket's
/// source is not known yet.
#[inline(always)]
pub fn socket(fe: &FrontendKeyV4, to: Option<(u32, &BackendV4)>) {
    emit(|| {
        let mut e = MonitorEvent {
            reason: Reason::SockRefused as u32,
            daddr: fe.addr,
            dport: fe.port,
            proto: fe.proto,
            ..MonitorEvent::default()
        };
        match to {
            Some((svc_id, be)) => {
                e.reason = Reason::SockTranslated as u32;
                e.svc_id = svc_id;
                (e.to_addr, e.to_port) = (be.addr, be.port);
            }
            None => e.svc_id = svc_of(fe),
        }
        e
    });
}

/// The Service port of frontend `fe`, 0 if none; read for the event only,
/// where the decision did not keep it.
#[inline(always)]
fn svc_of(fe: &FrontendKeyV4) -> u32 {
    FRONTENDS_V4
        .get_ptr(*fe)
        .map_or(0, |v| unsafe { (*v).svc_id })
}
