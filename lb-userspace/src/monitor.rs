//! `xdplb monitor`: the data plane's drops, rejects, new flows and other
//! events as they happen, read from the pinned `MONITOR` ring buffer. The
//! programs write events only while the command holds its lease in
//! `MONITOR_ON` (`lb_common::monitor`), which it renews every second and
//! clears on the way out; a monitor killed without clearing it leaves the
//! events on for `MONITOR_LEASE_NS` at most.
use std::path::Path;

use anyhow::Result;
use aya::maps::{Array, Map, MapData, RingBuf};
use lb_common::{
    monitor::{MonitorEvent, MONITOR_LEASE_NS},
    names,
};

use crate::datapath::pinned;

/// The switch: while the deadline in `MONITOR_ON` lies ahead, the data
/// plane writes events.
pub struct Lease(Array<MapData, u64>);

impl Lease {
    pub fn new(map: Map) -> Result<Self> {
        Ok(Self(map.try_into()?))
    }

    /// The lease pinned in `maps_dir`.
    pub fn open(maps_dir: &Path) -> Result<Self> {
        Self::new(pinned(maps_dir, names::MONITOR_ON)?)
    }

    /// The deadline held; 0 when no monitor holds one.
    pub fn until(&self) -> Result<u64> {
        Ok(self.0.get(&0, 0)?)
    }

    /// Events on for the next `MONITOR_LEASE_NS`.
    pub fn renew(&mut self) -> Result<()> {
        self.set(monotonic_ns() + MONITOR_LEASE_NS)
    }

    pub fn clear(&mut self) -> Result<()> {
        self.set(0)
    }

    /// A deadline as the programs compare it: `bpf_ktime_get_ns`.
    pub fn set(&mut self, until_ns: u64) -> Result<()> {
        Ok(self.0.set(0, until_ns, 0)?)
    }
}

/// `bpf_ktime_get_ns`'s clock.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) into a timespec on the stack.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Every event waiting in `ring`, oldest first.
pub fn drain(ring: &mut RingBuf<MapData>) -> Vec<MonitorEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() == size_of::<MonitorEvent>() {
            // SAFETY: the programs write whole `MonitorEvent`s, plain
            // integers; the ring's records are only 8-byte aligned.
            out.push(unsafe { item.as_ptr().cast::<MonitorEvent>().read_unaligned() });
        }
    }
    out
}
