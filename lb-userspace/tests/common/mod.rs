//! Shared by the privileged test binaries: privilege check, a loaded data
//! plane, and a provisioning helper that writes services the way the agent
//! lays them out.
#![allow(dead_code)]

pub mod agent;
pub mod apiserver;
pub mod cgroup;
pub mod host_client;
pub mod kube_agent;
pub mod packets;
pub mod provision;
pub mod servers;
pub mod topology;
pub mod uplink;

#[allow(unused_imports)] // each test binary uses a different subset
pub use provision::{be, source_range, Provision};

use lb_userspace::datapath::{Capacities, Datapath};

/// Fails (never skips) when the test cannot get the privileges it needs.
pub fn privileged(tier: &str) {
    if let Err(e) = testbed::netns::require_root(tier) {
        panic!("{e:#}");
    }
}

pub fn load() -> Datapath {
    privileged("BPF_PROG_TEST_RUN packet tests");
    Datapath::load(&Capacities::small(), None).expect("load the XDP object")
}
