//! Builds lb-ebpf for bpfel-unknown-none with BTF on the nightly toolchain.
use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::bootstrap::{ensure_ebpf_toolchain, run, step};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where the object lands; lb-userspace's build script embeds this path.
pub fn object_path() -> PathBuf {
    workspace_root().join("target/ebpf/bpfel-unknown-none/release/lb-ebpf")
}

/// Clippy on the eBPF crate for its own target, as the workspace's clippy
/// never compiles it (it is not a member: it needs the nightly and
/// `build-std`).
pub fn clippy() -> Result<()> {
    ensure_ebpf_toolchain()?;
    step("clippy -D warnings on lb-ebpf (bpfel-unknown-none)");
    let mut cmd = nightly_cargo("clippy", "target/ebpf-clippy");
    cmd.args(["--", "-D", "warnings"]);
    run(&mut cmd)
}

/// `cargo <subcommand>` of the nightly on lb-ebpf for the BPF target.
fn nightly_cargo(subcommand: &str, target_dir: &str) -> Command {
    let root = workspace_root();
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", subcommand, "--release", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(root.join(target_dir))
        .current_dir(root.join("lb-ebpf"))
        // The outer (stable) cargo's settings must not leak into the nightly build.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd
}

pub fn build() -> Result<PathBuf> {
    ensure_ebpf_toolchain()?;
    step("building lb-ebpf (bpfel-unknown-none, BTF, -Z build-std=core)");
    let mut cmd = nightly_cargo("build", "target/ebpf");
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Dwarnings",
    );
    run(&mut cmd)?;
    Ok(object_path())
}
