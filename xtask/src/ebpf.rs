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

pub fn build() -> Result<PathBuf> {
    ensure_ebpf_toolchain()?;
    step("building lb-ebpf (bpfel-unknown-none, BTF, -Z build-std=core)");
    let root = workspace_root();
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(root.join("target/ebpf"))
        .current_dir(root.join("lb-ebpf"))
        // The outer (stable) cargo's settings must not leak into the nightly build.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Dwarnings",
        );
    run(&mut cmd)?;
    Ok(object_path())
}
