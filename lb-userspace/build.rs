//! Embeds the eBPF object built by `cargo xtask build-ebpf`, and refuses to
//! embed one older than its sources: a stale data plane must never ship
//! silently. (The build is not run from here because a nested cargo on the
//! nightly toolchain inside a stable build would contend for the same locks
//! and hide the bootstrap's messages.)
use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

fn newest(path: &Path) -> SystemTime {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if !meta.is_dir() {
        return meta.modified().expect("mtime");
    }
    std::fs::read_dir(path)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| newest(&e.path()))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let object = root.join("target/ebpf/bpfel-unknown-none/release/lb-ebpf");
    let sources = [
        root.join("lb-ebpf/src"),
        root.join("lb-ebpf/Cargo.toml"),
        root.join("lb-common/src"),
        root.join("lb-common/Cargo.toml"),
    ];
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    println!("cargo:rerun-if-changed={}", object.display());
    let Ok(meta) = std::fs::metadata(&object) else {
        panic!(
            "the eBPF object {} is missing: run `cargo xtask build-ebpf` first",
            object.display()
        );
    };
    let built = meta.modified().expect("mtime");
    if let Some(src) = sources.iter().find(|s| newest(s) > built) {
        panic!(
            "the eBPF object {} is older than {}: run `cargo xtask build-ebpf`",
            object.display(),
            src.display()
        );
    }
    println!("cargo:rustc-env=LB_EBPF_OBJECT={}", object.display());
}
