//! `ServiceMaps` on the kernel's maps.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use aya::maps::{lpm_trie::Key, IterableMap, MapData, MapError, PerCpuValues};
use lb_common::{
    addr::{from_map, from_map_v6, to_map, to_map_v6},
    AddrInfo, BackendV4, BackendV6, FrontendKeyV4, FrontendKeyV6, FrontendValue, SourceRangeKeyV4,
    SourceRangeKeyV6, SvcName, SvcNameParts, SvcStats, ADDR_FRONTEND,
};

use super::Maps;
use crate::sync::{Room, ServiceMaps, Snapshot};

fn svc_name(name: &str) -> Result<SvcName> {
    SvcNameParts::parse(name)
        .and_then(|parts| SvcName::encode(&parts))
        .with_context(|| format!("service port name {name:?} does not encode"))
}

/// The trie matches the service id's 32 bits, then the CIDR's.
fn range_key(svc_id: u32, addr: Ipv4Addr, len: u8) -> Key<SourceRangeKeyV4> {
    let data = SourceRangeKeyV4 {
        svc_id_be: svc_id.to_be(),
        addr: to_map(addr),
    };
    Key::new(32 + len as u32, data)
}

fn range_key_v6(svc_id: u32, addr: Ipv6Addr, len: u8) -> Key<SourceRangeKeyV6> {
    let data = SourceRangeKeyV6 {
        svc_id_be: svc_id.to_be(),
        addr: to_map_v6(addr),
    };
    Key::new(32 + len as u32, data)
}

/// Removing what is already gone succeeds: a sync after one that failed
/// part-way removes what the maps were read back to hold, which may be
/// less than it was told.
fn absent_ok(r: Result<(), MapError>) -> Result<()> {
    match r {
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        r => Ok(r?),
    }
}

pub fn svc_name_str(name: &SvcName) -> String {
    name.as_str().unwrap_or_default().to_string()
}

impl ServiceMaps for Maps {
    fn put_backend(&mut self, id: u32, backend: BackendV4) -> Result<()> {
        Ok(self.backends.set(id, backend, 0)?)
    }

    fn put_ring(&mut self, offset: u32, slots: &[u32]) -> Result<()> {
        self.slots.write(offset, slots)
    }

    fn put_frontend(&mut self, key: FrontendKeyV4, value: FrontendValue) -> Result<()> {
        Ok(self.frontends.insert(key, value, 0)?)
    }

    fn remove_frontend(&mut self, key: &FrontendKeyV4) -> Result<()> {
        absent_ok(self.frontends.remove(key))
    }

    fn put_backend_v6(&mut self, id: u32, backend: BackendV6) -> Result<()> {
        Ok(self.backends_v6.insert(id, backend, 0)?)
    }

    fn remove_backend_v6(&mut self, id: u32) -> Result<()> {
        absent_ok(self.backends_v6.remove(&id))
    }

    fn put_frontend_v6(&mut self, key: FrontendKeyV6, value: FrontendValue) -> Result<()> {
        Ok(self.frontends_v6.insert(key, value, 0)?)
    }

    fn remove_frontend_v6(&mut self, key: &FrontendKeyV6) -> Result<()> {
        absent_ok(self.frontends_v6.remove(key))
    }

    fn put_frontend_addr(&mut self, addr: IpAddr) -> Result<()> {
        let info = AddrInfo {
            flags: ADDR_FRONTEND,
        };
        Ok(match addr {
            IpAddr::V4(a) => self.addrs.insert(to_map(a), info, 0),
            IpAddr::V6(a) => self.addrs_v6.insert(to_map_v6(a), info, 0),
        }?)
    }

    fn remove_frontend_addr(&mut self, addr: IpAddr) -> Result<()> {
        absent_ok(match addr {
            IpAddr::V4(a) => self.addrs.remove(&to_map(a)),
            IpAddr::V6(a) => self.addrs_v6.remove(&to_map_v6(a)),
        })
    }

    fn put_filter_words(&mut self, words: &[(u32, u64)]) -> Result<()> {
        self.filter_mut()?.write(words)
    }

    fn put_service(&mut self, svc_id: u32, name: &str) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zeros = PerCpuValues::try_from(vec![SvcStats::default(); cpus])?;
        self.svc_stats.set(svc_id, zeros, 0)?;
        Ok(self.svc_names.insert(svc_id, svc_name(name)?, 0)?)
    }

    fn remove_service(&mut self, svc_id: u32) -> Result<()> {
        absent_ok(self.svc_names.remove(&svc_id))
    }

    fn put_source_range(&mut self, svc_id: u32, addr: IpAddr, len: u8) -> Result<()> {
        match addr {
            IpAddr::V4(a) => self
                .source_ranges
                .insert(&range_key(svc_id, a, len), 1, 0)?,
            IpAddr::V6(a) => self
                .source_ranges_v6
                .insert(&range_key_v6(svc_id, a, len), 1, 0)?,
        }
        Ok(())
    }

    fn remove_source_range(&mut self, svc_id: u32, addr: IpAddr, len: u8) -> Result<()> {
        absent_ok(match addr {
            IpAddr::V4(a) => self.source_ranges.remove(&range_key(svc_id, a, len)),
            IpAddr::V6(a) => self.source_ranges_v6.remove(&range_key_v6(svc_id, a, len)),
        })
    }

    fn room(&self) -> Result<Room> {
        let entries = |map: &MapData| -> Result<u32> { Ok(map.info()?.max_entries()) };
        Ok(Room {
            services: entries(self.svc_stats.map())?.min(entries(self.svc_names.map())?),
            backends: entries(self.backends.map())?,
            frontends: entries(self.frontends.map())?,
            addrs: entries(self.addrs.map())?.min(entries(self.addrs_v6.map())?),
            frontends_v6: entries(self.frontends_v6.map())?,
            backends_v6: entries(self.backends_v6.map())?,
            ring_slots: self.slots().len(),
            // An LPM trie gives no handle on its map data in aya 0.14; its
            // size is never overridden at load, so the constant is the truth.
            source_ranges: lb_common::MAX_SOURCE_RANGES,
        })
    }

    fn read_back(&self) -> Result<Snapshot> {
        let frontends: Vec<(FrontendKeyV4, FrontendValue)> =
            self.frontends.iter().collect::<Result<_, _>>()?;
        let mut backends = Vec::new();
        for (id, be) in self.backends.iter().enumerate() {
            let be = be?;
            if be != BackendV4::default() {
                backends.push((id as u32, be));
            }
        }
        let services = self
            .svc_names
            .iter()
            .map(|r| r.map(|(id, n)| (id, svc_name_str(&n))))
            .collect::<Result<_, _>>()?;
        let filter = self.filter.as_ref().map(|f| f.words()).unwrap_or_default();
        let frontends_v6: Vec<(FrontendKeyV6, FrontendValue)> =
            self.frontends_v6.iter().collect::<Result<_, _>>()?;
        let backends_v6 = self.backends_v6.iter().collect::<Result<_, _>>()?;
        let mut rings = Vec::new();
        let values = frontends.iter().map(|(_, v)| v);
        for v in values.chain(frontends_v6.iter().map(|(_, v)| v)) {
            if v.ring_size > 0 && !rings.iter().any(|(o, _)| *o == v.ring_offset) {
                rings.push((
                    v.ring_offset,
                    self.slots().read(v.ring_offset, v.ring_size)?,
                ));
            }
        }
        let mut frontend_addrs = Vec::new();
        for addr in self.addrs.keys() {
            frontend_addrs.push(IpAddr::V4(from_map(addr?)));
        }
        for addr in self.addrs_v6.keys() {
            frontend_addrs.push(IpAddr::V6(from_map_v6(addr?)));
        }
        let mut source_ranges = Vec::new();
        for key in self.source_ranges.keys() {
            let key = key?;
            let data = key.data();
            let addr = IpAddr::V4(from_map(data.addr));
            let len = (key.prefix_len() - 32) as u8;
            source_ranges.push((u32::from_be(data.svc_id_be), addr, len));
        }
        for key in self.source_ranges_v6.keys() {
            let key = key?;
            let data = key.data();
            let addr = IpAddr::V6(from_map_v6(data.addr));
            let len = (key.prefix_len() - 32) as u8;
            source_ranges.push((u32::from_be(data.svc_id_be), addr, len));
        }
        Ok(Snapshot {
            frontends,
            backends,
            frontends_v6,
            backends_v6,
            services,
            filter,
            rings,
            frontend_addrs,
            source_ranges,
        })
    }
}
