//! The map operations a sync performs, behind a trait so the ordering and
//! idempotence are tested against an in-memory fake, and benchmarked both
//! ways.
use anyhow::Result;
use lb_common::{BackendV4, BackendV6, FrontendKeyV4, FrontendKeyV6, FrontendValue};

pub trait ServiceMaps {
    fn put_backend(&mut self, id: u32, backend: BackendV4) -> Result<()>;
    /// Writes a whole ring segment starting at `offset`.
    fn put_ring(&mut self, offset: u32, slots: &[u32]) -> Result<()>;
    fn put_frontend(&mut self, key: FrontendKeyV4, value: FrontendValue) -> Result<()>;
    fn remove_frontend(&mut self, key: &FrontendKeyV4) -> Result<()>;
    /// An IPv6 backend under an id of the one id space.
    fn put_backend_v6(&mut self, id: u32, backend: BackendV6) -> Result<()>;
    fn remove_backend_v6(&mut self, id: u32) -> Result<()>;
    fn put_frontend_v6(&mut self, key: FrontendKeyV6, value: FrontendValue) -> Result<()>;
    fn remove_frontend_v6(&mut self, key: &FrontendKeyV6) -> Result<()>;
    fn put_frontend_addr(&mut self, addr: std::net::IpAddr) -> Result<()>;
    fn remove_frontend_addr(&mut self, addr: std::net::IpAddr) -> Result<()>;
    /// Sets each (word, bits) of the address filter, in one step.
    fn put_filter_words(&mut self, words: &[(u32, u64)]) -> Result<()>;
    /// Names a new service id and zeroes its counters (ids are reused).
    fn put_service(&mut self, svc_id: u32, name: &str) -> Result<()>;
    /// A loadBalancerSourceRanges CIDR of either family, into
    /// `SOURCE_RANGES_V4` or `SOURCE_RANGES_V6`.
    fn put_source_range(&mut self, svc_id: u32, addr: std::net::IpAddr, len: u8) -> Result<()>;
    fn remove_source_range(&mut self, svc_id: u32, addr: std::net::IpAddr, len: u8) -> Result<()>;
    fn remove_service(&mut self, svc_id: u32) -> Result<()>;
    /// How many entries each map the syncer writes holds.
    fn room(&self) -> Result<Room>;
    /// What the maps hold now, for an agent that starts over pinned maps.
    fn read_back(&self) -> Result<Snapshot>;
}

/// The agent-owned contents of the maps (connection tracking and counters
/// are the packet path's own and are not read back).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub frontends: Vec<(FrontendKeyV4, FrontendValue)>,
    pub backends: Vec<(u32, BackendV4)>,
    pub frontends_v6: Vec<(FrontendKeyV6, FrontendValue)>,
    pub backends_v6: Vec<(u32, BackendV6)>,
    pub services: Vec<(u32, String)>,
    /// Non-zero filter words.
    pub filter: Vec<(u32, u64)>,
    /// Slots of every ring a frontend of either family points at, by ring
    /// offset.
    pub rings: Vec<(u32, Vec<u32>)>,
    /// Addresses marked as frontend addresses (rejecting unknown ports).
    pub frontend_addrs: Vec<std::net::IpAddr>,
    /// loadBalancerSourceRanges: (service id, network, prefix length).
    pub source_ranges: Vec<(u32, std::net::IpAddr, u8)>,
}

/// Capacities of the maps a sync fills: a Service port that would overflow
/// one is refused before anything of it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    /// Service ids index `SVC_STATS` and key `SVC_NAMES`.
    pub services: u32,
    /// Backend ids index `BACKENDS_V4`.
    pub backends: u32,
    pub frontends: u32,
    /// Frontend addresses of each family (`ADDRS_V4`, `ADDRS_V6`).
    pub addrs: u32,
    pub frontends_v6: u32,
    /// IPv6 backends at once (their ids come from `backends`' range).
    pub backends_v6: u32,
    pub ring_slots: u32,
    /// Entries of each family's source-range trie.
    pub source_ranges: u32,
}
