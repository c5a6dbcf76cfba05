//! Keeps the maps equal to a desired state. Each Service port's contribution
//! is remembered, so a sync touches only the Services whose desired state
//! changed, and shared entries (backends, frontend addresses, filter bits)
//! are reference-counted across Services.
//!
//! Writes are ordered so that no packet sees a half-built service: every
//! addition of every changed Service first (service names, backends, rings,
//! filter bits, source ranges, frontend addresses), then the frontends, each
//! switching to its new ring in one atomic map update, and removals last.
//! IPv6 frontends follow the same order with maps of their own
//! (`FRONTENDS_V6`, `BACKENDS_V6`): their backend ids come from the one id
//! space, their rings from the one slots array, under the Service port's
//! one service id (its counters count both families).
//!
//! What does not fit is refused per Service port before anything of it is
//! written: its ids and ring slots go back, an older version of it stays as
//! it was, and every other Service port is applied. A write the kernel
//! refuses anyway leaves the maps holding what the syncer does not know;
//! the next sync then starts over from reading the maps back, so it
//! converges without a restart or `--cleanup`.
mod alloc;
#[cfg(any(test, feature = "fake-maps"))]
pub mod fake;
pub mod node_maps;
mod plan;
pub mod service_maps;
pub mod stale;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result};
use lb_common::{
    addr::{from_map, from_map_v6, to_map, to_map_v6},
    BackendV4, BackendV6, FrontendKeyV4, FrontendKeyV6, FE_EXTERNAL,
};

pub use node_maps::NodeMaps;
pub use service_maps::{Room, ServiceMaps, Snapshot};

use crate::model::{DesiredState, Proto, ServicePortId};
use plan::{filter_bits, Applied, BackendAddr, Ring, RING_V6};

/// What one sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub writes: usize,
    pub services: usize,
    pub frontends: usize,
    pub backends: usize,
    /// IPv4 backends no Service uses any more, with the id they had: their
    /// UDP flows and affinity entries are stale (see `stale::forget`).
    pub removed: Vec<(u32, Ipv4Addr, u16)>,
    /// IPv6 backends no Service uses any more, with the id they had: as
    /// `removed`, and connected UDP sockets of the node's to them are stale.
    pub removed_v6: Vec<(u32, Ipv6Addr, u16)>,
    /// Service ports that did not fit, each with the map it would have
    /// overflowed; an older version of one stays applied.
    pub refused: Vec<Refusal>,
    /// Every Service port was planned against the maps as read back (the
    /// first sync of an agent, and the one after a failed write), rather
    /// than only those that changed since the last sync: kube-proxy's full
    /// resync, where the others are its partial ones.
    pub full: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub service: ServicePortId,
    pub reason: String,
}

/// The agent's view of what it wrote, with the ids it handed out.
#[derive(Debug)]
pub struct Syncer {
    room: Room,
    /// A write failed part-way: the maps may hold entries `applied` does
    /// not know of, so the next sync reads them back first.
    stale: bool,
    /// `applied` was read back from the maps and no sync has succeeded
    /// since: it knows no Service port's spec, so the next sync is full.
    read_back: bool,
    svc_alloc: alloc::Ids,
    backend_alloc: alloc::Ids,
    segments: alloc::Segments,
    applied: BTreeMap<ServicePortId, Applied>,
    /// Backend id and how many Service ports use it.
    backends: HashMap<BackendAddr, (u32, u32)>,
    addr_refs: HashMap<IpAddr, u32>,
    /// Per filter word, how many entries need each of its bits.
    bit_refs: HashMap<u32, HashMap<u64, u32>>,
    /// Filter words as written.
    filter: HashMap<u32, u64>,
}

fn bump<K: std::hash::Hash + Eq>(refs: &mut HashMap<K, u32>, k: K) -> bool {
    let n = refs.entry(k).or_insert(0);
    *n += 1;
    *n == 1
}

fn drop_ref<K: std::hash::Hash + Eq>(refs: &mut HashMap<K, u32>, k: K) -> bool {
    match refs.get_mut(&k) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            refs.remove(&k);
            true
        }
        None => false,
    }
}

/// The name under which recovery files entries of `svc_id` whose Service
/// port it cannot name. No Service has an empty namespace, so the next sync
/// finds it gone and removes what it held, after the additions.
fn unnamed(svc_id: u32) -> ServicePortId {
    ServicePortId {
        namespace: String::new(),
        name: format!("unnamed-{svc_id}"),
        port_name: String::new(),
        protocol: Proto::Tcp,
    }
}

/// Holds what the maps publish that belongs to no Service id (frontend
/// addresses, backends): its id 0 is never handed out.
const LEFTOVERS: u32 = 0;

impl Syncer {
    /// Starts from what `w` already holds (pinned maps of an earlier agent,
    /// or empty maps), so ids and rings carry over and the first sync writes
    /// only what changed. The address filter is not pinned (a new program
    /// brings its own, empty), so it is rewritten here to cover what the
    /// maps already publish, before the program can see a packet.
    ///
    /// Whatever the maps hold that no readable Service owns (left by a sync
    /// that failed part-way, or an older agent) is filed under a name no
    /// Service has; it keeps working until the next sync, which removes it.
    pub fn recover(w: &mut dyn ServiceMaps) -> Result<Self> {
        let snap = w.read_back().context("reading the maps back")?;
        let room = w.room().context("reading the maps' capacities")?;
        let mut s = Self {
            room,
            stale: false,
            read_back: true,
            svc_alloc: alloc::Ids::new(1, room.services, "SVC_NAMES"),
            backend_alloc: alloc::Ids::new(1, room.backends, "BACKENDS_V4"),
            segments: alloc::Segments::new(room.ring_slots),
            applied: BTreeMap::new(),
            backends: HashMap::new(),
            addr_refs: HashMap::new(),
            bit_refs: HashMap::new(),
            filter: snap.filter.iter().copied().collect(),
        };
        let by_id: HashMap<u32, BackendAddr> = snap
            .backends
            .iter()
            .map(|(id, b)| (*id, (IpAddr::V4(from_map(b.addr)), u16::from_be(b.port))))
            .chain(snap.backends_v6.iter().map(|(id, b)| {
                let addr = IpAddr::V6(from_map_v6(b.addr));
                (*id, (addr, u16::from_be(b.port)))
            }))
            .collect();
        let slots: HashMap<u32, &Vec<u32>> = snap.rings.iter().map(|(o, v)| (*o, v)).collect();
        let addrs: HashSet<IpAddr> = snap.frontend_addrs.iter().copied().collect();
        let mut names: HashMap<u32, ServicePortId> = HashMap::new();
        for (svc_id, name) in &snap.services {
            let id = parse_name(name).unwrap_or_else(|| {
                tracing::warn!(%name, "unreadable service name in pinned maps; its entries will be rebuilt");
                unnamed(*svc_id)
            });
            names.insert(*svc_id, id);
        }
        let svc_ids = snap
            .frontends
            .iter()
            .map(|(_, v)| v.svc_id)
            .chain(snap.frontends_v6.iter().map(|(_, v)| v.svc_id))
            .chain(snap.source_ranges.iter().map(|(id, _, _)| *id));
        for svc_id in svc_ids {
            names.entry(svc_id).or_insert_with(|| unnamed(svc_id));
        }
        for (svc_id, id) in &names {
            s.svc_alloc.claim(*svc_id);
            s.applied.insert(
                id.clone(),
                Applied {
                    svc_id: *svc_id,
                    ..Applied::default()
                },
            );
        }
        let claim_ring =
            |s: &mut Self, name: &ServicePortId, class: u32, value: &lb_common::FrontendValue| {
                let a = s.applied.get_mut(name).expect("named above");
                if a.rings.contains_key(&class) {
                    return;
                }
                if let Err(e) = s.segments.claim(value.ring_offset, value.ring_size) {
                    // The Service port gets a new ring at the next sync.
                    tracing::warn!(svc_id = value.svc_id, "{e:#}");
                    return;
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
                members.retain(|id| by_id.contains_key(id));
                members.sort_by_key(|id| by_id[id]);
                a.backends.extend(members.iter().map(|id| by_id[id]));
                a.rings.insert(
                    class,
                    Ring {
                        offset: value.ring_offset,
                        size: value.ring_size,
                        members,
                    },
                );
            };
        for (key, value) in &snap.frontends {
            let name = &names[&value.svc_id];
            let a = s.applied.get_mut(name).expect("named above");
            a.frontends.insert(*key, *value);
            let addr = IpAddr::V4(from_map(key.addr));
            if addrs.contains(&addr) {
                a.addrs.insert(addr);
            }
            claim_ring(&mut s, name, value.flags & FE_EXTERNAL, value);
        }
        for (key, value) in &snap.frontends_v6 {
            let name = &names[&value.svc_id];
            let a = s.applied.get_mut(name).expect("named above");
            a.frontends_v6.insert(*key, *value);
            let addr = IpAddr::V6(from_map_v6(key.addr));
            if addrs.contains(&addr) {
                a.addrs.insert(addr);
            }
            claim_ring(&mut s, name, RING_V6 | (value.flags & FE_EXTERNAL), value);
        }
        for (svc_id, addr, len) in &snap.source_ranges {
            let a = s.applied.get_mut(&names[svc_id]).expect("named above");
            a.ranges.insert((*addr, *len));
        }
        let mut leftovers = Applied {
            svc_id: LEFTOVERS,
            ..Applied::default()
        };
        let owned: HashSet<IpAddr> = s
            .applied
            .values()
            .flat_map(|a| a.addrs.iter().copied())
            .collect();
        leftovers
            .addrs
            .extend(addrs.iter().filter(|a| !owned.contains(a)));
        let used: HashSet<BackendAddr> = s
            .applied
            .values()
            .flat_map(|a| a.backends.iter().copied())
            .collect();
        leftovers
            .backends
            .extend(by_id.values().filter(|b| !used.contains(b)));
        if !leftovers.addrs.is_empty() || !leftovers.backends.is_empty() {
            s.applied.insert(unnamed(LEFTOVERS), leftovers);
        }
        for (id, b) in &by_id {
            s.backend_alloc.claim(*id);
            s.backends.entry(*b).or_insert((*id, 0));
        }
        for a in s.applied.values_mut() {
            a.bits = filter_bits(a.frontends.keys(), a.frontends_v6.keys(), a.backends.iter());
            for b in &a.backends {
                s.backends.get_mut(b).expect("read back above").1 += 1;
            }
            for addr in &a.addrs {
                bump(&mut s.addr_refs, *addr);
            }
            for (word, bit) in &a.bits {
                bump(s.bit_refs.entry(*word).or_default(), *bit);
            }
        }
        let words: BTreeSet<u32> = s.bit_refs.keys().chain(s.filter.keys()).copied().collect();
        write_words(&s.bit_refs, &mut s.filter, &words, w)?;
        Ok(s)
    }

    /// Applies `desired`, refusing per Service port what does not fit. An
    /// error means a write failed: the maps still serve every Service that
    /// was complete before, and the next call reconciles from them.
    pub fn sync(&mut self, desired: &DesiredState, w: &mut dyn ServiceMaps) -> Result<SyncReport> {
        if self.stale {
            *self = Self::recover(w).context("reading the maps back after a failed sync")?;
        }
        let full = self.read_back;
        let result = self.apply(desired, w);
        self.stale = result.is_err();
        self.read_back &= self.stale;
        result.map(|report| SyncReport { full, ..report })
    }

    /// Plans one changed Service port, with its ids and ring slots. On
    /// refusal everything it took is given back.
    fn plan(
        &mut self,
        name: &ServicePortId,
        sp: &crate::model::ServicePort,
        new_backends: &mut HashMap<BackendAddr, (u32, bool)>,
        peak: &mut Peak,
    ) -> std::result::Result<Applied, String> {
        let old = self.applied.get(name);
        let encoded = lb_common::SvcNameParts::parse(&name.to_string())
            .and_then(|parts| lb_common::SvcName::encode(&parts));
        if encoded.is_none() {
            return Err(format!(
                "its name does not fit SVC_NAMES ({} bytes)",
                lb_common::svc_name::SVC_NAME_LEN
            ));
        }
        let new_svc = match old {
            Some(_) => None,
            None => Some(self.svc_alloc.take().map_err(|e| format!("{e:#}"))?),
        };
        let svc_id = old.map_or_else(|| new_svc.expect("taken above"), |a| a.svc_id);
        let mut taken: Vec<BackendAddr> = Vec::new();
        let backends = &self.backends;
        let backend_alloc = &mut self.backend_alloc;
        let room_v6 = self.room.backends_v6 as usize;
        let mut backend_id = |addr: IpAddr, port: u16, local: bool| -> Result<u32> {
            if let Some((id, _)) = backends.get(&(addr, port)) {
                return Ok(*id);
            }
            if let Some((id, _)) = new_backends.get(&(addr, port)) {
                return Ok(*id);
            }
            // Additions come before removals: the map must hold both.
            if addr.is_ipv6() {
                let v6 = backends
                    .keys()
                    .chain(new_backends.keys())
                    .filter(|(a, _)| a.is_ipv6())
                    .count();
                if v6 >= room_v6 {
                    anyhow::bail!("does not fit: BACKENDS_V6 holds {room_v6} entries, all in use");
                }
            }
            let id = backend_alloc.take()?;
            new_backends.insert((addr, port), (id, local));
            taken.push((addr, port));
            Ok(id)
        };
        let planned = plan::service(
            svc_id,
            name.protocol,
            sp,
            old,
            &mut backend_id,
            &mut self.segments,
        )
        .map_err(|e| format!("{e:#}"))
        .and_then(
            |plan| match peak.admit(&plan, old, &self.addr_refs, &self.room) {
                Ok(()) => Ok(plan),
                Err(why) => {
                    plan::release_new_rings(&plan, &mut self.segments);
                    Err(why)
                }
            },
        );
        if planned.is_err() {
            for b in taken {
                let (id, _) = new_backends.remove(&b).expect("taken above");
                self.backend_alloc.give(id);
            }
            if let Some(id) = new_svc {
                self.svc_alloc.give(id);
            }
        }
        planned
    }

    /// A sync in four steps, each taking the previous one's result, so the
    /// write order is the types' and not a comment's: plan, add what the
    /// changes point at, publish the frontends, retire what nothing uses.
    fn apply(&mut self, desired: &DesiredState, w: &mut dyn ServiceMaps) -> Result<SyncReport> {
        let plan = self.plan_changes(desired);
        let added = self.add(plan, w)?;
        let published = self.publish(added, w)?;
        self.retire(published, w)
    }

    /// Plans every changed Service port, allocating ids and ring segments;
    /// writes nothing.
    fn plan_changes(&mut self, desired: &DesiredState) -> Plan {
        let mut plan = Plan::default();
        let mut peak = Peak::of(self);
        // Both maps are ordered by name: one merged walk finds the changed
        // and the gone Service ports, where a lookup per Service port would
        // make a one-Service change cost 10,000 lookups.
        let mut changed: Vec<&ServicePortId> = Vec::new();
        let mut applied = self.applied.iter().peekable();
        for (name, sp) in &desired.services {
            while let Some((n, _)) = applied.next_if(|(n, _)| *n < name) {
                plan.gone.push(n.clone());
            }
            let old = applied.next_if(|(n, _)| *n == name).map(|(_, a)| a);
            if !old.is_some_and(|a| a.spec.as_ref() == Some(sp)) {
                changed.push(name);
            }
        }
        plan.gone.extend(applied.map(|(n, _)| n.clone()));
        for name in changed {
            let sp = &desired.services[name];
            let is_new = !self.applied.contains_key(name);
            match self.plan(name, sp, &mut plan.new_backends, &mut peak) {
                Ok(planned) => {
                    if is_new {
                        plan.new_services.push((planned.svc_id, name.to_string()));
                    }
                    plan.changed.push((name.clone(), planned));
                }
                Err(reason) => plan.refused.push(Refusal {
                    service: name.clone(),
                    reason,
                }),
            }
        }
        plan
    }

    /// Writes everything the changed Service ports will point at, in
    /// dependency order: names, backends, rings, filter bits, source
    /// ranges, frontend addresses. No frontend changes yet.
    fn add(&mut self, plan: Plan, w: &mut dyn ServiceMaps) -> Result<Added> {
        let mut writes = 0;
        let empty = Applied::default();
        let applied = &self.applied;
        let old_of = |name: &ServicePortId| applied.get(name).unwrap_or(&empty);
        for (id, name) in &plan.new_services {
            w.put_service(*id, name)?;
            writes += 1;
        }
        for ((addr, port), (id, local)) in &plan.new_backends {
            let flags = if *local { lb_common::BE_LOCAL } else { 0 };
            match addr {
                IpAddr::V4(addr) => w.put_backend(
                    *id,
                    BackendV4 {
                        addr: to_map(*addr),
                        port: port.to_be(),
                        flags,
                    },
                )?,
                IpAddr::V6(addr) => w.put_backend_v6(
                    *id,
                    BackendV6 {
                        addr: to_map_v6(*addr),
                        port: port.to_be(),
                        flags,
                    },
                )?,
            }
            writes += 1;
            self.backends.insert((*addr, *port), (*id, 0));
        }
        for (name, new) in &plan.changed {
            let old = old_of(name);
            for b in new.backends.difference(&old.backends) {
                self.backends.get_mut(b).expect("allocated above").1 += 1;
            }
            for (class, ring) in &new.rings {
                if old.rings.get(class) != Some(ring) && ring.size > 0 {
                    w.put_ring(ring.offset, &new.tables[class])?;
                    writes += 1;
                }
            }
        }
        let mut words: BTreeSet<u32> = BTreeSet::new();
        for (name, new) in &plan.changed {
            for (word, bit) in new.bits.difference(&old_of(name).bits) {
                if bump(self.bit_refs.entry(*word).or_default(), *bit) {
                    words.insert(*word);
                }
            }
        }
        writes += write_words(&self.bit_refs, &mut self.filter, &words, w)?;
        for (name, new) in &plan.changed {
            let old = old_of(name);
            for (addr, len) in new.ranges.difference(&old.ranges) {
                w.put_source_range(new.svc_id, *addr, *len)?;
                writes += 1;
            }
            for addr in new.addrs.difference(&old.addrs) {
                if bump(&mut self.addr_refs, *addr) {
                    w.put_frontend_addr(*addr)?;
                    writes += 1;
                }
            }
        }
        Ok(Added { plan, writes })
    }

    /// Points each changed frontend at its new ring, one atomic map update
    /// each; then records the changed Service ports as applied.
    fn publish(&mut self, added: Added, w: &mut dyn ServiceMaps) -> Result<Published> {
        let Added { plan, mut writes } = added;
        let mut claimed: HashSet<FrontendKeyV4> = HashSet::new();
        let mut claimed_v6: HashSet<FrontendKeyV6> = HashSet::new();
        let empty = Applied::default();
        for (name, new) in &plan.changed {
            let old = self.applied.get(name).unwrap_or(&empty);
            for (key, value) in &new.frontends {
                claimed.insert(*key);
                if old.frontends.get(key) != Some(value) {
                    w.put_frontend(*key, *value)?;
                    writes += 1;
                }
            }
            for (key, value) in &new.frontends_v6 {
                claimed_v6.insert(*key);
                if old.frontends_v6.get(key) != Some(value) {
                    w.put_frontend_v6(*key, *value)?;
                    writes += 1;
                }
            }
        }
        let mut retired: Vec<Retired> = Vec::new();
        for (name, mut new) in plan.changed {
            new.tables = BTreeMap::new();
            let old = self.applied.insert(name.clone(), new).unwrap_or_default();
            retired.push(Retired {
                name,
                old,
                gone: false,
            });
        }
        for name in plan.gone {
            let old = self.applied.remove(&name).expect("listed as gone");
            retired.push(Retired {
                name,
                old,
                gone: true,
            });
        }
        Ok(Published {
            retired,
            claimed,
            claimed_v6,
            refused: plan.refused,
            writes,
        })
    }

    /// Removes what the published Service ports no longer use: frontends
    /// and addresses first, then backends, filter bits and names.
    fn retire(&mut self, published: Published, w: &mut dyn ServiceMaps) -> Result<SyncReport> {
        let Published {
            retired,
            claimed,
            claimed_v6,
            refused,
            mut writes,
        } = published;
        let empty = Applied::default();
        let mut removed = Vec::new();
        let mut removed_v6 = Vec::new();
        let mut words = BTreeSet::new();
        for Retired { name, old, .. } in &retired {
            let now = self.applied.get(name).unwrap_or(&empty);
            for key in old.frontends.keys() {
                if !now.frontends.contains_key(key) && !claimed.contains(key) {
                    w.remove_frontend(key)?;
                    writes += 1;
                }
            }
            for key in old.frontends_v6.keys() {
                if !now.frontends_v6.contains_key(key) && !claimed_v6.contains(key) {
                    w.remove_frontend_v6(key)?;
                    writes += 1;
                }
            }
            for addr in old.addrs.difference(&now.addrs) {
                if drop_ref(&mut self.addr_refs, *addr) {
                    w.remove_frontend_addr(*addr)?;
                    writes += 1;
                }
            }
            for (addr, len) in old.ranges.difference(&now.ranges) {
                w.remove_source_range(old.svc_id, *addr, *len)?;
                writes += 1;
            }
            for (class, ring) in &old.rings {
                if now.rings.get(class) != Some(ring) {
                    self.segments.give(ring.offset, ring.size);
                }
            }
            for b in old.backends.difference(&now.backends) {
                let entry = self.backends.get_mut(b).expect("counted backend");
                entry.1 -= 1;
                if entry.1 == 0 {
                    let id = entry.0;
                    self.backends.remove(b);
                    match b.0 {
                        IpAddr::V4(addr) => {
                            w.put_backend(id, BackendV4::default())?;
                            removed.push((id, addr, b.1));
                        }
                        IpAddr::V6(addr) => {
                            w.remove_backend_v6(id)?;
                            removed_v6.push((id, addr, b.1));
                        }
                    }
                    writes += 1;
                    self.backend_alloc.give(id);
                }
            }
            for (word, bit) in old.bits.difference(&now.bits) {
                let refs = self.bit_refs.entry(*word).or_default();
                if drop_ref(refs, *bit) {
                    words.insert(*word);
                }
                if refs.is_empty() {
                    self.bit_refs.remove(word);
                }
            }
        }
        writes += write_words(&self.bit_refs, &mut self.filter, &words, w)?;
        for r in retired
            .iter()
            .filter(|r| r.gone && r.old.svc_id != LEFTOVERS)
        {
            w.remove_service(r.old.svc_id)?;
            writes += 1;
            self.svc_alloc.give(r.old.svc_id);
        }
        Ok(SyncReport {
            writes,
            services: self.applied.len(),
            frontends: self
                .applied
                .values()
                .map(|a| a.frontends.len() + a.frontends_v6.len())
                .sum(),
            backends: self.backends.len(),
            removed,
            removed_v6,
            refused,
            full: false,
        })
    }
}

/// Step one's result: what changes, with ids and ring slots taken.
#[derive(Default)]
struct Plan {
    new_services: Vec<(u32, String)>,
    new_backends: HashMap<BackendAddr, (u32, bool)>,
    changed: Vec<(ServicePortId, Applied)>,
    gone: Vec<ServicePortId>,
    refused: Vec<Refusal>,
}

/// Step two's result: everything the changes point at is in the maps.
struct Added {
    plan: Plan,
    writes: usize,
}

/// A Service port's previous state, once its new one (if any) is published.
struct Retired {
    name: ServicePortId,
    old: Applied,
    /// The Service port is gone, not changed.
    gone: bool,
}

/// Step three's result: the frontends point at their new rings.
struct Published {
    retired: Vec<Retired>,
    /// Frontends some published Service port holds now.
    claimed: HashSet<FrontendKeyV4>,
    claimed_v6: HashSet<FrontendKeyV6>,
    refused: Vec<Refusal>,
    writes: usize,
}

/// The most entries each hash map holds during a sync: additions are
/// written before removals, so a sync needs room for both at once.
struct Peak {
    frontends: usize,
    frontends_v6: usize,
    /// Frontend addresses this sync adds.
    addrs: HashSet<IpAddr>,
    /// Frontend addresses of each family (IPv4, IPv6) in use, those this
    /// sync adds included.
    addrs_in_use: [usize; 2],
    /// Source ranges of each family (IPv4, IPv6), which have a map each.
    ranges: [usize; 2],
}

impl Peak {
    fn of(s: &Syncer) -> Self {
        Self {
            frontends: s.applied.values().map(|a| a.frontends.len()).sum(),
            frontends_v6: s.applied.values().map(|a| a.frontends_v6.len()).sum(),
            addrs: HashSet::new(),
            addrs_in_use: family_counts(s.addr_refs.keys()),
            ranges: family_counts(s.applied.values().flat_map(|a| &a.ranges)),
        }
    }

    /// Counts `plan` in, or says which map it would overflow.
    fn admit(
        &mut self,
        plan: &Applied,
        old: Option<&Applied>,
        addr_refs: &HashMap<IpAddr, u32>,
        room: &Room,
    ) -> std::result::Result<(), String> {
        let frontends = plan
            .frontends
            .keys()
            .filter(|k| !old.is_some_and(|o| o.frontends.contains_key(k)))
            .count();
        let frontends_v6 = plan
            .frontends_v6
            .keys()
            .filter(|k| !old.is_some_and(|o| o.frontends_v6.contains_key(k)))
            .count();
        let addrs: Vec<IpAddr> = plan
            .addrs
            .iter()
            .filter(|a| !addr_refs.contains_key(a) && !self.addrs.contains(a))
            .copied()
            .collect();
        let ranges = family_counts(
            plan.ranges
                .iter()
                .filter(|r| !old.is_some_and(|o| o.ranges.contains(r))),
        );
        let over = |map: &str, have: usize, more: usize, cap: u32| {
            format!(
                "does not fit: {map} holds {cap} entries, {have} in use, this Service port needs {more} more"
            )
        };
        if self.frontends + frontends > room.frontends as usize {
            return Err(over(
                "FRONTENDS_V4",
                self.frontends,
                frontends,
                room.frontends,
            ));
        }
        if self.frontends_v6 + frontends_v6 > room.frontends_v6 as usize {
            return Err(over(
                "FRONTENDS_V6",
                self.frontends_v6,
                frontends_v6,
                room.frontends_v6,
            ));
        }
        let more = family_counts(addrs.iter());
        for (family, map) in ["ADDRS_V4", "ADDRS_V6"].into_iter().enumerate() {
            let have = self.addrs_in_use[family];
            if more[family] > 0 && have + more[family] > room.addrs as usize {
                return Err(over(map, have, more[family], room.addrs));
            }
        }
        for (family, map) in ["SOURCE_RANGES_V4", "SOURCE_RANGES_V6"]
            .into_iter()
            .enumerate()
        {
            if self.ranges[family] + ranges[family] > room.source_ranges as usize {
                return Err(over(
                    map,
                    self.ranges[family],
                    ranges[family],
                    room.source_ranges,
                ));
            }
        }
        self.frontends += frontends;
        self.frontends_v6 += frontends_v6;
        self.addrs.extend(addrs);
        self.addrs_in_use[0] += more[0];
        self.addrs_in_use[1] += more[1];
        self.ranges[0] += ranges[0];
        self.ranges[1] += ranges[1];
        Ok(())
    }
}

/// How many of `items` are IPv4 and IPv6.
fn family_counts<'a, T: Family + 'a>(items: impl Iterator<Item = &'a T>) -> [usize; 2] {
    let mut n = [0; 2];
    for item in items {
        n[usize::from(item.is_ipv6())] += 1;
    }
    n
}

/// What `family_counts` counts: addresses, and source ranges by theirs.
trait Family {
    fn is_ipv6(&self) -> bool;
}

impl Family for IpAddr {
    fn is_ipv6(&self) -> bool {
        IpAddr::is_ipv6(self)
    }
}

impl Family for (IpAddr, u8) {
    fn is_ipv6(&self) -> bool {
        self.0.is_ipv6()
    }
}

/// Rewrites the listed filter words that differ from the bits still
/// referenced, in one write; returns how many words changed.
fn write_words(
    bit_refs: &HashMap<u32, HashMap<u64, u32>>,
    filter: &mut HashMap<u32, u64>,
    words: &BTreeSet<u32>,
    w: &mut dyn ServiceMaps,
) -> Result<usize> {
    let changed: Vec<(u32, u64)> = words
        .iter()
        .map(|&word| {
            let bits = bit_refs
                .get(&word)
                .map(|b| b.keys().fold(0, |a, b| a | b))
                .unwrap_or(0);
            (word, bits)
        })
        .filter(|(word, bits)| filter.get(word).copied().unwrap_or(0) != *bits)
        .collect();
    if changed.is_empty() {
        return Ok(0);
    }
    w.put_filter_words(&changed)?;
    for &(word, bits) in &changed {
        if bits == 0 {
            filter.remove(&word);
        } else {
            filter.insert(word, bits);
        }
    }
    Ok(changed.len())
}

/// Reads back a `ServicePortId` from its encoded name.
fn parse_name(name: &str) -> Option<ServicePortId> {
    let parts = lb_common::SvcNameParts::parse(name)?;
    let protocol = match parts.protocol {
        "TCP" => Proto::Tcp,
        "UDP" => Proto::Udp,
        _ => return None,
    };
    Some(ServicePortId {
        namespace: parts.namespace.into(),
        name: parts.name.into(),
        port_name: parts.port.into(),
        protocol,
    })
}

#[cfg(test)]
mod tests;
