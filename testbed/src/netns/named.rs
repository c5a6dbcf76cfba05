//! Namespaces and links addressed by their full names, for topologies that
//! must outlive the process that builds them (a kept demo cluster), which a
//! [`Testbed`](super::Testbed) would remove on drop. The testbed's methods
//! are these with ownership added.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::{io, thread};

use anyhow::{Context, Result};

use crate::command::{output, stdout};

pub(crate) const NETNS_DIR: &str = "/run/netns";

/// Creates namespace `name` with `lo` up.
pub fn add_ns(name: &str) -> Result<()> {
    ip(&["netns", "add", name])?;
    up(name, "lo")
}

/// Creates a veth pair whose ends are born inside `ns_a` and `ns_b`.
pub fn veth(ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> Result<()> {
    ip(&[
        "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
    ])
    .map(drop)
}

/// Adds `cidr` (e.g. `10.0.0.1/24`) to interface `ifname` of `ns`.
pub fn addr(ns: &str, ifname: &str, cidr: &str) -> Result<()> {
    let mut args = vec!["-n", ns, "addr", "add", cidr, "dev", ifname];
    // Without this an IPv6 address stays tentative for about two seconds
    // and binds to it fail.
    if cidr.contains(':') {
        args.push("nodad");
    }
    ip(&args).map(drop)
}

/// Sets interface `ifname` of `ns` up.
pub fn up(ns: &str, ifname: &str) -> Result<()> {
    ip(&["-n", ns, "link", "set", ifname, "up"]).map(drop)
}

/// Adds a route to `ns`; `spec` is what follows `ip route add`, e.g.
/// `"10.1.0.0/24 via 10.0.0.1"` or `"default via 10.0.0.1"`.
pub fn route(ns: &str, spec: &str) -> Result<()> {
    let mut args = vec!["-n", ns, "route", "add"];
    args.extend(spec.split_whitespace());
    ip(&args).map(drop)
}

/// Sets sysctls inside `ns`, each given as `key=value`.
pub fn sysctls(ns: &str, assignments: &[&str]) -> Result<()> {
    let mut args = vec!["netns", "exec", ns, "sysctl", "-qw"];
    args.extend(assignments);
    ip(&args).map(drop)
}

/// Runs `cmd` in `ns` and returns its stdout and stderr; fails on a
/// non-zero exit.
pub fn exec(ns: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, cmd]).args(args);
    let out = output(&mut command)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// Runs `f` on a fresh thread that has joined `ns`, and returns its value.
/// Sockets created in `f` stay in `ns` wherever they are used later; the
/// calling thread never changes namespace. A panic in `f` propagates.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let path = format!("{NETNS_DIR}/{ns}");
    thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let file = File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: valid fd; only this thread's network namespace changes.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let err = io::Error::last_os_error();
                return Err(err).with_context(|| format!("setns({path})"));
            }
            Ok(f())
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `ip` and returns its stdout; failures carry the command and stderr.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    stdout(Command::new("ip").args(args))
}
