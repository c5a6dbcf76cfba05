//! Socket-level translation for the node's own processes (hostNetwork pods,
//! node agents), whose packets XDP never sees: the object's cgroup
//! `connect4`, `sendmsg4`, `recvmsg4` and `getpeername4` programs, and their
//! `*6` counterparts for IPv6 ClusterIPs. Attached to a cgroup v2
//! directory, they act on every process in it and below, whatever its
//! network namespace: the machine's root cgroup serves a whole node, and
//! each node of a one-machine testbed needs a cgroup of its own.
use std::{
    ffi::OsString,
    fs::File,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    programs::{
        links::{CgroupAttachMode, FdLink},
        CgroupSockAddr,
    },
    Ebpf,
};

use super::Datapath;

/// The socket programs, by their names in the object.
const PROGRAMS: [&str; 8] = [
    "connect4",
    "sendmsg4",
    "recvmsg4",
    "getpeername4",
    "connect6",
    "sendmsg6",
    "recvmsg6",
    "getpeername6",
];

pub(super) fn load(ebpf: &mut Ebpf) -> Result<()> {
    for name in PROGRAMS {
        program(ebpf, name)?
            .load()
            .with_context(|| format!("verifier rejected {name}"))?;
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()?)
}

/// Attaches the socket programs to the cgroup v2 directory `cgroup_dir`.
/// With `pin_dir`, each link is pinned there under its program's name, so
/// translation outlives this process, and replaces the link an earlier run
/// pinned there; without, the links live as long as this `Datapath`.
pub fn attach_cgroup(dp: &mut Datapath, cgroup_dir: &Path, pin_dir: Option<&Path>) -> Result<()> {
    let cgroup = File::open(cgroup_dir)
        .with_context(|| format!("opening cgroup {}", cgroup_dir.display()))?;
    if let Some(dir) = pin_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for name in PROGRAMS {
        let prog = program(&mut dp.ebpf, name)?;
        // A bpf_link always joins the cgroup's other programs and the kernel
        // takes no mode flag with it: `Single` is the one that sends none.
        let id = prog
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to cgroup {}", cgroup_dir.display()))?;
        let Some(dir) = pin_dir else {
            continue;
        };
        let link = FdLink::try_from(prog.take_link(id)?)
            .with_context(|| format!("kernel attached {name} without a bpf_link; cannot pin it"))?;
        // bpffs refuses names with a dot.
        let (pin, fresh) = (dir.join(name), dir.join(format!("{name}-new")));
        // Left by a run that died between pinning and renaming.
        let _ = std::fs::remove_file(&fresh);
        link.pin(&fresh)
            .with_context(|| format!("pinning the link of {name}"))?;
        // Replacing the old pin detaches the previous run's program only now,
        // so the two overlap for a moment rather than leave a gap. Harmless:
        // whichever runs second sees a backend address, never a frontend.
        std::fs::rename(&fresh, &pin).with_context(|| format!("replacing {}", pin.display()))?;
    }
    Ok(())
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a pure v2 system,
/// `/sys/fs/cgroup/unified` on a hybrid one, or anywhere else.
pub fn cgroup2_root() -> Option<PathBuf> {
    cgroup2_in(&std::fs::read_to_string("/proc/mounts").ok()?)
}

fn cgroup2_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(dir)))
    })
}

/// `/proc/mounts` writes space, tab, newline and backslash in a path as a
/// backslash and three octal digits.
fn unescape(field: &str) -> OsString {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(digits) => {
                out.push(digits.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')) as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_v1_hierarchies() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                      cgroup2 /run/my\\040cgroups cgroup2 rw,relatime 0 0\n";
        assert_eq!(cgroup2_in(mounts), Some(PathBuf::from("/run/my cgroups")));
        assert_eq!(cgroup2_in("proc /proc proc rw 0 0\n"), None);
    }
}
