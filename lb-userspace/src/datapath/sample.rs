//! One reading of the maps for `/metrics`: what the data plane counted and
//! how full each map is, each map walked once. Nothing is kept between
//! readings, so a scrape costs one pass over the maps and nothing runs
//! between scrapes.
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::{maps::IterableMap, Pod};
use lb_common::{names, Reason, PROTO_TCP, PROTO_UDP};

use super::{svc_name_str, Maps};

/// Packets and bytes of one service port, named as in `SVC_NAMES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceCounters {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// How full one map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

impl MapFill {
    pub fn ratio(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.entries as f64 / self.capacity as f64
        }
    }
}

/// One reading of the maps, made at scrape time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapSample {
    pub reasons: Vec<(Reason, u64)>,
    pub services: Vec<ServiceCounters>,
    pub fill: Vec<MapFill>,
    /// Connection-tracking entries by protocol; a flow has two (forward, reply).
    pub conntrack: BTreeMap<&'static str, u64>,
}

fn capacity<K: Pod, V>(map: &impl IterableMap<K, V>) -> Result<u64> {
    Ok(map.map().info()?.max_entries().into())
}

/// Entries of an LRU map, counted up to its capacity: keys the LRU evicts
/// and inserts meanwhile could otherwise make the walk run on.
fn lru_fill<K: Pod, V: Pod>(
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
    name: &'static str,
) -> Result<MapFill> {
    let capacity = capacity(map)?;
    let mut entries = 0;
    for key in map.keys().take(capacity as usize) {
        key.with_context(|| format!("reading {name}"))?;
        entries += 1;
    }
    Ok(MapFill {
        map: name,
        entries,
        capacity,
    })
}

fn protocol(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        _ => "other",
    }
}

impl MapSample {
    pub fn read(maps: &Maps) -> Result<Self> {
        let mut fill = Vec::new();

        let mut rings: BTreeMap<u32, u32> = BTreeMap::new();
        let mut frontends = 0;
        for entry in maps.frontends().iter() {
            let (_, fe) = entry.context("reading FRONTENDS_V4")?;
            frontends += 1;
            if fe.ring_size > 0 {
                rings.insert(fe.ring_offset, fe.ring_size);
            }
        }
        fill.push(MapFill {
            map: names::FRONTENDS_V4,
            entries: frontends,
            capacity: capacity(maps.frontends())?,
        });

        // Backend ids in use are the members of the published rings: the
        // syncer gives every ring member an entry and zeroes it when it
        // leaves its last ring. Rings are memory-mapped, while walking the
        // BACKENDS_V4 array would cost a syscall per element (a million at
        // the default size, over a second per scrape).
        let backend_capacity = maps.backends().len() as usize;
        let mut in_use = vec![0u64; backend_capacity.div_ceil(64)];
        let mut slots = 0u64;
        for (&offset, &size) in &rings {
            slots += u64::from(size);
            for id in maps.slots().read(offset, size)? {
                if let Some(word) = in_use.get_mut(id as usize / 64) {
                    *word |= 1 << (id % 64);
                }
            }
        }
        fill.push(MapFill {
            map: names::BACKENDS_V4,
            entries: in_use.iter().map(|w| u64::from(w.count_ones())).sum(),
            capacity: backend_capacity as u64,
        });
        fill.push(MapFill {
            map: names::MAGLEV_SLOTS,
            entries: slots,
            capacity: maps.slots().len().into(),
        });

        // Walking a hash map that changes underneath restarts the walk when
        // the current key goes; capping at the capacity bounds the cost and
        // the overcount.
        let ct_capacity = capacity(maps.ct())?;
        let mut conntrack = BTreeMap::new();
        let mut ct_entries = 0;
        for key in maps.ct().keys().take(ct_capacity as usize) {
            let key = key.context("reading CT_V4")?;
            *conntrack.entry(protocol(key.proto)).or_insert(0) += 1;
            ct_entries += 1;
        }
        fill.push(MapFill {
            map: names::CT_V4,
            entries: ct_entries,
            capacity: ct_capacity,
        });

        fill.push(lru_fill(maps.affinity(), names::AFFINITY_V4)?);
        fill.push(lru_fill(maps.sock_affinity(), names::SOCK_AFFINITY_V4)?);

        let mut addrs = 0;
        for key in maps.addrs().keys() {
            key.context("reading ADDRS_V4")?;
            addrs += 1;
        }
        fill.push(MapFill {
            map: names::ADDRS_V4,
            entries: addrs,
            capacity: capacity(maps.addrs())?,
        });

        let mut services = Vec::new();
        for entry in maps.svc_names().iter() {
            let (svc_id, name) = entry.context("reading SVC_NAMES")?;
            let totals = maps.service_totals(svc_id)?;
            services.push(ServiceCounters {
                name: svc_name_str(&name),
                packets: totals.packets,
                bytes: totals.bytes,
            });
        }
        fill.push(MapFill {
            map: names::SVC_NAMES,
            entries: services.len() as u64,
            capacity: capacity(maps.svc_names())?,
        });

        Ok(Self {
            reasons: maps.reason_totals()?,
            services,
            fill,
            conntrack,
        })
    }
}
