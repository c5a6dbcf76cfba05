use std::path::Path;

use anyhow::{Context, Result};
use aya::{
    maps::{lpm_trie::LpmTrie, Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use lb_common::{
    flow_cache_slot, names, sock::SockAffinityKeyV4, AddrInfo, AffinityKeyV4, AffinityValue,
    AnnounceKeyV4, AnnounceValue, BackendV4, Config, CtKeyV4, CtValueV4, FlowCacheEntryV4,
    FrontendKeyV4, FrontendValue, IfaceInfo, LbAddrInfo, Reason, SourceRangeKeyV4, SvcName,
    SvcStats,
};

use super::{filter::AddrFilter, slots::RingSlots};

/// Typed handles on every map of the data plane.
pub struct Maps {
    pub addrs: HashMap<MapData, u32, AddrInfo>,
    pub frontends: HashMap<MapData, FrontendKeyV4, FrontendValue>,
    pub backends: Array<MapData, BackendV4>,
    pub maglev: Array<MapData, u32>,
    pub ct: HashMap<MapData, CtKeyV4, CtValueV4>,
    pub stats: PerCpuArray<MapData, u64>,
    pub svc_stats: PerCpuArray<MapData, SvcStats>,
    pub config: Array<MapData, Config>,
    pub ifaces: HashMap<MapData, u32, IfaceInfo>,
    pub svc_names: HashMap<MapData, u32, SvcName>,
    pub slots: RingSlots,
    pub affinity: HashMap<MapData, AffinityKeyV4, AffinityValue>,
    pub sock_affinity: HashMap<MapData, SockAffinityKeyV4, AffinityValue>,
    pub source_ranges: LpmTrie<MapData, SourceRangeKeyV4, u32>,
    /// LoadBalancer addresses this node answers ARP for, per interface.
    pub announce: HashMap<MapData, AnnounceKeyV4, AnnounceValue>,
    /// Every pool address with its pool and announcing node.
    pub lb_addrs: HashMap<MapData, u32, LbAddrInfo>,
    /// The loaded program's flow cache; `None` when opened from pins, as
    /// the cache is never pinned.
    pub flow_cache: Option<PerCpuArray<MapData, FlowCacheEntryV4>>,
    /// The loaded program's address filter; `None` when opened from pins,
    /// as it is the program's own global.
    pub filter: Option<AddrFilter>,
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the object"))
}

/// The map pinned as `name` in `dir`.
pub fn pinned(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is an agent running with this --pin-path?)",
            path.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut maps = Self::build(|name| take(ebpf, name), None)?;
        maps.flow_cache = Some(take(ebpf, names::FLOW_CACHE_V4)?.try_into()?);
        maps.filter = Some(AddrFilter::new(take(ebpf, names::ADDR_FILTER)?)?);
        Ok(maps)
    }

    /// Opens the maps an agent pinned under `dir`, whether or not it still runs.
    pub fn from_pins(dir: &Path) -> Result<Self> {
        Self::build(|name| pinned(dir, name), None)
    }

    /// `from_pins` for a process that already maps `MAGLEV_SLOTS`: its
    /// rings are read through `slots`, not a second mapping.
    pub fn from_pins_sharing(dir: &Path, slots: RingSlots) -> Result<Self> {
        Self::build(|name| pinned(dir, name), Some(slots))
    }

    fn build(mut get: impl FnMut(&str) -> Result<Map>, slots: Option<RingSlots>) -> Result<Self> {
        let maglev = get(names::MAGLEV_SLOTS)?;
        let slots = match slots {
            Some(slots) => slots,
            None => RingSlots::map(&maglev)?,
        };
        Ok(Self {
            addrs: get(names::ADDRS_V4)?.try_into()?,
            frontends: get(names::FRONTENDS_V4)?.try_into()?,
            backends: get(names::BACKENDS_V4)?.try_into()?,
            maglev: maglev.try_into()?,
            ct: get(names::CT_V4)?.try_into()?,
            stats: get(names::STATS)?.try_into()?,
            svc_stats: get(names::SVC_STATS)?.try_into()?,
            config: get(names::CONFIG)?.try_into()?,
            ifaces: get(names::IFACES)?.try_into()?,
            svc_names: get(names::SVC_NAMES)?.try_into()?,
            slots,
            affinity: get(names::AFFINITY_V4)?.try_into()?,
            sock_affinity: get(names::SOCK_AFFINITY_V4)?.try_into()?,
            source_ranges: get(names::SOURCE_RANGES_V4)?.try_into()?,
            announce: get(names::ANNOUNCE_V4)?.try_into()?,
            lb_addrs: get(names::LB_ADDRS_V4)?.try_into()?,
            flow_cache: None,
            filter: None,
        })
    }

    /// Path counter totals over all CPUs.
    pub fn reason_totals(&self) -> Result<Vec<(Reason, u64)>> {
        Reason::ALL
            .iter()
            .map(|&r| {
                let per_cpu = self.stats.get(&(r as u32), 0)?;
                Ok((r, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// The loaded program's address filter.
    pub fn filter_mut(&mut self) -> Result<&mut AddrFilter> {
        self.filter
            .as_mut()
            .context("the address filter belongs to a loaded program; pinned maps have none")
    }

    /// After deleting `key` from `CT_V4`: empties the flow cache slot that
    /// may hold a copy of it, on every CPU, so no packet uses the copy.
    pub fn forget_cached(&mut self, key: &CtKeyV4) -> Result<()> {
        let Some(cache) = self.flow_cache.as_mut() else {
            return Ok(());
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let empty = PerCpuValues::try_from(vec![FlowCacheEntryV4::default(); cpus])?;
        cache.set(flow_cache_slot(key), empty, 0)?;
        Ok(())
    }

    pub fn reason_total(&self, reason: Reason) -> Result<u64> {
        Ok(self.stats.get(&(reason as u32), 0)?.iter().sum())
    }

    pub fn service_totals(&self, svc_id: u32) -> Result<SvcStats> {
        let per_cpu = self.svc_stats.get(&svc_id, 0)?;
        Ok(per_cpu.iter().fold(SvcStats::default(), |a, s| SvcStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
        }))
    }
}
