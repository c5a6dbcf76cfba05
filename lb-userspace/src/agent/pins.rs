//! Where the agent pins its state: `<pin-path>/v<layout>/maps/<MAP>` and
//! `<pin-path>/v<layout>/links/<ifname>`. A new layout version gets a new
//! directory; the old one is removed once the new data plane is live.
use std::{
    ffi::CString,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use lb_common::LAYOUT_VERSION;

/// BPF_FS_MAGIC from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub struct Layout {
    root: PathBuf,
}

/// The pin path held by this process until it exits: a second agent there
/// would take over the links and overwrite the Service ids of the first.
pub struct Lock {
    _dir: File,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn version_dir(&self) -> PathBuf {
        self.root.join(format!("v{LAYOUT_VERSION}"))
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.version_dir().join("maps")
    }

    pub fn link(&self, ifname: &str) -> PathBuf {
        self.version_dir().join("links").join(ifname)
    }

    /// The tcx link of `ifname` (kernels without tcx keep a cls_bpf filter,
    /// which needs no pin).
    pub fn tc_link(&self, ifname: &str) -> PathBuf {
        self.version_dir().join("tc").join(ifname)
    }

    /// Pinning only survives a restart on a bpffs; anywhere else the kernel
    /// refuses it, and a bpffs mounted in a private mount namespace (as
    /// `ip netns exec` makes) vanishes with the process.
    pub fn check_bpffs(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating pin path {}", self.root.display()))?;
        let c = CString::new(self.root.as_os_str().as_encoded_bytes())?;
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("statfs {}", self.root.display()));
        }
        if st.f_type as i64 != BPF_FS_MAGIC {
            bail!(
                "pin path {} is not on a bpffs: mount one (mount -t bpf bpf {}) or pass --pin-path under /sys/fs/bpf",
                self.root.display(),
                self.root.display()
            );
        }
        Ok(())
    }

    /// Takes the pin path for this process alone, or fails at once naming
    /// the process that holds it.
    ///
    /// bpffs refuses regular files, so the lock is a flock on the pin path
    /// directory itself. Being on the bpffs, it is the same lock in every
    /// mount namespace sharing that bpffs (the DaemonSet's container and an
    /// operator's shell on the host), which a file under /run would not be.
    pub fn lock(&self) -> Result<Lock> {
        let dir = File::open(&self.root)
            .with_context(|| format!("opening pin path {}", self.root.display()))?;
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(err).with_context(|| format!("locking {}", self.root.display()));
            }
            let holder = flock_holder(&dir)
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            bail!(
                "pin path {} is in use by a running xdplb agent{holder}: stop it first (each agent needs a --pin-path of its own)",
                self.root.display()
            );
        }
        // --cleanup removes the directory while holding its lock; a lock on
        // a removed directory would guard nothing.
        let (locked, now) = (dir.metadata()?, std::fs::metadata(&self.root));
        if !now.is_ok_and(|m| (m.dev(), m.ino()) == (locked.dev(), locked.ino())) {
            bail!(
                "pin path {} was removed while being locked: start again",
                self.root.display()
            );
        }
        Ok(Lock { _dir: dir })
    }

    /// Directories of other layout versions.
    fn other_versions(&self) -> Result<Vec<PathBuf>> {
        let current = format!("v{LAYOUT_VERSION}");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != current && name.starts_with('v') && name[1..].parse::<u32>().is_ok() {
                out.push(entry.path());
            }
        }
        Ok(out)
    }

    /// Moves the link pins an agent of another layout left for `ifname`
    /// into this layout's directories, where attaching updates them in
    /// place (bpf_link_update: no packet meets an interface without a
    /// program). Left where they were, they would hold the interface, and
    /// a new XDP attachment there fails with "File exists".
    pub fn adopt_links(&self, ifname: &str) -> Result<()> {
        for (kind, current) in [("links", self.link(ifname)), ("tc", self.tc_link(ifname))] {
            if current.exists() {
                continue;
            }
            for dir in self.other_versions()? {
                let old = dir.join(kind).join(ifname);
                if !old.exists() {
                    continue;
                }
                std::fs::create_dir_all(current.parent().expect("pin in a directory"))?;
                std::fs::rename(&old, &current).with_context(|| {
                    format!("moving {} to {}", old.display(), current.display())
                })?;
                tracing::info!(%ifname, from = %old.display(), "taking over a link of an older layout");
                break;
            }
        }
        Ok(())
    }

    /// Removes directories of other layout versions.
    pub fn remove_old_versions(&self) -> Result<()> {
        for dir in self.other_versions()? {
            tracing::info!(dir = %dir.display(), "removing data plane of an older layout");
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }

    /// Unpins everything: links detach when their last reference goes, maps
    /// are freed once no program uses them.
    pub fn cleanup(&self) -> Result<()> {
        if !self.root.exists() {
            return Ok(());
        }
        for entry in std::fs::read_dir(&self.root)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if name.starts_with('v') && name[1..].parse::<u32>().is_ok() {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        // The pin path may be a bpffs mount point itself, which also holds the
        // kernel's maps.debug and progs.debug: then it stays.
        let _ = std::fs::remove_dir(&self.root);
        tracing::info!(path = %self.root.display(), "removed pinned links and maps");
        Ok(())
    }
}

/// The pid holding a flock on `file`, from /proc/locks; None when no lock
/// shows there or its holder is outside this pid namespace (pid 0).
pub(crate) fn flock_holder(file: &File) -> Option<u32> {
    let m = file.metadata().ok()?;
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(m.dev()),
        libc::minor(m.dev()),
        m.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // A waiter's line has a "->" after the number; LOCK_NB leaves none,
        // but another tool may wait.
        let fields: Vec<&str> = line.split_whitespace().filter(|f| *f != "->").collect();
        match fields.as_slice() {
            [_, "FLOCK", _, "WRITE", pid, dev_ino, ..] if *dev_ino == id => {
                pid.parse().ok().filter(|&pid| pid > 0)
            }
            _ => None,
        }
    })
}
