//! The maps as `lb_common::decide` reads them, from userspace and without
//! writing: `xdplb explain` and the tests that check it against the program
//! decide new flows by the very rules the data plane runs.
use aya::maps::lpm_trie::Key;
use lb_common::{
    decide::{Client, View},
    sock::{SockAffinityKeyV4, SockAffinityKeyV6},
    AffinityKeyV4, AffinityKeyV6, AffinityValue, BackendV4, BackendV6, FrontendKeyV4,
    FrontendKeyV6, FrontendValue, SourceRangeKeyV4, SourceRangeKeyV6, ADDR_FRONTEND,
};

use super::Maps;

pub struct MapsView<'a>(pub &'a Maps);

impl View for MapsView<'_> {
    type Entry = ();
    type Key = FrontendKeyV4;
    type Backend = BackendV4;

    fn frontend(&self, key: &FrontendKeyV4) -> Option<FrontendValue> {
        self.0.frontends().get(key, 0).ok()
    }

    fn is_frontend_addr(&self, addr: u32) -> bool {
        self.0
            .addrs()
            .get(&addr, 0)
            .is_ok_and(|a| a.flags & ADDR_FRONTEND != 0)
    }

    fn in_source_ranges(&self, svc_id: u32, src: u32) -> bool {
        let key = Key::new(
            SourceRangeKeyV4::LOOKUP_BITS,
            SourceRangeKeyV4::lookup(svc_id, src),
        );
        self.0.source_ranges().get(&key, 0).is_ok()
    }

    fn affinity(&self, fe: &FrontendKeyV4, client: &Client) -> Option<(AffinityValue, ())> {
        match *client {
            Client::Addr(client_addr) => self.0.affinity().get(
                &AffinityKeyV4 {
                    frontend: *fe,
                    client_addr,
                },
                0,
            ),
            Client::Netns(netns_cookie) => self.0.sock_affinity().get(
                &SockAffinityKeyV4 {
                    frontend: *fe,
                    netns_cookie,
                },
                0,
            ),
        }
        .ok()
        .map(|a| (a, ()))
    }

    fn slot(&self, index: u32) -> Option<u32> {
        self.0.slots().read(index, 1).ok()?.first().copied()
    }

    fn backend(&self, id: u32) -> Option<BackendV4> {
        self.0.backends().get(&id, 0).ok()
    }

    fn affinity_used(&self, _: (), _: u64) {}

    fn affinity_chosen(&self, _: &FrontendKeyV4, _: &Client, _: &AffinityValue) {}
}

/// `MapsView` for IPv6, as the data plane's `MapsV6` reads the maps.
pub struct MapsViewV6<'a>(pub &'a Maps);

impl View for MapsViewV6<'_> {
    type Entry = ();
    type Key = FrontendKeyV6;
    type Backend = BackendV6;

    fn frontend(&self, key: &FrontendKeyV6) -> Option<FrontendValue> {
        self.0.frontends_v6().get(key, 0).ok()
    }

    fn is_frontend_addr(&self, addr: [u32; 4]) -> bool {
        self.0
            .addrs_v6()
            .get(&addr, 0)
            .is_ok_and(|a| a.flags & ADDR_FRONTEND != 0)
    }

    fn in_source_ranges(&self, svc_id: u32, src: [u32; 4]) -> bool {
        let key = Key::new(
            SourceRangeKeyV6::LOOKUP_BITS,
            SourceRangeKeyV6::lookup(svc_id, src),
        );
        self.0.source_ranges_v6().get(&key, 0).is_ok()
    }

    fn affinity(
        &self,
        fe: &FrontendKeyV6,
        client: &Client<[u32; 4]>,
    ) -> Option<(AffinityValue, ())> {
        match *client {
            Client::Addr(client_addr) => self.0.affinity_v6().get(
                &AffinityKeyV6 {
                    frontend: *fe,
                    client_addr,
                },
                0,
            ),
            Client::Netns(netns_cookie) => self.0.sock_affinity_v6().get(
                &SockAffinityKeyV6 {
                    frontend: *fe,
                    _pad: 0,
                    netns_cookie,
                },
                0,
            ),
        }
        .ok()
        .map(|a| (a, ()))
    }

    fn slot(&self, index: u32) -> Option<u32> {
        self.0.slots().read(index, 1).ok()?.first().copied()
    }

    fn backend(&self, id: u32) -> Option<BackendV6> {
        self.0.backends_v6().get(&id, 0).ok()
    }

    fn affinity_used(&self, _: (), _: u64) {}

    fn affinity_chosen(&self, _: &FrontendKeyV6, _: &Client<[u32; 4]>, _: &AffinityValue) {}
}

/// The data plane's clock (`bpf_ktime_get_coarse_ns`), for affinity ages.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) into a timespec on the stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
