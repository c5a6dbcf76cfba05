//! Keeps the maps equal to a desired state: diff against what the maps hold,
//! then write in an order where no packet sees a half-built service:
//! backends, rings and filter bits first, then frontend addresses and
//! frontends (each switches to its new ring in one atomic map update), and
//! removals last.
mod alloc;
pub mod fake;
mod maps_writer;
pub mod stale;
pub mod writer;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use anyhow::{Context, Result};
use lb_common::{
    filter::{position, AddrSet},
    BackendV4, FrontendKeyV4, FrontendValue, BE_LOCAL, FE_DROP_EMPTY, FE_EXTERNAL,
    FE_SOURCE_RANGES, MAX_BACKENDS, MAX_SERVICES, PROTO_TCP, PROTO_UDP,
};

pub use maps_writer::{svc_name_str, MapsWriter};
pub use writer::{MapWriter, Snapshot};

use crate::{
    maglev,
    model::{DesiredState, FrontendKind, Proto},
};

/// A ring belongs to one service port and one traffic class.
type RingKey = (u32, u32);

/// What a wanted frontend points at, beside its ring.
#[derive(Clone, Copy, Debug)]
struct FrontendWant {
    ring: RingKey,
    flags: u32,
    affinity_timeout_s: u32,
    /// NodePorts live on node addresses, where the node's own ports must keep
    /// working: their address is not marked as a frontend address, so
    /// unknown ports there pass to the kernel instead of being rejected.
    node_port: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Ring {
    offset: u32,
    size: u32,
    /// Backend ids in the order the table was built from.
    members: Vec<u32>,
}

/// What one sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub writes: usize,
    pub services: usize,
    pub frontends: usize,
    pub backends: usize,
    /// Backends no Service uses any more, with the id they had: their UDP
    /// flows and affinity entries are stale (see `stale::forget`).
    pub removed: Vec<(u32, Ipv4Addr, u16)>,
}

/// The agent's view of what it wrote, with the ids it handed out.
#[derive(Debug)]
pub struct Syncer {
    svc_ids: BTreeMap<String, u32>,
    svc_alloc: alloc::Ids,
    backend_ids: HashMap<(Ipv4Addr, u16), u32>,
    backend_alloc: alloc::Ids,
    rings: HashMap<RingKey, Ring>,
    segments: alloc::Segments,
    frontends: BTreeMap<FrontendKeyV4, FrontendValue>,
    frontend_addrs: BTreeSet<u32>,
    filter: HashMap<u32, u64>,
    source_ranges: BTreeSet<(u32, Ipv4Addr, u8)>,
}

fn ne(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

fn from_ne(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
    }
}

impl Syncer {
    /// Starts from what `w` already holds (pinned maps of an earlier agent,
    /// or empty maps), so ids and rings carry over and the first sync writes
    /// only what changed.
    pub fn recover(w: &dyn MapWriter) -> Result<Self> {
        let snap = w.read_back().context("reading the maps back")?;
        let mut s = Self {
            svc_ids: BTreeMap::new(),
            svc_alloc: alloc::Ids::new(1, MAX_SERVICES),
            backend_ids: HashMap::new(),
            backend_alloc: alloc::Ids::new(1, MAX_BACKENDS),
            rings: HashMap::new(),
            segments: alloc::Segments::new(w.ring_capacity()),
            frontends: BTreeMap::new(),
            frontend_addrs: BTreeSet::new(),
            filter: snap.filter.iter().copied().collect(),
            source_ranges: snap.source_ranges.iter().copied().collect(),
        };
        for (id, name) in &snap.services {
            s.svc_alloc.claim(*id);
            s.svc_ids.insert(name.clone(), *id);
        }
        for (id, be) in &snap.backends {
            s.backend_alloc.claim(*id);
            s.backend_ids
                .insert((from_ne(be.addr), u16::from_be(be.port)), *id);
        }
        let slots: HashMap<u32, &Vec<u32>> = snap.rings.iter().map(|(o, v)| (*o, v)).collect();
        s.frontend_addrs = snap.frontend_addrs.iter().copied().collect();
        for (key, value) in &snap.frontends {
            s.frontends.insert(*key, *value);
            let ring_key = (value.svc_id, value.flags & FE_EXTERNAL);
            if s.rings.contains_key(&ring_key) {
                continue;
            }
            let mut members: Vec<u32> = slots
                .get(&value.ring_offset)
                .map(|v| {
                    v.iter()
                        .copied()
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect()
                })
                .unwrap_or_default();
            members.sort_by_key(|id| {
                snap.backends
                    .iter()
                    .find(|(i, _)| i == id)
                    .map(|(_, b)| (from_ne(b.addr), u16::from_be(b.port)))
            });
            s.segments.claim(value.ring_offset, value.ring_size)?;
            s.rings.insert(
                ring_key,
                Ring {
                    offset: value.ring_offset,
                    size: value.ring_size,
                    members,
                },
            );
        }
        Ok(s)
    }

    pub fn sync(&mut self, desired: &DesiredState, w: &mut dyn MapWriter) -> Result<SyncReport> {
        let mut writes = 0usize;

        // Service ids, and which frontends and rings are wanted.
        let mut want_svcs: BTreeMap<String, u32> = BTreeMap::new();
        let mut want_frontends: BTreeMap<FrontendKeyV4, FrontendWant> = BTreeMap::new();
        let mut want_ranges: BTreeSet<(u32, Ipv4Addr, u8)> = BTreeSet::new();
        let mut local: BTreeSet<(Ipv4Addr, u16)> = BTreeSet::new();
        let mut want_rings: BTreeMap<RingKey, Vec<(Ipv4Addr, u16)>> = BTreeMap::new();
        for (id, sp) in &desired.services {
            let name = id.to_string();
            let svc_id = match self.svc_ids.get(&name) {
                Some(&i) => i,
                None => {
                    let i = self.svc_alloc.take()?;
                    w.put_service(i, &name)?;
                    writes += 1;
                    self.svc_ids.insert(name.clone(), i);
                    i
                }
            };
            want_svcs.insert(name, svc_id);
            for &(addr, len) in &sp.load_balancer_source_ranges {
                want_ranges.insert((svc_id, addr, len));
            }
            for b in sp.cluster_backends.iter().chain(&sp.external_backends) {
                if b.is_local {
                    local.insert((b.addr, b.port));
                }
            }
            for fe in &sp.frontends {
                let external = fe.kind != FrontendKind::ClusterIp;
                let (class, backends, policy_local) = if external {
                    (FE_EXTERNAL, &sp.external_backends, sp.external_policy_local)
                } else {
                    (0, &sp.cluster_backends, sp.internal_policy_local)
                };
                want_rings
                    .entry((svc_id, class))
                    .or_insert_with(|| backends.iter().map(|b| (b.addr, b.port)).collect());
                let mut flags = class;
                if policy_local {
                    flags |= FE_DROP_EMPTY;
                }
                if external && !sp.load_balancer_source_ranges.is_empty() {
                    flags |= FE_SOURCE_RANGES;
                }
                let key = FrontendKeyV4 {
                    addr: ne(fe.addr),
                    port: fe.port.to_be(),
                    proto: proto_number(id.protocol),
                    _pad: 0,
                };
                want_frontends.insert(
                    key,
                    FrontendWant {
                        ring: (svc_id, class),
                        flags,
                        affinity_timeout_s: sp.session_affinity_timeout_s.unwrap_or(0),
                        node_port: fe.kind == FrontendKind::NodePort,
                    },
                );
            }
        }

        // Backends: every member of a wanted ring gets an id and an entry.
        let mut want_backends: BTreeSet<(Ipv4Addr, u16)> = BTreeSet::new();
        for members in want_rings.values() {
            for &(addr, port) in members {
                want_backends.insert((addr, port));
                if !self.backend_ids.contains_key(&(addr, port)) {
                    let id = self.backend_alloc.take()?;
                    let flags = if local.contains(&(addr, port)) {
                        BE_LOCAL
                    } else {
                        0
                    };
                    w.put_backend(
                        id,
                        BackendV4 {
                            addr: ne(addr),
                            port: port.to_be(),
                            flags,
                        },
                    )?;
                    writes += 1;
                    self.backend_ids.insert((addr, port), id);
                }
            }
        }

        // Rings: rebuilt into a fresh segment when the member set changed;
        // the old segment stays intact until no frontend points at it.
        let mut retired: Vec<(u32, u32)> = Vec::new();
        for (key, members) in &want_rings {
            let ids: Vec<u32> = members.iter().map(|m| self.backend_ids[m]).collect();
            if self.rings.get(key).is_some_and(|r| r.members == ids) {
                continue;
            }
            let size = if ids.is_empty() {
                0
            } else {
                maglev::ring_size(ids.len())
            };
            let offset = if size == 0 {
                0
            } else {
                self.segments.take(size)?
            };
            let names: Vec<String> = members.iter().map(|(a, p)| format!("{a}:{p}")).collect();
            let slots: Vec<u32> = maglev::table(&names, size)
                .into_iter()
                .map(|i| ids[i as usize])
                .collect();
            if size > 0 {
                w.put_ring(offset, &slots)?;
                writes += 1;
            }
            if let Some(old) = self.rings.insert(
                *key,
                Ring {
                    offset,
                    size,
                    members: ids,
                },
            ) {
                retired.push((old.offset, old.size));
            }
        }

        // Filter bits for everything that will be published, before it is.
        let mut want_filter: HashMap<u32, u64> = HashMap::new();
        let mut set_bit = |addr: u32, set: AddrSet| {
            let (word, bit) = position(addr, set);
            *want_filter.entry(word).or_default() |= bit;
        };
        for key in want_frontends.keys() {
            set_bit(key.addr, AddrSet::Frontend);
        }
        for (addr, _) in &want_backends {
            set_bit(ne(*addr), AddrSet::Backend);
        }
        for (&word, &bits) in &want_filter {
            let cur = self.filter.get(&word).copied().unwrap_or(0);
            if cur | bits != cur {
                w.put_filter_word(word, cur | bits)?;
                writes += 1;
                self.filter.insert(word, cur | bits);
            }
        }

        // Source ranges before the frontends that check them.
        for r in want_ranges.difference(&self.source_ranges.clone()) {
            w.put_source_range(r.0, r.1, r.2)?;
            writes += 1;
            self.source_ranges.insert(*r);
        }

        // Frontend addresses, then the frontends themselves.
        let want_addrs: BTreeSet<u32> = want_frontends
            .iter()
            .filter(|(_, f)| !f.node_port)
            .map(|(k, _)| k.addr)
            .collect();
        for addr in want_addrs.difference(&self.frontend_addrs.clone()) {
            w.put_frontend_addr(*addr)?;
            writes += 1;
            self.frontend_addrs.insert(*addr);
        }
        for (key, want) in &want_frontends {
            let ring = &self.rings[&want.ring];
            let value = FrontendValue {
                svc_id: want.ring.0,
                ring_offset: ring.offset,
                ring_size: ring.size,
                flags: want.flags,
                affinity_timeout_s: want.affinity_timeout_s,
                _pad: 0,
            };
            if self.frontends.get(key) != Some(&value) {
                w.put_frontend(*key, value)?;
                writes += 1;
                self.frontends.insert(*key, value);
            }
        }

        // Removals, now that nothing published refers to what goes.
        let gone: Vec<FrontendKeyV4> = self
            .frontends
            .keys()
            .filter(|k| !want_frontends.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            w.remove_frontend(&key)?;
            writes += 1;
            self.frontends.remove(&key);
        }
        let stale_addrs: Vec<u32> = self
            .frontend_addrs
            .difference(&want_addrs)
            .copied()
            .collect();
        for addr in stale_addrs {
            w.remove_frontend_addr(addr)?;
            writes += 1;
            self.frontend_addrs.remove(&addr);
        }
        let stale_ranges: Vec<_> = self
            .source_ranges
            .difference(&want_ranges)
            .copied()
            .collect();
        for r in stale_ranges {
            w.remove_source_range(r.0, r.1, r.2)?;
            writes += 1;
            self.source_ranges.remove(&r);
        }
        let stale_rings: Vec<RingKey> = self
            .rings
            .keys()
            .filter(|k| !want_rings.contains_key(k))
            .copied()
            .collect();
        for key in stale_rings {
            let r = self.rings.remove(&key).expect("listed above");
            retired.push((r.offset, r.size));
        }
        for (offset, size) in retired {
            self.segments.give(offset, size);
        }
        let stale_backends: Vec<(Ipv4Addr, u16)> = self
            .backend_ids
            .keys()
            .filter(|b| !want_backends.contains(b))
            .copied()
            .collect();
        let mut removed = Vec::new();
        for b in stale_backends {
            let id = self.backend_ids.remove(&b).expect("listed above");
            w.put_backend(id, BackendV4::default())?;
            writes += 1;
            self.backend_alloc.give(id);
            removed.push((id, b.0, b.1));
        }
        let stale_svcs: Vec<(String, u32)> = self
            .svc_ids
            .iter()
            .filter(|(n, _)| !want_svcs.contains_key(*n))
            .map(|(n, i)| (n.clone(), *i))
            .collect();
        for (name, id) in stale_svcs {
            w.remove_service(id)?;
            writes += 1;
            self.svc_ids.remove(&name);
            self.svc_alloc.give(id);
        }
        let stale_words: Vec<u32> = self
            .filter
            .iter()
            .filter(|(w, bits)| want_filter.get(w).copied().unwrap_or(0) != **bits)
            .map(|(w, _)| *w)
            .collect();
        for word in stale_words {
            let bits = want_filter.get(&word).copied().unwrap_or(0);
            w.put_filter_word(word, bits)?;
            writes += 1;
            if bits == 0 {
                self.filter.remove(&word);
            } else {
                self.filter.insert(word, bits);
            }
        }

        Ok(SyncReport {
            writes,
            services: want_svcs.len(),
            frontends: self.frontends.len(),
            backends: self.backend_ids.len(),
            removed,
        })
    }
}

#[cfg(test)]
mod tests;
