//! `cargo xtask bench`: builds the eBPF object, then runs the benchmarks;
//! with `--testbed`, the throughput table on a namespace cluster instead.
mod profile;
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
    /// Instead of the table: repeat one row of the BPF_PROG_TEST_RUN
    /// benchmark under `perf record -a` and print where the time goes, by
    /// symbol and by source line of `lb` and `lb6` (ipv4- or ipv6- and
    /// non-frontend, established, reply, established-ct or reply-ct); or,
    /// with `live`, of every `lb*` program loaded now, under whatever
    /// traffic runs (a testbed's, a node's).
    #[arg(long, value_name = "ROW", conflicts_with = "testbed")]
    profile: Option<String>,
    /// With --profile: seconds of samples.
    #[arg(long, default_value_t = 12, requires = "profile")]
    seconds: u64,
}

pub fn run_benches(args: &Args) -> Result<()> {
    if let Some(row) = &args.profile {
        return profile::run_cmd(row, args.seconds);
    }
    if args.testbed {
        return testbed::run_cmd(&args.columns, &args.rows, &args.families);
    }
    ebpf::build()?;
    run(cargo_bench()
        .args(["--bench", "datapath", "--bench", "sync"])
        .current_dir(ebpf::workspace_root()))
}

/// `cargo bench` of lb-userspace's benchmarks, with the in-memory map
/// writers the sync benchmark compares with the kernel's.
fn cargo_bench() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["bench", "-p", "lb-userspace", "--features", "fake-maps"]);
    cmd
}
