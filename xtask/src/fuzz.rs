//! `cargo xtask fuzz`: the packet fuzzers (IPv4 and IPv6) and the model
//! fuzzer, which `cargo xtask test` runs on their CI budget, alone;
//! `--soak` runs them for long, on a seed of their own.
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use crate::{
    bootstrap::{run, step},
    ebpf,
    test::cargo,
};

/// About five minutes of model cases and ten of frames (each family's
/// campaign takes them all) in a debug build on two cores.
const SOAK_FRAMES: &str = "5000000";
const SOAK_CASES: &str = "1000000";

#[derive(clap::Args)]
pub struct Args {
    /// Run long, on a seed from the clock unless XDPLB_FUZZ_SEED names one.
    #[arg(long)]
    pub soak: bool,
}

pub fn run_cmd(args: &Args) -> Result<()> {
    ebpf::build()?;
    let mut env = Vec::new();
    if args.soak {
        // A seed of its own: the CI seed's inputs have been tried already.
        let seed = std::env::var("XDPLB_FUZZ_SEED").unwrap_or_else(|_| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            format!("{:#x}", nanos.as_nanos() as u64)
        });
        step(&format!(
            "soak: {SOAK_CASES} model cases and {SOAK_FRAMES} frames, seed {seed} \
             (XDPLB_FUZZ_SEED={seed} replays it)"
        ));
        env = vec![
            ("XDPLB_FUZZ_SEED", seed),
            ("XDPLB_FUZZ_CASES", SOAK_CASES.to_string()),
            ("XDPLB_FUZZ_ITERS", SOAK_FRAMES.to_string()),
        ];
    }
    step("model fuzzer");
    run(cargo(&[
        "test",
        "-p",
        "lb-userspace",
        "--lib",
        "model::fuzz",
        "--",
        "--nocapture",
    ])
    .envs(env.iter().cloned()))?;
    step("packet fuzzers, IPv4 and IPv6 (BPF_PROG_TEST_RUN, needs root)");
    run(cargo(&[
        "test",
        "-p",
        "lb-userspace",
        "--test",
        "packet_fuzz",
        "--test",
        "packet_fuzz_v6",
        "--",
        "--nocapture",
    ])
    .envs(env))?;
    step("the fuzzers passed");
    Ok(())
}
