//! Writes services into the maps the way the agent lays them out, for
//! packet tests and benchmarks that provision by hand.
#![allow(dead_code)] // each test binary uses a different subset
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::lpm_trie::Key;
use lb_common::{
    addr::to_map_v6, filter::AddrSet, AddrInfo, BackendV4, BackendV6, FrontendKeyV4, FrontendKeyV6,
    FrontendValue, SourceRangeKeyV4, ADDR_FRONTEND,
};
use lb_userspace::{datapath::Datapath, maglev, sync::ServiceMaps};

pub fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// Writes services into the maps with consecutive backend ids and ring
/// segments, as the agent's writer lays them out.
#[derive(Default)]
pub struct Provision {
    next_backend: u32,
    next_slot: u32,
}

impl Provision {
    pub fn new() -> Self {
        Self {
            next_backend: 1,
            next_slot: 0,
        }
    }

    /// Frontend `vip:port/proto` to `backends`; returns the ring offset used.
    pub fn service(
        &mut self,
        dp: &mut Datapath,
        svc_id: u32,
        vip: (Ipv4Addr, u16),
        proto: u8,
        backends: &[(Ipv4Addr, u16)],
    ) -> u32 {
        self.service_with(
            dp,
            svc_id,
            vip,
            proto,
            backends,
            0,
            FrontendValue::default(),
        )
    }

    /// As `service`, with backend flags for every backend and the frontend's
    /// flags and affinity taken from `template`.
    #[allow(clippy::too_many_arguments)]
    pub fn service_with(
        &mut self,
        dp: &mut Datapath,
        svc_id: u32,
        vip: (Ipv4Addr, u16),
        proto: u8,
        backends: &[(Ipv4Addr, u16)],
        backend_flags: u16,
        template: FrontendValue,
    ) -> u32 {
        let ids: Vec<u32> = backends
            .iter()
            .map(|&(addr, port)| {
                let id = self.next_backend;
                self.next_backend += 1;
                dp.maps
                    .backends_mut()
                    .set(
                        id,
                        BackendV4 {
                            addr: be(addr),
                            port: port.to_be(),
                            flags: backend_flags,
                        },
                        0,
                    )
                    .unwrap();
                dp.maps
                    .filter_mut()
                    .unwrap()
                    .add(be(addr), AddrSet::Backend)
                    .unwrap();
                id
            })
            .collect();
        let names: Vec<String> = backends.iter().map(|(a, p)| format!("{a}:{p}")).collect();
        let (ring_offset, ring_size) = self.ring(dp, &ids, &names);
        self.frontend(
            dp,
            vip,
            proto,
            FrontendValue {
                svc_id,
                ring_offset,
                ring_size,
                ..template
            },
        );
        ring_offset
    }

    /// A Maglev ring over backends `ids` (named by `names`), written at the
    /// next free offset; returns its offset and size.
    fn ring(&mut self, dp: &mut Datapath, ids: &[u32], names: &[String]) -> (u32, u32) {
        let m = if ids.is_empty() {
            0
        } else {
            maglev::ring_size(ids.len())
        };
        let offset = self.next_slot;
        for (i, owner) in maglev::table(names, m).into_iter().enumerate() {
            dp.maps
                .maglev_mut()
                .set(offset + i as u32, ids[owner as usize], 0)
                .unwrap();
        }
        self.next_slot += m;
        (offset, m)
    }

    /// An IPv6 ClusterIP `vip:port/proto` to `backends`, as the agent
    /// writes one: backends in `BACKENDS_V6` under ids of the one id
    /// space, a ring segment, `FRONTENDS_V6` and the address filter.
    /// Returns the ring offset used.
    pub fn service_v6(
        &mut self,
        dp: &mut Datapath,
        svc_id: u32,
        vip: (Ipv6Addr, u16),
        proto: u8,
        backends: &[(Ipv6Addr, u16)],
    ) -> u32 {
        let ids: Vec<u32> = backends
            .iter()
            .map(|&(addr, port)| {
                let id = self.next_backend;
                self.next_backend += 1;
                let backend = BackendV6 {
                    addr: to_map_v6(addr),
                    port: port.to_be(),
                    flags: 0,
                };
                dp.maps.put_backend_v6(id, backend).unwrap();
                add_filter_v6(dp, addr, AddrSet::Backend);
                id
            })
            .collect();
        let names: Vec<String> = backends.iter().map(|(a, p)| format!("[{a}]:{p}")).collect();
        let (ring_offset, ring_size) = self.ring(dp, &ids, &names);
        let value = FrontendValue {
            svc_id,
            ring_offset,
            ring_size,
            ..Default::default()
        };
        self.frontend_v6(dp, vip, proto, value);
        ring_offset
    }

    pub fn frontend_v6(
        &mut self,
        dp: &mut Datapath,
        vip: (Ipv6Addr, u16),
        proto: u8,
        value: FrontendValue,
    ) {
        let key = FrontendKeyV6 {
            addr: to_map_v6(vip.0),
            port: vip.1.to_be(),
            proto,
            _pad: 0,
        };
        dp.maps.put_frontend_v6(key, value).unwrap();
        add_filter_v6(dp, vip.0, AddrSet::Frontend);
    }

    pub fn frontend(
        &mut self,
        dp: &mut Datapath,
        vip: (Ipv4Addr, u16),
        proto: u8,
        value: FrontendValue,
    ) {
        let key = FrontendKeyV4 {
            addr: be(vip.0),
            port: vip.1.to_be(),
            proto,
            _pad: 0,
        };
        dp.maps.frontends_mut().insert(key, value, 0).unwrap();
        add_flags(dp, vip.0, ADDR_FRONTEND);
        dp.maps
            .filter_mut()
            .unwrap()
            .add(be(vip.0), AddrSet::Frontend)
            .unwrap();
    }
}

/// Adds `net/len` to the loadBalancerSourceRanges of service `svc_id`.
pub fn source_range(dp: &mut Datapath, svc_id: u32, net: Ipv4Addr, len: u32) {
    let key = SourceRangeKeyV4 {
        svc_id_be: svc_id.to_be(),
        addr: be(net),
    };
    dp.maps
        .source_ranges_mut()
        .insert(&Key::new(32 + len, key), 1, 0)
        .unwrap();
}

fn add_flags(dp: &mut Datapath, addr: Ipv4Addr, flags: u32) {
    let old = dp
        .maps
        .addrs()
        .get(&be(addr), 0)
        .map(|a| a.flags)
        .unwrap_or(0);
    dp.maps
        .addrs_mut()
        .insert(be(addr), AddrInfo { flags: old | flags }, 0)
        .unwrap();
}

/// Sets `addr`'s bit in the address filter: an IPv6 address takes the
/// position of its four words folded into one (`filter::position_v6`).
fn add_filter_v6(dp: &mut Datapath, addr: Ipv6Addr, set: AddrSet) {
    let [a, b, c, d] = to_map_v6(addr);
    dp.maps
        .filter_mut()
        .unwrap()
        .add(a ^ b ^ c ^ d, set)
        .unwrap();
}
