//! The agent as deploy/daemonset.yaml runs it: the footprint the
//! manifest's memory figures rest on, one mapping of the ring array per
//! agent. Needs root.
#[allow(unused_imports)]
mod common;

use std::fs;
use std::time::Duration;

use common::agent::Cluster;
use lb_userspace::testbed::netns::wait_until;

/// The kernel maps every page of the ring array at mmap, so each mapping
/// puts all of it (128 MiB at the default size) in the agent's RSS,
/// though the memory is the map's and counted once. The metrics server
/// reads the rings through the agent's mapping.
#[test]
fn agent_maps_the_ring_array_once() {
    let cluster = Cluster::build(&["node1"]).expect("building the cluster");
    let node = &cluster.nodes[0];
    cluster
        .write_seed_manifests()
        .expect("writing the seed manifests");
    let mut agent = cluster.must(node, "starting the agent", cluster.start_agent(node));
    cluster.must(node, "readiness", agent.wait_ready());
    // The metrics server listens once it holds its handle on the maps.
    assert!(
        wait_until(Duration::from_secs(5), || agent.metrics().is_ok()),
        "/metrics unanswered{}",
        cluster.diagnostics(node)
    );

    let ring_bytes = u64::from(lb_common::MAX_MAGLEV_SLOTS) * 8;
    let maps = fs::read_to_string(format!("/proc/{}/maps", agent.pid())).expect("the agent's maps");
    let rings: Vec<&str> = maps
        .lines()
        .filter(|line| line.ends_with("anon_inode:bpf-map"))
        .filter(|line| {
            let range = line.split_whitespace().next().unwrap_or_default();
            let Some((start, end)) = range.split_once('-') else {
                return false;
            };
            let size = |a| u64::from_str_radix(a, 16).unwrap_or(0);
            size(end) - size(start) == ring_bytes
        })
        .collect();
    assert_eq!(rings.len(), 1, "mappings of the ring array: {rings:#?}");
}
