//! Writes services into the maps the way the agent lays them out, for
//! packet tests and benchmarks that provision by hand.
#![allow(dead_code)] // each test binary uses a different subset
use std::net::Ipv4Addr;

use aya::maps::lpm_trie::Key;
use lb_common::{
    filter::AddrSet, AddrInfo, BackendV4, FrontendKeyV4, FrontendValue, SourceRangeKeyV4,
    ADDR_FRONTEND,
};
use lb_userspace::{datapath::Datapath, maglev};

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
        let m = if backends.is_empty() {
            0
        } else {
            maglev::ring_size(backends.len())
        };
        let offset = self.next_slot;
        for (i, owner) in maglev::table(&names, m).into_iter().enumerate() {
            dp.maps
                .maglev_mut()
                .set(offset + i as u32, ids[owner as usize], 0)
                .unwrap();
        }
        self.next_slot += m;
        self.frontend(
            dp,
            vip,
            proto,
            FrontendValue {
                svc_id,
                ring_offset: offset,
                ring_size: m,
                ..template
            },
        );
        offset
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
