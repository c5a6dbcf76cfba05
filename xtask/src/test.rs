//! `cargo xtask test`: the README's test command and what CI runs.
use std::process::Command;

use anyhow::{bail, Result};

use crate::{
    bootstrap::{is_root, run, step},
    ebpf::{self, workspace_root},
};
use testbed::cluster::{NodeProfile, PodLayout};

#[derive(clap::Args)]
pub struct Args {
    /// Run only what needs no privileges, and say what was left out.
    #[arg(long)]
    pub unprivileged: bool,
}

pub fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.args(args).current_dir(workspace_root());
    c
}

/// Why the privileged tiers cannot run here, if they cannot.
fn privileged_blocker() -> Option<String> {
    if !is_root() {
        return Some("not running as root (BPF load, XDP attach and netns need root, or CAP_BPF+CAP_NET_ADMIN+CAP_SYS_ADMIN)".into());
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel exposes no BTF (/sys/kernel/btf/vmlinux missing)".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip netns` does not work (install iproute2)".into()),
    }
}

fn run_tests(args: &Args) -> Result<()> {
    step("format check");
    run(&mut cargo(&["fmt", "--all", "--", "--check"]))?;
    run(Command::new("rustfmt")
        .args(["--check", "--edition", "2021"])
        .arg(workspace_root().join("lb-ebpf/src/main.rs")))?;

    let obj = ebpf::build()?;
    step(&format!("eBPF object: {}", obj.display()));
    ebpf::clippy()?;

    step("clippy -D warnings");
    run(&mut cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    step("unit tests, the model fuzzer among them");
    run(&mut cargo(&["test", "--workspace", "--lib", "--bins"]))?;

    if args.unprivileged {
        step("left out: the packet tests and the packet fuzzer (BPF_PROG_TEST_RUN), the netns end-to-end tests, the demo cluster and the e2e scenarios, which need root");
        return Ok(());
    }
    if let Some(why) = privileged_blocker() {
        bail!("the privileged test tiers cannot run: {why}.\nRun as root, or pass --unprivileged to run the rest.");
    }
    ensure_bpffs()?;
    step("privileged tiers: packet tests (BPF_PROG_TEST_RUN), the packet fuzzer among them, and netns end-to-end tests");
    run(&mut cargo(&["test", "-p", "lb-userspace", "--test", "*"]))?;
    step("testbed end-to-end: the demo cluster (NodePort on both nodes, a pool LoadBalancer address and its takeover, Redis behind the ClusterIP)");
    crate::demo::run_cmd(&crate::demo::Args {
        keep: false,
        down: false,
    })?;
    step("end-to-end scenarios on four node profiles, which cover each rp_filter, pod layout and pods' cgroup");
    crate::e2e::run_cells(&e2e_cells(), &[], false)
}

/// The host-client tests pin under /sys/fs/bpf, where systemd mounts a
/// bpffs; a machine without systemd has none until someone mounts it.
fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut fields = l.split_whitespace().skip(1);
        (fields.next(), fields.next()) == (Some("/sys/fs/bpf"), Some("bpf"))
    });
    if !mounted {
        step("mounting a bpffs at /sys/fs/bpf (nothing on this machine did)");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}

/// A third of `cargo xtask e2e --matrix`, yet every value of each of its
/// dimensions, and the per-packet pod path on the default node; the last
/// cell's uplinks take XDP frames, so the XDP hook serves every scenario
/// there and tc serves them in the others.
fn e2e_cells() -> [NodeProfile; 4] {
    [
        NodeProfile::default(),
        NodeProfile {
            pods_in_hook_cgroup: false,
            ..NodeProfile::default()
        },
        NodeProfile {
            rp_filter: 1,
            pod_layout: PodLayout::Bridged,
            pods_in_hook_cgroup: false,
            uplinks_take_xdp: false,
        },
        NodeProfile {
            rp_filter: 0,
            pod_layout: PodLayout::Bridged,
            pods_in_hook_cgroup: true,
            uplinks_take_xdp: true,
        },
    ]
}

pub fn run_cmd(args: &Args) -> Result<()> {
    run_tests(args)?;
    step("all test tiers passed");
    Ok(())
}
