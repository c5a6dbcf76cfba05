//! `cargo xtask bench`: builds the eBPF object, then runs the benchmarks;
//! with `--testbed`, the throughput table on a namespace cluster instead.
mod testbed;

use std::process::Command;

use anyhow::Result;

use crate::{bootstrap::run, ebpf};

#[derive(clap::Args)]
pub struct Args {
    /// Datagrams per second through no proxy, kube-proxy's iptables and
    /// nftables rules, and xdplb, on a two-node namespace cluster (needs root).
    #[arg(long)]
    testbed: bool,
}

pub fn run_benches(args: &Args) -> Result<()> {
    if args.testbed {
        return testbed::run_cmd();
    }
    ebpf::build()?;
    run(Command::new("cargo")
        .args([
            "bench",
            "-p",
            "lb-userspace",
            "--bench",
            "datapath",
            "--bench",
            "sync",
        ])
        .current_dir(ebpf::workspace_root()))
}
