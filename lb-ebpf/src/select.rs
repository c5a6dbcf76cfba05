//! The data plane's view of the maps for `lb_common::decide`, the rules for
//! new flows that the packet path, the socket hooks (`sock.rs`) and
//! `xdplb explain` share.
//!
//! Unsafe in this module: frontend and affinity values copied whole through
//! their map pointers, so a flow sees one version of each while the agent
//! or another CPU may replace it, and the write of an affinity entry's
//! `last_seen_ns` through its pointer, valid until the program returns.
use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    decide::{Client, View},
    sock::SockAffinityKeyV4,
    AffinityKeyV4, AffinityValue, BackendV4, FrontendKeyV4, FrontendValue, SourceRangeKeyV4,
};

use crate::{
    maps::{
        AFFINITY_V4, BACKENDS_V4, FRONTENDS_V4, MAGLEV_SLOTS, SOCK_AFFINITY_V4, SOURCE_RANGES_V4,
    },
    service::is_frontend_addr,
};

pub struct Maps;

impl View for Maps {
    type Entry = *mut AffinityValue;

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
