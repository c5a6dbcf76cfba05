//! In-memory maps for the unit tests. `FakeServiceMaps` checks, after every
//! single write, what a packet arriving at that instant would see: every
//! published frontend must point at a complete ring of existing backends,
//! with its address and filter bits in place. It refuses what the kernel
//! would: entries beyond a map's capacity, and any write from `fail_at` on,
//! to test recovery. `FakeNodeMaps` holds the node's settings, interfaces,
//! flows and affinities.
use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};
use lb_common::{
    filter::{position, AddrSet},
    sock::SockAffinityKeyV4,
    AffinityKeyV4, AffinityValue, AnnounceKeyV6, AnnounceValue, BackendV4, BackendV6, Config,
    ConfigV6, CtKeyV4, CtKeyV6, CtValueV4, CtValueV6, FrontendKeyV4, FrontendKeyV6, FrontendValue,
    IfaceInfo, LbAddrInfo,
};

use super::{NodeMaps, Room, ServiceMaps, Snapshot};

#[derive(Debug, Default, Clone)]
pub struct FakeMaps {
    pub frontends: BTreeMap<FrontendKeyV4, FrontendValue>,
    pub backends: BTreeMap<u32, BackendV4>,
    pub frontends_v6: BTreeMap<FrontendKeyV6, FrontendValue>,
    pub backends_v6: BTreeMap<u32, BackendV6>,
    /// Ring slots by index, as the kernel's array (0: never written).
    pub slots: Vec<u32>,
    pub addrs: BTreeMap<std::net::IpAddr, ()>,
    pub filter: BTreeMap<u32, u64>,
    pub services: BTreeMap<u32, String>,
    pub source_ranges: std::collections::BTreeSet<(u32, std::net::IpAddr, u8)>,
}

#[derive(Debug)]
pub struct FakeServiceMaps {
    pub maps: FakeMaps,
    pub room: Room,
    /// The index (in `log` order) of the first write to fail, if any.
    pub fail_at: Option<usize>,
    /// Every write, in order, for assertions on ordering.
    pub log: Vec<String>,
    /// Moments where a packet would have seen a half-built service.
    pub violations: Vec<String>,
    /// Whether to run the invariant check after each write (costly at scale).
    pub check: bool,
}

impl FakeServiceMaps {
    /// Maps as large as the defaults, with `ring_slots` slots.
    pub fn new(ring_slots: u32) -> Self {
        Self::with_room(Room {
            services: lb_common::MAX_SERVICES,
            backends: lb_common::MAX_BACKENDS,
            frontends: lb_common::MAX_FRONTENDS,
            addrs: lb_common::MAX_ADDRS,
            frontends_v6: lb_common::MAX_FRONTENDS_V6,
            backends_v6: lb_common::MAX_BACKENDS_V6,
            ring_slots,
            source_ranges: lb_common::MAX_SOURCE_RANGES,
        })
    }

    pub fn with_room(room: Room) -> Self {
        Self {
            maps: FakeMaps::default(),
            room,
            fail_at: None,
            log: Vec::new(),
            violations: Vec::new(),
            check: true,
        }
    }

    fn filtered(&self, addr: u32, set: AddrSet) -> bool {
        let (word, bit) = position(addr, set);
        self.maps.filter.get(&word).is_some_and(|w| w & bit != 0)
    }

    /// What the kernel answers a write that does not fit, and the
    /// injected failure.
    fn admit(&self, fits: bool, what: &str) -> Result<()> {
        if self.fail_at.is_some_and(|n| self.log.len() >= n) {
            bail!("injected failure at write {} ({what})", self.log.len());
        }
        if !fits {
            bail!("{what}: Argument list too long (os error 7)");
        }
        Ok(())
    }

    fn after(&mut self, op: String) {
        if self.check {
            for (key, fe) in &self.maps.frontends {
                if !self.filtered(key.addr, AddrSet::Frontend) {
                    self.violations
                        .push(format!("after {op}: frontend {key:?} not filtered in"));
                }
                for slot in fe.ring_offset..fe.ring_offset + fe.ring_size {
                    let ok = self
                        .maps
                        .slots
                        .get(slot as usize)
                        .and_then(|id| self.maps.backends.get(id))
                        .is_some_and(|b| b.addr != 0 && self.filtered(b.addr, AddrSet::Backend));
                    if !ok {
                        self.violations.push(format!(
                            "after {op}: frontend {key:?} slot {slot} has no live backend"
                        ));
                        break;
                    }
                }
            }
            // No address filter for IPv6: the socket hooks look frontends
            // up directly.
            for (key, fe) in &self.maps.frontends_v6 {
                for slot in fe.ring_offset..fe.ring_offset + fe.ring_size {
                    let ok = self
                        .maps
                        .slots
                        .get(slot as usize)
                        .and_then(|id| self.maps.backends_v6.get(id))
                        .is_some_and(|b| b.addr != [0; 4]);
                    if !ok {
                        self.violations.push(format!(
                            "after {op}: frontend {key:?} slot {slot} has no live IPv6 backend"
                        ));
                        break;
                    }
                }
            }
        }
        self.log.push(op);
    }
}

impl ServiceMaps for FakeServiceMaps {
    fn put_backend(&mut self, id: u32, backend: BackendV4) -> Result<()> {
        self.admit(id < self.room.backends, "BACKENDS_V4")?;
        if backend == BackendV4::default() {
            self.maps.backends.remove(&id);
        } else {
            self.maps.backends.insert(id, backend);
        }
        self.after(format!("backend {id}"));
        Ok(())
    }

    fn put_ring(&mut self, offset: u32, slots: &[u32]) -> Result<()> {
        let (start, end) = (offset as usize, offset as usize + slots.len());
        self.admit(end <= self.room.ring_slots as usize, "MAGLEV_SLOTS")?;
        if self.maps.slots.len() < end {
            self.maps.slots.resize(end, 0);
        }
        self.maps.slots[start..end].copy_from_slice(slots);
        self.after(format!("ring {offset}+{}", slots.len()));
        Ok(())
    }

    fn put_frontend(&mut self, key: FrontendKeyV4, value: FrontendValue) -> Result<()> {
        let fits = self.maps.frontends.contains_key(&key)
            || self.maps.frontends.len() < self.room.frontends as usize;
        self.admit(fits, "FRONTENDS_V4")?;
        self.maps.frontends.insert(key, value);
        self.after(format!("frontend {key:?}"));
        Ok(())
    }

    fn remove_frontend(&mut self, key: &FrontendKeyV4) -> Result<()> {
        self.admit(true, "FRONTENDS_V4")?;
        self.maps.frontends.remove(key);
        self.after(format!("remove frontend {key:?}"));
        Ok(())
    }

    fn put_backend_v6(&mut self, id: u32, backend: BackendV6) -> Result<()> {
        let fits = self.maps.backends_v6.contains_key(&id)
            || self.maps.backends_v6.len() < self.room.backends_v6 as usize;
        self.admit(fits, "BACKENDS_V6")?;
        self.maps.backends_v6.insert(id, backend);
        self.after(format!("backend v6 {id}"));
        Ok(())
    }

    fn remove_backend_v6(&mut self, id: u32) -> Result<()> {
        self.admit(true, "BACKENDS_V6")?;
        self.maps.backends_v6.remove(&id);
        self.after(format!("remove backend v6 {id}"));
        Ok(())
    }

    fn put_frontend_v6(&mut self, key: FrontendKeyV6, value: FrontendValue) -> Result<()> {
        let fits = self.maps.frontends_v6.contains_key(&key)
            || self.maps.frontends_v6.len() < self.room.frontends_v6 as usize;
        self.admit(fits, "FRONTENDS_V6")?;
        self.maps.frontends_v6.insert(key, value);
        self.after(format!("frontend v6 {key:?}"));
        Ok(())
    }

    fn remove_frontend_v6(&mut self, key: &FrontendKeyV6) -> Result<()> {
        self.admit(true, "FRONTENDS_V6")?;
        self.maps.frontends_v6.remove(key);
        self.after(format!("remove frontend v6 {key:?}"));
        Ok(())
    }

    fn put_frontend_addr(&mut self, addr: std::net::IpAddr) -> Result<()> {
        let family = self
            .maps
            .addrs
            .keys()
            .filter(|a| a.is_ipv6() == addr.is_ipv6())
            .count();
        let fits = self.maps.addrs.contains_key(&addr) || family < self.room.addrs as usize;
        self.admit(fits, family_map(addr, ["ADDRS_V4", "ADDRS_V6"]))?;
        self.maps.addrs.insert(addr, ());
        self.after(format!("addr {addr}"));
        Ok(())
    }

    fn remove_frontend_addr(&mut self, addr: std::net::IpAddr) -> Result<()> {
        self.admit(true, family_map(addr, ["ADDRS_V4", "ADDRS_V6"]))?;
        self.maps.addrs.remove(&addr);
        self.after(format!("remove addr {addr}"));
        Ok(())
    }

    fn put_filter_words(&mut self, words: &[(u32, u64)]) -> Result<()> {
        self.admit(true, "ADDR_FILTER")?;
        for &(word, bits) in words {
            if bits == 0 {
                self.maps.filter.remove(&word);
            } else {
                self.maps.filter.insert(word, bits);
            }
        }
        self.after(format!("filter {} words", words.len()));
        Ok(())
    }

    fn put_service(&mut self, svc_id: u32, name: &str) -> Result<()> {
        self.admit(svc_id < self.room.services, "SVC_NAMES")?;
        self.maps.services.insert(svc_id, name.to_string());
        self.after(format!("service {svc_id} {name}"));
        Ok(())
    }

    fn remove_service(&mut self, svc_id: u32) -> Result<()> {
        self.admit(true, "SVC_NAMES")?;
        self.maps.services.remove(&svc_id);
        self.after(format!("remove service {svc_id}"));
        Ok(())
    }

    fn put_source_range(&mut self, svc_id: u32, addr: std::net::IpAddr, len: u8) -> Result<()> {
        let in_family = |r: &&(u32, std::net::IpAddr, u8)| r.1.is_ipv6() == addr.is_ipv6();
        let used = self.maps.source_ranges.iter().filter(in_family).count();
        let fits = used < self.room.source_ranges as usize;
        self.admit(
            fits,
            family_map(addr, ["SOURCE_RANGES_V4", "SOURCE_RANGES_V6"]),
        )?;
        self.maps.source_ranges.insert((svc_id, addr, len));
        self.after(format!("source range {svc_id} {addr}/{len}"));
        Ok(())
    }

    fn remove_source_range(&mut self, svc_id: u32, addr: std::net::IpAddr, len: u8) -> Result<()> {
        self.admit(
            true,
            family_map(addr, ["SOURCE_RANGES_V4", "SOURCE_RANGES_V6"]),
        )?;
        self.maps.source_ranges.remove(&(svc_id, addr, len));
        self.after(format!("remove source range {svc_id} {addr}/{len}"));
        Ok(())
    }

    fn room(&self) -> Result<Room> {
        Ok(self.room)
    }

    fn read_back(&self) -> Result<Snapshot> {
        let frontends: Vec<_> = self.maps.frontends.iter().map(|(k, v)| (*k, *v)).collect();
        let frontends_v6: Vec<_> = self
            .maps
            .frontends_v6
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        let mut rings: Vec<(u32, Vec<u32>)> = Vec::new();
        let values = frontends.iter().map(|(_, v)| v);
        let values = values.chain(frontends_v6.iter().map(|(_, v)| v));
        for v in values {
            if v.ring_size > 0 && !rings.iter().any(|(o, _)| *o == v.ring_offset) {
                let slots = (v.ring_offset..v.ring_offset + v.ring_size)
                    .map(|s| self.maps.slots.get(s as usize).copied().unwrap_or(0))
                    .collect();
                rings.push((v.ring_offset, slots));
            }
        }
        Ok(Snapshot {
            frontends,
            backends: self.maps.backends.iter().map(|(k, v)| (*k, *v)).collect(),
            frontends_v6,
            backends_v6: self
                .maps
                .backends_v6
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect(),
            services: self
                .maps
                .services
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            filter: self.maps.filter.iter().map(|(k, v)| (*k, *v)).collect(),
            rings,
            frontend_addrs: self.maps.addrs.keys().copied().collect(),
            source_ranges: self.maps.source_ranges.iter().copied().collect(),
        })
    }
}

#[derive(Debug, Default)]
pub struct FakeNodeMaps {
    pub config: Option<Config>,
    pub config_v6: Option<ConfigV6>,
    pub ifaces: BTreeMap<u32, IfaceInfo>,
    pub ct: HashMap<CtKeyV4, CtValueV4>,
    pub ct_v6: HashMap<CtKeyV6, CtValueV6>,
    pub affinity: HashMap<AffinityKeyV4, AffinityValue>,
    pub sock_affinity: HashMap<SockAffinityKeyV4, AffinityValue>,
    pub announced: BTreeMap<(u32, u32), AnnounceValue>,
    pub lb_addrs: BTreeMap<u32, LbAddrInfo>,
    pub announced_v6: BTreeMap<AnnounceKeyV6, AnnounceValue>,
    pub lb_addrs_v6: BTreeMap<[u32; 4], LbAddrInfo>,
}

impl NodeMaps for FakeNodeMaps {
    fn put_config(&mut self, config: Config) -> Result<()> {
        self.config = Some(config);
        Ok(())
    }

    fn put_config_v6(&mut self, config: ConfigV6) -> Result<()> {
        self.config_v6 = Some(config);
        Ok(())
    }

    fn put_iface(&mut self, index: u32, info: IfaceInfo) -> Result<()> {
        self.ifaces.insert(index, info);
        Ok(())
    }

    fn remove_flows(
        &mut self,
        stale: &dyn Fn(&CtKeyV4, &CtValueV4) -> bool,
    ) -> Result<Vec<CtKeyV4>> {
        let doomed: Vec<CtKeyV4> = self
            .ct
            .iter()
            .filter(|(k, v)| stale(k, v))
            .map(|(k, _)| *k)
            .collect();
        for k in &doomed {
            self.ct.remove(k);
        }
        Ok(doomed)
    }

    fn remove_flows_v6(
        &mut self,
        stale: &dyn Fn(&CtKeyV6, &CtValueV6) -> bool,
    ) -> Result<Vec<CtKeyV6>> {
        let doomed: Vec<CtKeyV6> = self
            .ct_v6
            .iter()
            .filter(|(k, v)| stale(k, v))
            .map(|(k, _)| *k)
            .collect();
        for k in &doomed {
            self.ct_v6.remove(k);
        }
        Ok(doomed)
    }

    fn remove_affinities(&mut self, stale: &dyn Fn(&AffinityValue) -> bool) -> Result<usize> {
        let before = self.affinity.len() + self.sock_affinity.len();
        self.affinity.retain(|_, v| !stale(v));
        self.sock_affinity.retain(|_, v| !stale(v));
        Ok(before - self.affinity.len() - self.sock_affinity.len())
    }

    fn set_announced(&mut self, want: &BTreeMap<(u32, u32), AnnounceValue>) -> Result<()> {
        self.announced = want.clone();
        Ok(())
    }

    fn set_lb_addrs(&mut self, want: &BTreeMap<u32, LbAddrInfo>) -> Result<()> {
        self.lb_addrs = want.clone();
        Ok(())
    }

    fn set_announced_v6(&mut self, want: &BTreeMap<AnnounceKeyV6, AnnounceValue>) -> Result<()> {
        self.announced_v6 = want.clone();
        Ok(())
    }

    fn set_lb_addrs_v6(&mut self, want: &BTreeMap<[u32; 4], LbAddrInfo>) -> Result<()> {
        self.lb_addrs_v6 = want.clone();
        Ok(())
    }
}

/// Of the maps `[ipv4, ipv6]`, the one for `addr`'s family.
fn family_map(addr: std::net::IpAddr, [v4, v6]: [&'static str; 2]) -> &'static str {
    if addr.is_ipv6() {
        v6
    } else {
        v4
    }
}
