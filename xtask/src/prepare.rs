//! What the commands that build a cluster (demo, e2e, bench --testbed) do
//! first: check that this machine can run one, find redis-server, build the
//! programs, and remove what killed runs left.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use testbed::cluster;

use crate::{
    bootstrap::{is_root, run},
    ebpf::workspace_root,
};

/// Stops before anything is built when a cluster cannot run here.
pub fn preflight() -> Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask demo needs root: it creates network namespaces, mounts a bpffs and attaches XDP programs.\n\
             Run it as root, for example: sudo -E env \"PATH=$PATH\" cargo xtask demo"
        );
    }
    probe_bpf()?;
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => bail!("`ip netns` does not work here; install iproute2 (apt-get install -y iproute2)"),
    }
}

/// Creates and closes a one-entry BPF array: the cheapest proof that this
/// process may use bpf() at all.
fn probe_bpf() -> Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // map_type, key_size, value_size, max_entries; the rest of bpf_attr zero.
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_ARRAY, 4, 4, 1]);
    // SAFETY: attr is a zeroed bpf_attr of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "this kernel or sandbox does not allow BPF (bpf(BPF_MAP_CREATE) failed: {err}); \
             the demo needs bpf() and XDP, as root outside a restricted container"
        );
    }
    // SAFETY: the kernel just returned this descriptor to us.
    unsafe { libc::close(fd as libc::c_int) };
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("the kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); the data plane needs it");
    }
    Ok(())
}

/// Removes what killed runs of the demo or the suite left, naming them.
pub fn remove_leftovers() -> Result<()> {
    let removed = cluster::cleanup_leftovers()?;
    if !removed.is_empty() {
        eprint!("removed run {} ... ", removed.join(", "));
    }
    Ok(())
}

/// Debian's redis-server, installed when missing if this is Debian.
pub fn redis_server() -> Result<PathBuf> {
    let find = || {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .chain(["/usr/bin".into(), "/usr/sbin".into()])
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "redis-server is missing; install Redis (on Debian: apt-get install -y redis-server)"
        );
    }
    eprintln!("installing it (apt-get install -y redis-server)");
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "redis-server"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    install()
        .or_else(|_| {
            run(Command::new("apt-get").arg("update"))?;
            install()
        })
        .context("apt-get install -y redis-server failed")?;
    find().context("redis-server is still missing after apt-get install")
}

/// Builds the agent and xtask's programs `bins`; returns their directory.
pub fn build(bins: &[&str]) -> Result<PathBuf> {
    let root = workspace_root();
    run(Command::new("cargo")
        .args(["build", "-p", "lb-userspace", "-p", "xtask"])
        .args(["--bin", "xdplb"])
        .args(bins.iter().flat_map(|bin| ["--bin", bin]))
        .current_dir(&root))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), PathBuf::from);
    Ok(target.join("debug"))
}
