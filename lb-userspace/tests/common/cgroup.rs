//! A cgroup v2 directory of a test's own for the agent's socket programs.
//! Without one the agent attaches them at the cgroup root, where they
//! would act on every process of the machine, other tests' clients
//! included, whose VIPs overlap.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{ensure, Context, Result};

const PREFIX: &str = "xdplb-test-cgroup-";

/// Bind-mounted under /run (read-only if asked) where the agent sees it:
/// `ip netns exec` remounts /sys, cgroup mounts and all. Drop unmounts and
/// removes it.
pub struct Cgroup {
    dir: PathBuf,
    mount: PathBuf,
}

impl Cgroup {
    pub fn new(read_only: bool) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = lb_userspace::datapath::cgroup2_root()
            .context("no cgroup v2 mount in /proc/mounts: the socket programs attach to one")?;
        remove_leftovers(&root);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cgroup = Self {
            dir: root.join(&name),
            mount: Path::new("/run").join(&name),
        };
        fs::create_dir_all(&cgroup.dir)?;
        fs::create_dir_all(&cgroup.mount)?;
        let mut mounts = vec![vec!["--bind"]];
        if read_only {
            mounts.push(vec!["-o", "remount,bind,ro"]);
        }
        for how in mounts {
            let out = Command::new("mount")
                .args(how)
                .arg(&cgroup.dir)
                .arg(&cgroup.mount)
                .output()?;
            ensure!(out.status.success(), "mount: {out:?}");
        }
        Ok(cgroup)
    }

    /// Where the agent sees it, inside `ip netns exec`.
    pub fn path(&self) -> &str {
        self.mount.to_str().expect("a UTF-8 path")
    }

    /// The cgroup itself, for processes of the test's own mount namespace.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = fs::remove_dir(&self.mount);
        // A client reaped a moment ago may still count as a member briefly.
        for _ in 0..100 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        eprintln!("cannot remove cgroup {}", self.dir.display());
    }
}

/// Those of killed runs, recognised by a dead pid in their name.
fn remove_leftovers(root: &Path) {
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let mount = Path::new("/run").join(&name);
            let _ = Command::new("umount").arg(&mount).status();
            let _ = fs::remove_dir(&mount);
            let _ = fs::remove_dir(entry.path());
        }
    }
}
