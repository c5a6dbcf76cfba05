//! Shared by the privileged test binaries: privilege check, a loaded data
//! plane, and a provisioning helper that writes services the way the agent
//! lays them out.
#![allow(dead_code)]

pub mod agent;
pub mod apiserver;
pub mod cgroup;
pub mod external_v6;
pub mod fuzz;
pub mod host_client;
pub mod kube_agent;
pub mod packets;
pub mod packets_v6;
pub mod provision;
pub mod servers;
pub mod topology;
pub mod uplink;

#[allow(unused_imports)] // each test binary uses a different subset
pub use provision::{be, source_range, Provision};

use std::sync::atomic::{AtomicU32, Ordering};

use aya::maps::{MapData, RingBuf};
use lb_common::names;
use lb_userspace::{
    datapath::{Capacities, Datapath},
    model::{desired_state, ModelOptions, NodeInfo},
    monitor::Lease,
    source::manifests::load_dir,
    sync::{NodeMaps, Syncer},
};

/// `dp`'s `MONITOR` ring under a lease, as `xdplb monitor` holds them:
/// the data plane writes events from now on.
pub fn watch(dp: &mut Datapath) -> RingBuf<MapData> {
    let lease = dp.ebpf.take_map(names::MONITOR_ON).unwrap();
    Lease::new(lease).unwrap().renew().unwrap();
    dp.ebpf
        .take_map(names::MONITOR)
        .unwrap()
        .try_into()
        .unwrap()
}

/// The counters of established and reply packets, through connection
/// tracking and from the flow cache, in that order.
pub fn cache_counts(dp: &Datapath) -> [u64; 4] {
    [
        lb_common::Reason::XlateEstablished,
        lb_common::Reason::XlateEstablishedCached,
        lb_common::Reason::XlateReply,
        lb_common::Reason::XlateReplyCached,
    ]
    .map(|r| dp.maps.reason_total(r).unwrap())
}

/// A TCP segment with FIN set.
pub fn fin() -> packets::Tcp {
    packets::Tcp {
        fin: true,
        ..packets::Tcp::ack()
    }
}

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

/// `synced` on node1 of zone-less nodes, given the IPv6 SNAT address the
/// agent takes from its first IPv6 node address.
pub fn synced_with_snat_v6(manifests: &str, opts: &ModelOptions) -> Datapath {
    let node = NodeInfo {
        name: "node1".into(),
        zone: None,
    };
    let mut dp = synced(manifests, &node, opts);
    let snat = opts.node_addresses_v6[0];
    dp.maps
        .put_config_v6(lb_common::ConfigV6 {
            snat_addr: lb_common::addr::to_map_v6(snat),
            ..lb_common::ConfigV6::default()
        })
        .unwrap();
    dp
}

/// The data plane with `manifests` synced into it as the agent does, on
/// node `node` with options `opts`.
pub fn synced(manifests: &str, node: &NodeInfo, opts: &ModelOptions) -> Datapath {
    privileged("BPF_PROG_TEST_RUN packet tests");
    // Shows why, when a program the tests need was left out at load.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "xl-packet-manifests-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("objects.yaml"), manifests).unwrap();
    let (objects, report) = load_dir(&dir).expect("reading the manifests");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(report.problems, [], "the manifests must load");
    let desired = desired_state(&objects.services, &objects.slices, node, opts);
    assert_eq!(desired.problems, [], "the manifests must be valid");
    let mut dp = Datapath::load(&Capacities::small(), None).expect("loading the object");
    let mut syncer = Syncer::recover(&mut dp.maps).unwrap();
    let report = syncer.sync(&desired, &mut dp.maps).unwrap();
    assert_eq!(report.refused, [], "every Service port fits");
    dp
}
