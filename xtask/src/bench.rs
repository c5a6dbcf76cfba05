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
    /// With --testbed: only these columns (no-proxy, iptables, nftables, xdplb).
    #[arg(long, value_delimiter = ',', requires = "testbed")]
    columns: Vec<testbed::Column>,
    /// With --testbed: only these rows, numbered from 1 as in the full table
    /// (IPv4's paths 1-5, the same paths in IPv6 6-10).
    #[arg(long, value_delimiter = ',', requires = "testbed")]
    rows: Vec<usize>,
    /// With --testbed: only the rows of these address families (ipv4, ipv6).
    #[arg(long, value_delimiter = ',', requires = "testbed")]
    families: Vec<testbed::Family>,
}

pub fn run_benches(args: &Args) -> Result<()> {
    if args.testbed {
        return testbed::run_cmd(&args.columns, &args.rows, &args.families);
    }
    ebpf::build()?;
    run(Command::new("cargo")
        .args([
            "bench",
            "-p",
            "lb-userspace",
            "--features",
            "fake-maps",
            "--bench",
            "datapath",
            "--bench",
            "sync",
        ])
        .current_dir(ebpf::workspace_root()))
}
