//! The agent as deploy/daemonset.yaml runs it, not as plain root: only the
//! capabilities the manifest adds, no privilege escalation, a read-only root
//! filesystem and a read-only host cgroup, each taken from the manifest. It
//! must load, attach, pin, serve and restart over its pins like that. And
//! the footprint the manifest's memory figures rest on: one mapping of the
//! ring array per agent. Needs root (it takes the privileges away itself).
#[allow(unused_imports)]
mod common;

use std::collections::BTreeSet;
use std::fs;

use std::time::Duration;

use common::agent::{assert_seed_serves, Cluster};
use common::cgroup::Cgroup;
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Container};
use testbed::netns::wait_until;

const DAEMONSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/daemonset.yaml");

/// Capability names by number, as linux/capability.h numbers them.
const CAPABILITIES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

fn agent_container() -> Container {
    let text = fs::read_to_string(DAEMONSET).expect("reading deploy/daemonset.yaml");
    let ds: DaemonSet = serde_yaml::from_str(&text).expect("deploy/daemonset.yaml: a DaemonSet");
    ds.spec
        .and_then(|s| s.template.spec)
        .expect("a pod template")
        .containers
        .into_iter()
        .find(|c| c.name == "xdplb")
        .expect("a container named xdplb")
}

/// The capabilities the container keeps, in setpriv's spelling; the
/// runtime drops every other one first.
fn granted_capabilities(c: &Container) -> BTreeSet<String> {
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("securityContext.capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "drop ALL first");
    caps.add
        .iter()
        .flatten()
        .map(|name| name.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// The capabilities in set `set` (CapEff, CapPrm...) of process `pid`.
fn capabilities_of(pid: u32, set: &str) -> BTreeSet<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's status");
    let prefix = format!("{set}:");
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {set} in /proc/{pid}/status"));
    let mask = u64::from_str_radix(hex.trim(), 16).expect("a hex mask");
    (0..64)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| {
            CAPABILITIES
                .get(bit)
                .map_or(format!("cap_{bit}"), |n| n.to_string())
        })
        .collect()
}

/// The agent's WARN and ERROR lines: under missing privileges some steps
/// (socket programs, taking over a pinned link) only warn.
fn complaints(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

#[test]
fn agent_serves_with_only_the_daemonsets_privileges() {
    let container = agent_container();
    let caps = granted_capabilities(&container);
    let security = container.security_context.as_ref().unwrap();
    let cgroup_read_only = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "host-cgroup")
        .is_some_and(|m| m.read_only == Some(true));
    // Before the cluster, so it goes after the agents and their pins.
    let cgroup = Cgroup::new(cgroup_read_only).expect("a cgroup for the socket programs");
    let cluster = Cluster::build(&["node1"]).expect("building the cluster");
    let node = &cluster.nodes[0];
    cluster
        .write_seed_manifests()
        .expect("writing the seed manifests");

    // A mount namespace of the agent's own, so only its view of / and /sys
    // turns read-only; an unprivileged container's /sys is read-only too.
    let remount = match security.read_only_root_filesystem {
        Some(true) => "mount -o remount,bind,ro / && mount -o remount,bind,ro /sys && exec \"$@\"",
        _ => "exec \"$@\"",
    };
    let bounding: String = caps.iter().map(|c| format!(",+{c}")).collect();
    let bounding = format!("--bounding-set=-all{bounding}");
    // For root the bounding set becomes the permitted and effective sets
    // at exec, as the runtime sets them from the manifest.
    let mut wrapper = vec![
        "unshare",
        "--mount",
        "sh",
        "-c",
        remount,
        "sh",
        "setpriv",
        "--inh-caps=-all",
        &bounding,
    ];
    if security.allow_privilege_escalation == Some(false) {
        wrapper.push("--no-new-privs");
    }
    wrapper.push("--");

    for when in ["first start", "restart over its pins"] {
        let mut agent = cluster.must(
            node,
            "starting the agent",
            cluster.start_agent_with(node, &wrapper, &["--cgroup-path", cgroup.path()]),
        );
        cluster.must(node, &format!("readiness, {when}"), agent.wait_ready());
        assert_eq!(
            capabilities_of(agent.pid(), "CapEff"),
            caps,
            "{when}: the agent's effective capabilities"
        );
        let ext0 = cluster.must(node, "ext0", cluster.programs_attached(node, "ext0"));
        assert_eq!(ext0, ["lb_tc"], "{when}: programs on ext0");
        let pod = cluster.must(node, "veth-p1", cluster.programs_attached(node, "veth-p1"));
        assert_eq!(pod, ["lb_pod"], "{when}: programs on veth-p1");
        assert_seed_serves(&cluster, node, when);
        let log = cluster.log(node);
        assert!(
            complaints(&log).is_empty(),
            "{when}: the agent complained{}",
            cluster.diagnostics(node)
        );
        // Kill -9, so the restart finds every pin as a crash leaves them.
        agent.kill_9().expect("killing the agent");
    }
    let links = fs::read_dir(&node.pin_path)
        .expect("the pin path")
        .flatten()
        .filter_map(|layout| fs::read_dir(layout.path().join("cgroup")).ok())
        .flatten()
        .count();
    assert!(links > 0, "no socket program link pinned");
}

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
