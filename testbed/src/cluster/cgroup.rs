//! The nodes' and pods' cgroups: an agent's socket-level hooks act on a
//! cgroup, not a network namespace, so each node needs its own
//! (`<cgroup2>/xdplb-demo/<id>/<node>`), with its pods' below it in
//! `kubepods/<pod>` as the kubelet places them. The run's cgroup is
//! bind-mounted at `<run>/cgroup`, because `ip netns exec` mounts a fresh
//! /sys for its command, without /sys/fs/cgroup.
use std::{
    ffi::CString,
    fs, io,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};

use super::{
    run::{is_mountpoint, list, run},
    Cluster,
};

impl Cluster {
    pub(super) fn make_cgroups(&self) -> Result<()> {
        let Some(cgroup) = run_cgroup(&self.run.id) else {
            return Ok(());
        };
        for node in &self.nodes {
            let dir = cgroup.join(&node.name);
            fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        let at = self.run.cgroups();
        fs::create_dir_all(&at)?;
        run(Command::new("mount").arg("--bind").arg(&cgroup).arg(&at))
    }

    /// Runs `f` with this whole process in `pod`'s cgroup, then moves it
    /// back. A socket belongs to the cgroup of the process that opens it,
    /// and the agent's socket-level hooks act by that cgroup: what `f`
    /// opens for the pod must look like the pod's own.
    pub fn as_pod<T>(&self, pod: &str, f: impl FnOnce() -> T) -> Result<T> {
        let Some(cgroup) = self.pod_cgroups.get(pod) else {
            return Ok(f());
        };
        let home = own_cgroup()?;
        move_self(cgroup)?;
        let out = f();
        move_self(&home)?;
        Ok(out)
    }
}

/// Where runs keep their nodes' cgroups, under the cgroup v2 root.
pub(super) const STATE_CGROUP: &str = "xdplb-demo";

/// The mount point of cgroup v2, if it is mounted.
pub(super) fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    })
}

pub(super) fn run_cgroup(id: &str) -> Option<PathBuf> {
    Some(cgroup2_root()?.join(STATE_CGROUP).join(id))
}

/// Removes a run's cgroup and every cgroup below it (nodes', pods') and
/// its bind mount `mounted`; then the parent if no other run uses it.
pub(super) fn remove_cgroup(dir: &Path, mounted: &Path) -> Result<()> {
    remove_cgroups_below(dir)?;
    // Before the run's directory goes: removing it through a mounted
    // cgroup would reach into the cgroup's files.
    if is_mountpoint(mounted)? {
        run(Command::new("umount").arg(mounted))?;
    }
    rmdir_cgroup(dir)?;
    if let Some(parent) = dir.parent() {
        // Fails while another run's cgroup is in it.
        let _ = fs::remove_dir(parent);
    }
    Ok(())
}

/// Removes the cgroups below `dir`, deepest first: rmdir takes only a
/// cgroup without children.
fn remove_cgroups_below(dir: &Path) -> Result<()> {
    for name in list(dir)? {
        let path = dir.join(name);
        if path.is_dir() {
            remove_cgroups_below(&path)?;
            rmdir_cgroup(&path)?;
        }
    }
    Ok(())
}

/// Removes one cgroup, once its processes are gone.
pub(super) fn rmdir_cgroup(dir: &Path) -> Result<()> {
    // A process killed a moment ago may still be leaving.
    let deadline = SystemTime::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if SystemTime::now() >= deadline => {
                return Err(err).with_context(|| format!("removing cgroup {}", dir.display()))
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
            Ok(()) => return Ok(()),
        }
    }
}

/// This process's cgroup v2 directory.
fn own_cgroup() -> Result<PathBuf> {
    let root = cgroup2_root().context("cgroup v2 is not mounted")?;
    let cgroups = fs::read_to_string("/proc/self/cgroup")?;
    let path = cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .context("/proc/self/cgroup has no cgroup v2 line")?;
    Ok(root.join(path.trim_start_matches('/')))
}

/// Moves this process, all its threads, into `cgroup`.
fn move_self(cgroup: &Path) -> Result<()> {
    let procs = cgroup.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("joining cgroup {}", cgroup.display()))
}

/// Makes `command` move itself into `cgroup` before it executes its
/// program, so the program and everything it starts belong to it.
pub(super) fn join_cgroup(command: &mut Command, cgroup: &Path) -> Result<()> {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())?;
    let join = move || -> io::Result<()> {
        // Only async-signal-safe calls between fork and exec.
        // SAFETY: a NUL-terminated path and a one-byte buffer; the
        // descriptor is closed before returning.
        unsafe {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0" moves the writing process.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
        }
        Ok(())
    };
    // SAFETY: `join` makes only async-signal-safe calls and allocates nothing.
    unsafe { command.pre_exec(join) };
    Ok(())
}
