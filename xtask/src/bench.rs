//! `cargo xtask bench`: builds the eBPF object, then runs the benchmarks.
use std::process::Command;

use anyhow::Result;

use crate::{bootstrap::run, ebpf};

#[derive(clap::Args)]
pub struct Args {}

pub fn run_benches(_args: &Args) -> Result<()> {
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
