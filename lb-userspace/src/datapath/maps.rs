use std::{ops::Deref, path::Path};

use anyhow::{Context, Result};
use aya::{
    maps::{lpm_trie::LpmTrie, Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use lb_common::{
    flow_cache_slot, flow_cache_slot_v6, names,
    sock::{SockAffinityKeyV4, SockAffinityKeyV6},
    AddrInfo, AffinityKeyV4, AffinityKeyV6, AffinityValue, AnnounceKeyV4, AnnounceKeyV6,
    AnnounceValue, BackendV4, BackendV6, Config, ConfigV6, CtKeyV4, CtKeyV6, CtValueV4, CtValueV6,
    FlowCacheEntryV4, FlowCacheEntryV6, FrontendKeyV4, FrontendKeyV6, FrontendValue, IfaceInfo,
    LbAddrInfo, Reason, SourceRangeKeyV4, SourceRangeKeyV6, SvcName, SvcStats,
};

use super::{
    filter::AddrFilter,
    slots::{RingSlots, SlotsView},
};

mod node;
mod service;

pub use service::svc_name_str;

/// Typed handles on every map of the data plane. The agent writes only
/// through `ServiceMaps` (the Services) and `NodeMaps` (settings,
/// interfaces, stale flows), implemented in the submodules; inspection and
/// metrics read through the accessors, which hand out shared references,
/// so they cannot write.
pub struct Maps {
    addrs: HashMap<MapData, u32, AddrInfo>,
    addrs_v6: HashMap<MapData, [u32; 4], AddrInfo>,
    frontends: HashMap<MapData, FrontendKeyV4, FrontendValue>,
    backends: Array<MapData, BackendV4>,
    frontends_v6: HashMap<MapData, FrontendKeyV6, FrontendValue>,
    backends_v6: HashMap<MapData, u32, BackendV6>,
    maglev: Array<MapData, u32>,
    ct: HashMap<MapData, CtKeyV4, CtValueV4>,
    ct_v6: HashMap<MapData, CtKeyV6, CtValueV6>,
    stats: PerCpuArray<MapData, u64>,
    svc_stats: PerCpuArray<MapData, SvcStats>,
    config: Array<MapData, Config>,
    config_v6: Array<MapData, ConfigV6>,
    ifaces: HashMap<MapData, u32, IfaceInfo>,
    svc_names: HashMap<MapData, u32, SvcName>,
    slots: RingSlots,
    affinity: HashMap<MapData, AffinityKeyV4, AffinityValue>,
    sock_affinity: HashMap<MapData, SockAffinityKeyV4, AffinityValue>,
    affinity_v6: HashMap<MapData, AffinityKeyV6, AffinityValue>,
    sock_affinity_v6: HashMap<MapData, SockAffinityKeyV6, AffinityValue>,
    source_ranges: LpmTrie<MapData, SourceRangeKeyV4, u32>,
    source_ranges_v6: LpmTrie<MapData, SourceRangeKeyV6, u32>,
    /// LoadBalancer addresses this node answers ARP for, per interface.
    announce: HashMap<MapData, AnnounceKeyV4, AnnounceValue>,
    /// Every pool address with its pool and announcing node.
    lb_addrs: HashMap<MapData, u32, LbAddrInfo>,
    /// `announce` and `lb_addrs` for IPv6 (NDP).
    announce_v6: HashMap<MapData, AnnounceKeyV6, AnnounceValue>,
    lb_addrs_v6: HashMap<MapData, [u32; 4], LbAddrInfo>,
    /// The loaded program's flow cache; `None` when opened from pins, as
    /// the cache is never pinned.
    flow_cache: Option<PerCpuArray<MapData, FlowCacheEntryV4>>,
    flow_cache_v6: Option<PerCpuArray<MapData, FlowCacheEntryV6>>,
    /// The loaded program's address filter; `None` when opened from pins,
    /// as it is the program's own global.
    filter: Option<AddrFilter>,
}

/// Maps that can only be read: it hands out `&Maps`, never the `&mut Maps`
/// every writer takes, so a reader beside the agent (the metrics server)
/// cannot write what the syncer owns.
pub struct MapsReader(Maps);

impl Deref for MapsReader {
    type Target = Maps;

    fn deref(&self) -> &Maps {
        &self.0
    }
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
        maps.flow_cache_v6 = Some(take(ebpf, names::FLOW_CACHE_V6)?.try_into()?);
        maps.filter = Some(AddrFilter::new(take(ebpf, names::ADDR_FILTER)?)?);
        Ok(maps)
    }

    /// Opens the maps an agent pinned under `dir`, whether or not it still runs.
    pub fn from_pins(dir: &Path) -> Result<Self> {
        Self::build(|name| pinned(dir, name), None)
    }

    /// `from_pins`, read-only, for a process that already maps
    /// `MAGLEV_SLOTS`: its rings are read through `slots`, not a second
    /// mapping.
    pub fn reader_sharing(dir: &Path, slots: SlotsView) -> Result<MapsReader> {
        let maps = Self::build(|name| pinned(dir, name), Some(RingSlots::over(slots)))?;
        Ok(MapsReader(maps))
    }

    fn build(mut get: impl FnMut(&str) -> Result<Map>, slots: Option<RingSlots>) -> Result<Self> {
        let maglev = get(names::MAGLEV_SLOTS)?;
        let slots = match slots {
            Some(slots) => slots,
            None => RingSlots::map(&maglev)?,
        };
        Ok(Self {
            addrs: get(names::ADDRS_V4)?.try_into()?,
            addrs_v6: get(names::ADDRS_V6)?.try_into()?,
            frontends: get(names::FRONTENDS_V4)?.try_into()?,
            backends: get(names::BACKENDS_V4)?.try_into()?,
            frontends_v6: get(names::FRONTENDS_V6)?.try_into()?,
            backends_v6: get(names::BACKENDS_V6)?.try_into()?,
            maglev: maglev.try_into()?,
            ct: get(names::CT_V4)?.try_into()?,
            ct_v6: get(names::CT_V6)?.try_into()?,
            stats: get(names::STATS)?.try_into()?,
            svc_stats: get(names::SVC_STATS)?.try_into()?,
            config: get(names::CONFIG)?.try_into()?,
            config_v6: get(names::CONFIG_V6)?.try_into()?,
            ifaces: get(names::IFACES)?.try_into()?,
            svc_names: get(names::SVC_NAMES)?.try_into()?,
            slots,
            affinity: get(names::AFFINITY_V4)?.try_into()?,
            sock_affinity: get(names::SOCK_AFFINITY_V4)?.try_into()?,
            affinity_v6: get(names::AFFINITY_V6)?.try_into()?,
            sock_affinity_v6: get(names::SOCK_AFFINITY_V6)?.try_into()?,
            source_ranges: get(names::SOURCE_RANGES_V4)?.try_into()?,
            source_ranges_v6: get(names::SOURCE_RANGES_V6)?.try_into()?,
            announce: get(names::ANNOUNCE_V4)?.try_into()?,
            lb_addrs: get(names::LB_ADDRS_V4)?.try_into()?,
            announce_v6: get(names::ANNOUNCE_V6)?.try_into()?,
            lb_addrs_v6: get(names::LB_ADDRS_V6)?.try_into()?,
            flow_cache: None,
            flow_cache_v6: None,
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

    /// After deleting `key` from `CT_V4`: empties the flow cache slot that
    /// may hold a copy of it, on every CPU, so no packet uses the copy.
    fn forget_cached(&mut self, key: &CtKeyV4) -> Result<()> {
        forget(self.flow_cache.as_mut(), flow_cache_slot(key))
    }

    /// `forget_cached` of a key deleted from `CT_V6`.
    fn forget_cached_v6(&mut self, key: &CtKeyV6) -> Result<()> {
        forget(self.flow_cache_v6.as_mut(), flow_cache_slot_v6(key))
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

    pub fn addrs(&self) -> &HashMap<MapData, u32, AddrInfo> {
        &self.addrs
    }

    pub fn addrs_v6(&self) -> &HashMap<MapData, [u32; 4], AddrInfo> {
        &self.addrs_v6
    }

    pub fn frontends(&self) -> &HashMap<MapData, FrontendKeyV4, FrontendValue> {
        &self.frontends
    }

    pub fn backends(&self) -> &Array<MapData, BackendV4> {
        &self.backends
    }

    /// `MAGLEV_SLOTS` entry by entry; `slots` reads whole rings.
    pub fn maglev(&self) -> &Array<MapData, u32> {
        &self.maglev
    }

    pub fn ct(&self) -> &HashMap<MapData, CtKeyV4, CtValueV4> {
        &self.ct
    }

    pub fn ct_v6(&self) -> &HashMap<MapData, CtKeyV6, CtValueV6> {
        &self.ct_v6
    }

    pub fn affinity_v6(&self) -> &HashMap<MapData, AffinityKeyV6, AffinityValue> {
        &self.affinity_v6
    }

    pub fn sock_affinity_v6(&self) -> &HashMap<MapData, SockAffinityKeyV6, AffinityValue> {
        &self.sock_affinity_v6
    }

    pub fn config(&self) -> &Array<MapData, Config> {
        &self.config
    }

    pub fn svc_names(&self) -> &HashMap<MapData, u32, SvcName> {
        &self.svc_names
    }

    pub fn slots(&self) -> &SlotsView {
        self.slots.view()
    }

    pub fn affinity(&self) -> &HashMap<MapData, AffinityKeyV4, AffinityValue> {
        &self.affinity
    }

    pub fn sock_affinity(&self) -> &HashMap<MapData, SockAffinityKeyV4, AffinityValue> {
        &self.sock_affinity
    }

    pub fn source_ranges(&self) -> &LpmTrie<MapData, SourceRangeKeyV4, u32> {
        &self.source_ranges
    }

    pub fn source_ranges_v6(&self) -> &LpmTrie<MapData, SourceRangeKeyV6, u32> {
        &self.source_ranges_v6
    }

    pub fn flow_cache(&self) -> Option<&PerCpuArray<MapData, FlowCacheEntryV4>> {
        self.flow_cache.as_ref()
    }

    pub fn frontends_v6(&self) -> &HashMap<MapData, FrontendKeyV6, FrontendValue> {
        &self.frontends_v6
    }

    pub fn backends_v6(&self) -> &HashMap<MapData, u32, BackendV6> {
        &self.backends_v6
    }

    pub fn announce(&self) -> &HashMap<MapData, AnnounceKeyV4, AnnounceValue> {
        &self.announce
    }

    pub fn lb_addrs(&self) -> &HashMap<MapData, u32, LbAddrInfo> {
        &self.lb_addrs
    }

    pub fn announce_v6(&self) -> &HashMap<MapData, AnnounceKeyV6, AnnounceValue> {
        &self.announce_v6
    }

    pub fn lb_addrs_v6(&self) -> &HashMap<MapData, [u32; 4], LbAddrInfo> {
        &self.lb_addrs_v6
    }
}

/// Direct writes, for tests and benchmarks that lay out by hand a state the
/// agent would not write (services without the syncer, expired entries,
/// aged cache copies). The agent writes through `ServiceMaps` and
/// `NodeMaps` only.
impl Maps {
    /// The loaded program's address filter.
    pub fn filter_mut(&mut self) -> Result<&mut AddrFilter> {
        self.filter
            .as_mut()
            .context("the address filter belongs to a loaded program; pinned maps have none")
    }

    pub fn addrs_mut(&mut self) -> &mut HashMap<MapData, u32, AddrInfo> {
        &mut self.addrs
    }

    pub fn frontends_mut(&mut self) -> &mut HashMap<MapData, FrontendKeyV4, FrontendValue> {
        &mut self.frontends
    }

    pub fn backends_mut(&mut self) -> &mut Array<MapData, BackendV4> {
        &mut self.backends
    }

    pub fn maglev_mut(&mut self) -> &mut Array<MapData, u32> {
        &mut self.maglev
    }

    pub fn ct_mut(&mut self) -> &mut HashMap<MapData, CtKeyV4, CtValueV4> {
        &mut self.ct
    }

    pub fn ifaces_mut(&mut self) -> &mut HashMap<MapData, u32, IfaceInfo> {
        &mut self.ifaces
    }

    pub fn affinity_mut(&mut self) -> &mut HashMap<MapData, AffinityKeyV4, AffinityValue> {
        &mut self.affinity
    }

    pub fn source_ranges_mut(&mut self) -> &mut LpmTrie<MapData, SourceRangeKeyV4, u32> {
        &mut self.source_ranges
    }

    pub fn flow_cache_mut(&mut self) -> Option<&mut PerCpuArray<MapData, FlowCacheEntryV4>> {
        self.flow_cache.as_mut()
    }

    pub fn flow_cache_v6(&self) -> Option<&PerCpuArray<MapData, FlowCacheEntryV6>> {
        self.flow_cache_v6.as_ref()
    }

    pub fn announce_mut(&mut self) -> &mut HashMap<MapData, AnnounceKeyV4, AnnounceValue> {
        &mut self.announce
    }

    pub fn announce_v6_mut(&mut self) -> &mut HashMap<MapData, AnnounceKeyV6, AnnounceValue> {
        &mut self.announce_v6
    }
}

/// Empties `slot` of a flow cache, if the program has one, on every CPU.
fn forget<E: aya::Pod + Default>(
    cache: Option<&mut PerCpuArray<MapData, E>>,
    slot: u32,
) -> Result<()> {
    let Some(cache) = cache else {
        return Ok(());
    };
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let empty = PerCpuValues::try_from(vec![E::default(); cpus])?;
    cache.set(slot, empty, 0)?;
    Ok(())
}
