//! Installs what the eBPF build needs, idempotently, saying what it does; or
//! stops with the exact command a person must run.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::ebpf::workspace_root;

pub fn ensure_ebpf_toolchain() -> Result<()> {
    if output("rustup", &["--version"]).is_err() {
        bail!(
            "rustup is not installed; install it with:\n  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y"
        );
    }
    let toolchains = output("rustup", &["toolchain", "list"])?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!("the nightly toolchain is missing; run:\n  rustup toolchain install nightly --component rust-src");
    }
    let components = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        step("adding rust-src to the nightly toolchain (build-std needs core's source)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    ensure_bpf_linker()?;
    ensure_bpftool()
}

fn llvm_major_of_nightly() -> Result<u32> {
    let vv = output("rustc", &["+nightly", "-vV"])?;
    let ver = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV printed no LLVM version")?;
    ver.split('.')
        .next()
        .unwrap_or("")
        .parse()
        .context("unparsable LLVM version")
}

/// The LLVM major the installed bpf-linker was linked against, read from its
/// dynamic dependencies (it links the toolchain's libLLVM.so.<major>...).
fn llvm_major_of_bpf_linker() -> Option<u32> {
    let path = output("sh", &["-c", "command -v bpf-linker"]).ok()?;
    let ldd = Command::new("ldd").arg(path.trim()).output().ok()?;
    let text = String::from_utf8_lossy(&ldd.stdout);
    let rest = text.split("libLLVM").nth(1)?;
    let digits: String = rest
        .trim_start_matches(['.', '-', 's', 'o'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn ensure_bpf_linker() -> Result<()> {
    let want = llvm_major_of_nightly()?;
    match llvm_major_of_bpf_linker() {
        Some(have) if have == want => return Ok(()),
        Some(have) => step(&format!(
            "reinstalling bpf-linker: it links LLVM {have}, the nightly uses LLVM {want}"
        )),
        None => step(&format!(
            "installing bpf-linker against the nightly's LLVM {want}"
        )),
    }
    let sysroot = PathBuf::from(output("rustc", &["+nightly", "--print", "sysroot"])?.trim());
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{want}")))
        })
        .with_context(|| format!("no libLLVM.so.{want}* in {}", sysroot.display()))?;
    let prefix = workspace_root().join("target/llvm-prefix");
    let link = prefix.join("lib/libLLVM.so");
    std::fs::create_dir_all(link.parent().unwrap())?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)?;
    run(Command::new("cargo")
        .args([
            "install",
            "--force",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{want}"))
        .env("LLVM_PREFIX", &prefix))
    .context("cargo install bpf-linker failed")
}

fn ensure_bpftool() -> Result<()> {
    if output("sh", &["-c", "command -v bpftool"]).is_ok() {
        return Ok(());
    }
    let root = unsafe { libc_geteuid() } == 0;
    if !root || !Path::new("/etc/debian_version").exists() {
        bail!("bpftool is missing; install it with:\n  sudo apt-get install -y bpftool");
    }
    step("installing bpftool from Debian (apt-get install -y bpftool)");
    run(Command::new("apt-get").args(["install", "-y", "bpftool"]))
        .or_else(|_| {
            run(Command::new("apt-get").arg("update"))?;
            run(Command::new("apt-get").args(["install", "-y", "bpftool"]))
        })
        .context("apt-get install bpftool failed")
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn is_root() -> bool {
    unsafe { libc_geteuid() == 0 }
}

pub fn step(what: &str) {
    eprintln!("xtask: {what}");
}

pub fn output(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
