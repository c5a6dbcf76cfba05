//! `NodeMaps` on the kernel's maps.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap, MapData},
    Pod,
};
use lb_common::{
    names, AffinityValue, AnnounceKeyV4, AnnounceKeyV6, AnnounceValue, Config, ConfigV6, CtKeyV4,
    CtKeyV6, CtValueV4, CtValueV6, IfaceInfo, LbAddrInfo,
};

use super::Maps;
use crate::sync::NodeMaps;

impl NodeMaps for Maps {
    fn put_config(&mut self, config: Config) -> Result<()> {
        Ok(self.config.set(0, config, 0)?)
    }

    fn put_config_v6(&mut self, config: ConfigV6) -> Result<()> {
        Ok(self.config_v6.set(0, config, 0)?)
    }

    fn put_iface(&mut self, index: u32, info: IfaceInfo) -> Result<()> {
        Ok(self.ifaces.insert(index, info, 0)?)
    }

    fn remove_flows(
        &mut self,
        stale: &dyn Fn(&CtKeyV4, &CtValueV4) -> bool,
    ) -> Result<Vec<CtKeyV4>> {
        let removed = remove_flows(&mut self.ct, stale)?;
        for k in &removed {
            self.forget_cached(k)?;
        }
        Ok(removed)
    }

    fn remove_flows_v6(
        &mut self,
        stale: &dyn Fn(&CtKeyV6, &CtValueV6) -> bool,
    ) -> Result<Vec<CtKeyV6>> {
        let removed = remove_flows(&mut self.ct_v6, stale)?;
        for k in &removed {
            self.forget_cached_v6(k)?;
        }
        Ok(removed)
    }

    fn remove_affinities(&mut self, stale: &dyn Fn(&AffinityValue) -> bool) -> Result<usize> {
        Ok(remove_affinity(&mut self.affinity, stale)
            + remove_affinity(&mut self.sock_affinity, stale)
            + remove_affinity(&mut self.affinity_v6, stale)
            + remove_affinity(&mut self.sock_affinity_v6, stale))
    }

    fn set_announced(&mut self, want: &BTreeMap<(u32, u32), AnnounceValue>) -> Result<()> {
        let want: BTreeMap<AnnounceKeyV4, AnnounceValue> = want
            .iter()
            .map(|(&(addr, ifindex), v)| (AnnounceKeyV4 { addr, ifindex }, *v))
            .collect();
        set_exactly(&mut self.announce, &want, names::ANNOUNCE_V4)
    }

    fn set_lb_addrs(&mut self, want: &BTreeMap<u32, LbAddrInfo>) -> Result<()> {
        set_exactly(&mut self.lb_addrs, want, names::LB_ADDRS_V4)
    }

    fn set_announced_v6(&mut self, want: &BTreeMap<AnnounceKeyV6, AnnounceValue>) -> Result<()> {
        set_exactly(&mut self.announce_v6, want, names::ANNOUNCE_V6)
    }

    fn set_lb_addrs_v6(&mut self, want: &BTreeMap<[u32; 4], LbAddrInfo>) -> Result<()> {
        set_exactly(&mut self.lb_addrs_v6, want, names::LB_ADDRS_V6)
    }
}

/// Makes `map` (named `name`) hold exactly `want`, writing only what
/// differs.
fn set_exactly<K: Pod + Ord, V: Pod + PartialEq>(
    map: &mut HashMap<MapData, K, V>,
    want: &BTreeMap<K, V>,
    name: &str,
) -> Result<()> {
    let have = map
        .iter()
        .collect::<Result<BTreeMap<_, _>, _>>()
        .with_context(|| format!("reading {name}"))?;
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        map.remove(k)
            .with_context(|| format!("removing from {name}"))?;
    }
    for (k, v) in want {
        if have.get(k) != Some(v) {
            map.insert(k, v, 0)
                .with_context(|| format!("writing {name}"))?;
        }
    }
    Ok(())
}

/// Deletes the entries of `map` whose value `stale` picks.
/// Deletes the entries of a connection-tracking map that `stale` picks;
/// returns the keys deleted, not those the LRU evicted meanwhile.
fn remove_flows<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    stale: &dyn Fn(&K, &V) -> bool,
) -> Result<Vec<K>> {
    let mut doomed = Vec::new();
    for entry in map.iter() {
        let (k, v) = entry?;
        if stale(&k, &v) {
            doomed.push(k);
        }
    }
    Ok(doomed
        .into_iter()
        .filter(|k| map.remove(k).is_ok())
        .collect())
}

fn remove_affinity<K: Pod>(
    map: &mut HashMap<MapData, K, AffinityValue>,
    stale: &dyn Fn(&AffinityValue) -> bool,
) -> usize {
    let doomed: Vec<K> = map
        .iter()
        .filter_map(|e| e.ok())
        .filter(|(_, v)| stale(v))
        .map(|(k, _)| k)
        .collect();
    doomed.iter().filter(|k| map.remove(k).is_ok()).count()
}
