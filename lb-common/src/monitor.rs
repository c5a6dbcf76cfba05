//! `xdplb monitor`: events the data plane writes to the `MONITOR` ring
//! buffer while a monitor holds the `MONITOR_ON` lease, and nothing at all
//! otherwise (the programs read the lease only where an event would be
//! written: drops, rejects, new flows, ICMP and socket decisions).

/// Bytes of the `MONITOR` ring buffer (a power of two of pages): about
/// 4,000 events, enough for a reader that wakes every few milliseconds.
pub const MONITOR_RING_BYTES: u32 = 256 * 1024;

/// How long a lease the command writes into `MONITOR_ON` lasts; it renews
/// it every `MONITOR_RENEW_NS`, so a monitor killed without clearing it
/// leaves the events on for this long at most.
pub const MONITOR_LEASE_NS: u64 = 3_000_000_000;
pub const MONITOR_RENEW_NS: u64 = 1_000_000_000;

/// One event, of IPv4 (`MonitorEvent`) or IPv6 (`MonitorEventV6`): one
/// layout over the address as the maps hold it (`addr`), so both families'
/// events are built by the same code. Addresses and ports in network byte
/// order, as in the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorEventOf<A> {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when it was written.
    pub ktime_ns: u64,
    /// The `Reason` it was counted under.
    pub reason: u32,
    /// The Service port (`SVC_NAMES`); 0 when none is known.
    pub svc_id: u32,
    /// Where the packet entered; 0 for the socket hooks.
    pub ifindex: u32,
    /// The tuple as it arrived: for the socket hooks, the frontend the
    /// socket addressed (source 0); for ICMP errors, the outer addresses.
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    /// What the translation put in place of the destination (a forward
    /// packet's backend) or of the source (`CT_DIR_REPLY`: the frontend a
    /// reply comes from); 0 when nothing was translated.
    pub to_addr: A,
    pub to_port: u16,
    pub proto: u8,
    /// `CT_DIR_FORWARD` or `CT_DIR_REPLY`.
    pub dir: u8,
    /// The source a source-NATed flow's packets leave with; 0 without SNAT.
    pub snat_addr: A,
    pub snat_port: u16,
    pub _pad: u16,
}

pub type MonitorEvent = MonitorEventOf<u32>;
pub type MonitorEventV6 = MonitorEventOf<[u32; 4]>;

// Both share the `MONITOR` ring, whose reader tells them apart by these
// sizes: they must differ.
const _: () = assert!(core::mem::size_of::<MonitorEvent>() == 48);
const _: () = assert!(core::mem::size_of::<MonitorEventV6>() == 96);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding, plain integers.
unsafe impl aya::Pod for MonitorEvent {}
#[cfg(feature = "user")]
// SAFETY: as `MonitorEvent`; four-word addresses leave no gap either.
unsafe impl aya::Pod for MonitorEventV6 {}
