//! Developer commands: `cargo xtask <command>`.
mod bench;
mod bootstrap;
mod demo;
mod e2e;
mod ebpf;
mod fuzz;
mod prepare;
mod progress;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xdplb developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bootstrap the eBPF toolchain if needed, build lb-ebpf with BTF, print the object path.
    BuildEbpf,
    /// The project's test command: fmt, clippy, unit tests, then the privileged tiers.
    Test(test::Args),
    /// The packet and model fuzzers alone; --soak runs them long on a new seed (needs root).
    Fuzz(fuzz::Args),
    /// Per-packet cost under BPF_PROG_TEST_RUN, or with --testbed datagrams per second on a namespace cluster (needs root).
    Bench(bench::Args),
    /// The seed's counter app and Redis on a two-node namespace cluster, served by xdplb (needs root).
    Demo(demo::Args),
    /// Service scenarios (after Kubernetes' Service e2e tests) on the demo's namespace cluster (needs root).
    E2e(e2e::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BuildEbpf => {
            let obj = ebpf::build()?;
            println!("{}", obj.display());
            Ok(())
        }
        Command::Test(args) => test::run_cmd(&args),
        Command::Fuzz(args) => fuzz::run_cmd(&args),
        Command::Bench(args) => bench::run_benches(&args),
        Command::Demo(args) => demo::run_cmd(&args),
        Command::E2e(args) => e2e::run_cmd(&args),
    }
}
