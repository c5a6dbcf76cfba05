//! The data plane's views of the maps for `lb_common::decide`, the rules for
//! new flows that the packet path, the socket hooks (`sock.rs`) and
//! `xdplb explain` share: `Maps` for IPv4, `MapsV6` for IPv6.
//!
//! Unsafe in this module: the read of an `ADDRS_V6` value through its map
//! pointer; frontend, IPv6 backend and affinity values copied whole through
//! their map pointers, so a flow sees one version of each while the agent
//! or another CPU may replace it, and the write of an affinity entry's
//! `last_seen_ns` through its pointer, valid until the program returns.
use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    decide::{Client, View},
    sock::{SockAffinityKeyV4, SockAffinityKeyV6},
    AffinityKeyV4, AffinityKeyV6, AffinityValue, BackendV4, BackendV6, FrontendKeyV4,
    FrontendKeyV6, FrontendValue, SourceRangeKeyV4, SourceRangeKeyV6, ADDR_FRONTEND,
};

use crate::{
    maps::{
        ADDRS_V6, AFFINITY_V4, AFFINITY_V6, BACKENDS_V4, BACKENDS_V6, FRONTENDS_V4, FRONTENDS_V6,
        MAGLEV_SLOTS, SOCK_AFFINITY_V4, SOCK_AFFINITY_V6, SOURCE_RANGES_V4, SOURCE_RANGES_V6,
    },
    service::is_frontend_addr,
};

pub struct Maps;

impl View for Maps {
    type Entry = *mut AffinityValue;
    type Key = FrontendKeyV4;
    type Backend = BackendV4;

    #[inline(always)]
    fn frontend(&self, key: &FrontendKeyV4) -> Option<FrontendValue> {
        // One copy of the value: the agent may swap it at any moment, and
        // every field a flow uses must come from the same version.
        FRONTENDS_V4.get_ptr(*key).map(|fe| unsafe { *fe })
    }

    #[inline(always)]
    fn is_frontend_addr(&self, addr: u32) -> bool {
        is_frontend_addr(addr)
    }

    #[inline(always)]
    fn in_source_ranges(&self, svc_id: u32, src: u32) -> bool {
        let key = Key::new(
            SourceRangeKeyV4::LOOKUP_BITS,
            SourceRangeKeyV4::lookup(svc_id, src),
        );
        SOURCE_RANGES_V4.get(&key).is_some()
    }

    #[inline(always)]
    fn affinity(
        &self,
        fe: &FrontendKeyV4,
        client: &Client,
    ) -> Option<(AffinityValue, *mut AffinityValue)> {
        let entry = match *client {
            Client::Addr(client_addr) => AFFINITY_V4.get_ptr_mut(AffinityKeyV4 {
                frontend: *fe,
                client_addr,
            }),
            Client::Netns(netns_cookie) => SOCK_AFFINITY_V4.get_ptr_mut(SockAffinityKeyV4 {
                frontend: *fe,
                netns_cookie,
            }),
        };
        entry.map(|a| (unsafe { *a }, a))
    }

    #[inline(always)]
    fn slot(&self, index: u32) -> Option<u32> {
        MAGLEV_SLOTS.get(index).copied()
    }

    #[inline(always)]
    fn backend(&self, id: u32) -> Option<BackendV4> {
        BACKENDS_V4.get(id).copied()
    }

    #[inline(always)]
    fn affinity_used(&self, entry: *mut AffinityValue, now: u64) {
        unsafe { (*entry).last_seen_ns = now };
    }

    #[inline(always)]
    fn affinity_chosen(&self, fe: &FrontendKeyV4, client: &Client, value: &AffinityValue) {
        // Losing this write only costs the client its stickiness.
        let _ = match *client {
            Client::Addr(client_addr) => AFFINITY_V4.insert(
                AffinityKeyV4 {
                    frontend: *fe,
                    client_addr,
                },
                *value,
                0,
            ),
            Client::Netns(netns_cookie) => SOCK_AFFINITY_V4.insert(
                SockAffinityKeyV4 {
                    frontend: *fe,
                    netns_cookie,
                },
                *value,
                0,
            ),
        };
    }
}

pub struct MapsV6;

impl View for MapsV6 {
    type Entry = *mut AffinityValue;
    type Key = FrontendKeyV6;
    type Backend = BackendV6;

    #[inline(always)]
    fn frontend(&self, key: &FrontendKeyV6) -> Option<FrontendValue> {
        // One copy, as for IPv4.
        FRONTENDS_V6.get_ptr(*key).map(|fe| unsafe { *fe })
    }

    #[inline(always)]
    fn is_frontend_addr(&self, addr: [u32; 4]) -> bool {
        ADDRS_V6
            .get_ptr(addr)
            .is_some_and(|i| unsafe { (*i).flags } & ADDR_FRONTEND != 0)
    }

    #[inline(always)]
    fn in_source_ranges(&self, svc_id: u32, src: [u32; 4]) -> bool {
        let key = Key::new(
            SourceRangeKeyV6::LOOKUP_BITS,
            SourceRangeKeyV6::lookup(svc_id, src),
        );
        SOURCE_RANGES_V6.get(&key).is_some()
    }

    #[inline(always)]
    fn affinity(
        &self,
        fe: &FrontendKeyV6,
        client: &Client<[u32; 4]>,
    ) -> Option<(AffinityValue, *mut AffinityValue)> {
        let entry = match *client {
            Client::Addr(client_addr) => AFFINITY_V6.get_ptr_mut(AffinityKeyV6 {
                frontend: *fe,
                client_addr,
            }),
            Client::Netns(netns_cookie) => SOCK_AFFINITY_V6.get_ptr_mut(SockAffinityKeyV6 {
                frontend: *fe,
                _pad: 0,
                netns_cookie,
            }),
        };
        entry.map(|a| (unsafe { *a }, a))
    }

    #[inline(always)]
    fn slot(&self, index: u32) -> Option<u32> {
        MAGLEV_SLOTS.get(index).copied()
    }

    #[inline(always)]
    fn backend(&self, id: u32) -> Option<BackendV6> {
        BACKENDS_V6.get_ptr(id).map(|b| unsafe { *b })
    }

    #[inline(always)]
    fn affinity_used(&self, entry: *mut AffinityValue, now: u64) {
        unsafe { (*entry).last_seen_ns = now };
    }

    #[inline(always)]
    fn affinity_chosen(
        &self,
        fe: &FrontendKeyV6,
        client: &Client<[u32; 4]>,
        value: &AffinityValue,
    ) {
        // Losing this write only costs the client its stickiness.
        let _ = match *client {
            Client::Addr(client_addr) => AFFINITY_V6.insert(
                AffinityKeyV6 {
                    frontend: *fe,
                    client_addr,
                },
                *value,
                0,
            ),
            Client::Netns(netns_cookie) => SOCK_AFFINITY_V6.insert(
                SockAffinityKeyV6 {
                    frontend: *fe,
                    _pad: 0,
                    netns_cookie,
                },
                *value,
                0,
            ),
        };
    }
}
