//! A run's names and files: its directory under `/run/xdplb-demo/<id>`
//! (bpffs, manifests, logs, the owner), its namespaces `xdd-<id>-<role>`,
//! and the teardown of runs whose owner is gone. A run records its owner
//! process, so the next run can tell a killed run's leftovers from a live
//! or `--keep`-ed cluster.
use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{ensure, Context, Result};

use super::cgroup::{cgroup2_root, remove_cgroup, run_cgroup, STATE_CGROUP};
use crate::{
    command::output,
    control_plane::Pod,
    netns::{base36, ip, NETNS_DIR},
};

const STATE_ROOT: &str = "/run/xdplb-demo";
const NS_TAG: &str = "xdd";
/// Present in a run's directory once `--keep` handed the cluster to the user.
pub(super) const KEPT_MARKER: &str = "kept";
const OWNER_FILE: &str = "owner";

/// One run's names and files.
pub struct Run {
    pub id: String,
    pub dir: PathBuf,
}

impl Run {
    pub fn ns(&self, role: &str) -> String {
        format!("{NS_TAG}-{}-{role}", self.id)
    }

    pub(super) fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    pub fn pin_path(&self, node: &str) -> PathBuf {
        self.bpffs().join(node)
    }

    pub fn manifests(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("manifests")
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The cgroup v2 directory of `node`'s own processes, if cgroup v2 is
    /// mounted, by a path that is the same inside `ip netns exec`.
    pub fn cgroup(&self, node: &str) -> Option<PathBuf> {
        cgroup2_root()?;
        Some(self.cgroups().join(node))
    }

    pub(super) fn cgroups(&self) -> PathBuf {
        self.dir.join("cgroup")
    }

    /// The cgroup of `pod`'s processes, if cgroup v2 is mounted: below its
    /// node's, as the kubelet puts it, or outside every node's.
    pub(super) fn pod_cgroup(&self, pod: &Pod, in_hook_cgroup: bool) -> Option<PathBuf> {
        let parent = if in_hook_cgroup {
            self.cgroup(&pod.node)?.join("kubepods")
        } else {
            cgroup2_root()?;
            self.cgroups().join("outside")
        };
        Some(parent.join(&pod.name))
    }

    pub(super) fn log(&self, what: &str) -> PathBuf {
        self.logs().join(format!("{what}.log"))
    }
}

/// Removes the clusters of runs whose process is gone without `--keep`;
/// returns their ids.
pub fn cleanup_leftovers() -> Result<Vec<String>> {
    remove_runs(|kept| !kept)
}

/// Removes kept clusters as well as leftovers; returns their ids. Runs still
/// in progress are left alone.
pub fn down() -> Result<Vec<String>> {
    remove_runs(|_| true)
}

fn remove_runs(remove_if_kept: impl Fn(bool) -> bool) -> Result<Vec<String>> {
    let mut ids: Vec<String> = list(Path::new(STATE_ROOT))?;
    // A namespace whose run directory is gone belongs to a dead run too.
    ids.extend(list(Path::new(NETNS_DIR))?.iter().filter_map(|name| {
        let (id, _) = name
            .strip_prefix(NS_TAG)?
            .strip_prefix('-')?
            .split_once('-')?;
        Some(id.to_owned())
    }));
    if let Some(cgroups) = cgroup2_root() {
        let parent = cgroups.join(STATE_CGROUP);
        // Runs are the directories; the rest are the cgroup's own files.
        ids.extend(
            list(&parent)?
                .into_iter()
                .filter(|name| parent.join(name).is_dir()),
        );
    }
    ids.sort();
    ids.dedup();
    let mut removed = Vec::new();
    for id in ids {
        let dir = Path::new(STATE_ROOT).join(&id);
        if owner_alive(&dir) || !remove_if_kept(dir.join(KEPT_MARKER).exists()) {
            continue;
        }
        teardown(&id)?;
        removed.push(id);
    }
    Ok(removed)
}

/// Kills every process in the run's namespaces, deletes them, unmounts the
/// bpffs (which drops the pinned maps and XDP links) and removes the files.
pub(super) fn teardown(id: &str) -> Result<()> {
    let prefix = format!("{NS_TAG}-{id}-");
    let namespaces: Vec<String> = list(Path::new(NETNS_DIR))?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    let pids = |ns: &str| -> Vec<i32> {
        ip(&["netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    for ns in &namespaces {
        for pid in pids(ns) {
            // SAFETY: plain syscall; the pid was just listed as inside a
            // namespace of this run.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // A namespace lives on while a process is inside it.
    let deadline = SystemTime::now() + Duration::from_secs(5);
    while namespaces.iter().any(|ns| !pids(ns).is_empty()) && SystemTime::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    for ns in &namespaces {
        ip(&["netns", "del", ns])?;
        remove_dir(&Path::new("/etc/netns").join(ns))?;
    }
    let dir = Path::new(STATE_ROOT).join(id);
    if let Some(cgroup) = run_cgroup(id) {
        remove_cgroup(&cgroup, &dir.join("cgroup"))?;
    }
    let bpffs = dir.join("bpffs");
    if is_mountpoint(&bpffs)? {
        run(Command::new("umount").arg(&bpffs))?;
    }
    remove_dir(&dir)
}

/// Creates the run's directory first, so a run killed at any later point
/// is recognised by the next one.
pub(super) fn new_run() -> Result<Run> {
    let pid = std::process::id();
    let secs = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let id = format!("{}{}", base36(u64::from(pid)), base36(secs % 36u64.pow(3)));
    let dir = Path::new(STATE_ROOT).join(&id);
    ensure!(!dir.exists(), "{} exists already", dir.display());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = start_time(pid).context("reading this process's start time")?;
    fs::write(dir.join(OWNER_FILE), format!("{pid} {started}\n"))?;
    Ok(Run { id, dir })
}

/// Whether the process that created the run still runs; the start time
/// tells it from a later process given the same pid.
fn owner_alive(dir: &Path) -> bool {
    let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
        return false;
    };
    let mut fields = owner.split_whitespace();
    let (Some(pid), Some(started)) = (fields.next(), fields.next()) else {
        return false;
    };
    pid.parse()
        .ok()
        .and_then(start_time)
        .is_some_and(|now| now.to_string() == started)
}

/// Field 22 of /proc/<pid>/stat, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in field 2 may hold spaces; it ends at the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

pub(super) fn run(command: &mut Command) -> Result<()> {
    output(command).map(drop)
}

pub(super) fn list(dir: &Path) -> Result<Vec<String>> {
    match fs::read_dir(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        entries => entries
            .with_context(|| format!("listing {}", dir.display()))?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect(),
    }
}

pub(super) fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

pub(super) fn is_mountpoint(path: &Path) -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    let path = path.to_string_lossy();
    Ok(mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(path.as_ref())))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_its_own_live_owner() {
        let dir = std::env::temp_dir().join(format!("xdd-owner-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let pid = std::process::id();
        fs::write(
            dir.join(OWNER_FILE),
            format!("{pid} {}", start_time(pid).unwrap()),
        )
        .unwrap();
        assert!(owner_alive(&dir));
        fs::write(dir.join(OWNER_FILE), format!("{pid} 1")).unwrap();
        assert!(!owner_alive(&dir), "same pid, other start time");
        fs::remove_dir_all(&dir).unwrap();
    }
}
