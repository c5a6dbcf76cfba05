//! Hosts built from network namespaces, for tests and the demo.
//!
//! A [`Testbed`] owns every namespace it creates and the processes it
//! spawns, and removes them on drop (also while a test unwinds). Namespace
//! names are `<prefix>-<name>` with a prefix unique per testbed and encoding
//! the owning pid, so parallel runs never collide and a killed run's
//! leftovers can be recognised and removed by the next one
//! ([`cleanup_leftovers`]).
//!
//! Links are created directly inside their namespaces and keep the names the
//! caller chose: interface names are per namespace, so they cannot collide
//! across runs, and nothing is ever created in or routed from the root
//! namespace.

mod named;

use std::ffi::c_int;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

pub use named::{add_ns, addr, exec, in_netns, route, sysctls, up, veth};
pub(crate) use named::{ip, NETNS_DIR};

const TAG: &str = "xl";
/// Width of the base-36 pid in a prefix; fits PID_MAX_LIMIT (2^22).
const PID_DIGITS: usize = 5;
/// `exec` is for short commands; a hung one must fail the test, not stall it.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long drop waits for a killed child to die before giving up on it.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

static NEXT_TESTBED: AtomicU32 = AtomicU32::new(0);

/// A network namespace created by a [`Testbed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ns {
    name: String,
}

impl Ns {
    /// Full name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Guard owning namespaces and background processes; drop removes them.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    namespaces: Mutex<Vec<Ns>>,
    /// pidfds rather than pids: callers get the `Child` and may reap it, after
    /// which its pid could be reused by an unrelated process.
    children: Mutex<Vec<OwnedFd>>,
}

impl Testbed {
    /// Starts an empty testbed, first removing leftovers of dead runs.
    pub fn new() -> Result<Self> {
        cleanup_leftovers()?;
        let prefix = format!(
            "{TAG}{:0>PID_DIGITS$}{}",
            base36(std::process::id().into()),
            base36(NEXT_TESTBED.fetch_add(1, Ordering::Relaxed).into())
        );
        Ok(Self {
            prefix,
            namespaces: Mutex::default(),
            children: Mutex::default(),
        })
    }

    /// Creates namespace `<prefix>-<name>` with `lo` up.
    pub fn add_ns(&self, name: &str) -> Result<Ns> {
        let ns = Ns {
            name: format!("{}-{name}", self.prefix),
        };
        ip(&["netns", "add", &ns.name])?;
        lock(&self.namespaces).push(ns.clone());
        self.up(&ns, "lo")?;
        Ok(ns)
    }

    /// Creates a veth pair whose ends are born inside `ns_a` and `ns_b`.
    pub fn veth(&self, ns_a: &Ns, if_a: &str, ns_b: &Ns, if_b: &str) -> Result<()> {
        veth(&ns_a.name, if_a, &ns_b.name, if_b)
    }

    /// Adds `cidr` (e.g. `10.0.0.1/24`) to interface `ifname` of `ns`.
    pub fn addr(&self, ns: &Ns, ifname: &str, cidr: &str) -> Result<()> {
        addr(&ns.name, ifname, cidr)
    }

    /// Removes `cidr` from interface `ifname` of `ns`.
    pub fn del_addr(&self, ns: &Ns, ifname: &str, cidr: &str) -> Result<()> {
        ip(&["-n", &ns.name, "addr", "del", cidr, "dev", ifname]).map(drop)
    }

    /// Sets interface `ifname` of `ns` up.
    pub fn up(&self, ns: &Ns, ifname: &str) -> Result<()> {
        up(&ns.name, ifname)
    }

    /// Adds a route to `ns`; `spec` is what follows `ip route add`, e.g.
    /// `"10.1.0.0/24 via 10.0.0.1"` or `"default via 10.0.0.1"`.
    pub fn route(&self, ns: &Ns, spec: &str) -> Result<()> {
        route(&ns.name, spec)
    }

    /// Sets sysctl `key` (e.g. `net.ipv4.ip_forward`) inside `ns`.
    pub fn sysctl(&self, ns: &Ns, key: &str, value: &str) -> Result<()> {
        sysctls(&ns.name, &[&format!("{key}={value}")])
    }

    /// Runs `cmd` inside `ns` and collects its output; a non-zero exit is
    /// returned, not an error. Fails if it runs longer than 30 s.
    pub fn exec(&self, ns: &Ns, cmd: &str, args: &[&str]) -> Result<Output> {
        let secs = EXEC_TIMEOUT.as_secs().to_string();
        let what = || format!("`{cmd} {}` in {}", args.join(" "), ns.name);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "timeout",
                "--kill-after=5",
                &secs,
                cmd,
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", what()))?;
        // `timeout` exits 124 after stopping the command, 137 if that took
        // SIGKILL (also a command killed otherwise; rare enough to share).
        if matches!(out.status.code(), Some(124 | 137)) {
            bail!("{} timed out after {secs} s", what());
        }
        Ok(out)
    }

    /// Starts `cmd` in the background inside `ns`, with stdin closed and
    /// stdout/stderr inherited. Drop kills it if it still runs.
    pub fn spawn(&self, ns: &Ns, cmd: &str, args: &[&str]) -> Result<Child> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, cmd])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning `{cmd} {}` in {}", args.join(" "), ns.name))?;
        // SAFETY: plain syscall; the child is unreaped until we return it, so
        // its pid is still ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            // Untracked it would outlive the testbed.
            let _ = child.kill();
            let _ = child.wait();
            return Err(err).context("pidfd_open on spawned child");
        }
        // SAFETY: the kernel just handed us this descriptor; nothing else owns it.
        lock(&self.children).push(unsafe { OwnedFd::from_raw_fd(fd as c_int) });
        Ok(child)
    }

    /// Index of interface `ifname` inside `ns`.
    pub fn ifindex(&self, ns: &Ns, ifname: &str) -> Result<u32> {
        let out = ip(&["-n", &ns.name, "-o", "link", "show", "dev", ifname])?;
        // One line like `7: veth0@if6: <BROADCAST,...`.
        out.split(':')
            .next()
            .and_then(|index| index.trim().parse().ok())
            .with_context(|| format!("unexpected `ip link show` output: {out:?}"))
    }

    /// Runs `f` on a fresh thread that has joined `ns`, and returns its value.
    /// Sockets created in `f` stay in `ns` wherever they are used later; the
    /// calling thread never changes namespace. A panic in `f` propagates.
    pub fn in_ns<T, F>(&self, ns: &Ns, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        in_netns(&ns.name, f)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Children first: a namespace lives on while a process is inside it.
        for pidfd in self
            .children
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            kill(&pidfd);
        }
        let namespaces = self
            .namespaces
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for ns in namespaces.drain(..).rev() {
            if let Err(err) = ip(&["netns", "del", &ns.name]) {
                tracing::warn!("testbed cleanup: {err:#}");
            }
        }
    }
}

/// SIGKILLs the process behind `pidfd` and waits, bounded, for it to exit.
/// It is deliberately not reaped, so the caller's `Child` stays valid.
fn kill(pidfd: &OwnedFd) {
    let fd = pidfd.as_raw_fd();
    // SAFETY: plain syscalls on a descriptor we own.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if sent != 0 {
        return; // ESRCH: already reaped by the caller.
    }
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut poll, 1, KILL_TIMEOUT.as_millis() as c_int) } != 1 {
        tracing::warn!("testbed cleanup: spawned child survived SIGKILL for {KILL_TIMEOUT:?}");
    }
}

/// Removes namespaces left by testbeds whose process is gone (e.g. a run
/// killed before drop). Namespaces of live processes are never touched.
pub fn cleanup_leftovers() -> Result<()> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        entries => entries.with_context(|| format!("listing {NETNS_DIR}"))?,
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if owner_pid(&name).is_some_and(|pid| !alive(pid)) {
            tracing::info!("removing leftover namespace {name}");
            // Failure is fine when a concurrent run removed it first.
            if let Err(err) = ip(&["netns", "del", &name]) {
                tracing::warn!("{err:#}");
            }
        }
    }
    Ok(())
}

/// Fails, naming `tier` and what is missing, unless this process can build
/// testbeds. Tests must treat the error as a failure, never as a skip.
pub fn require_root(tier: &str) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "{tier} tests need root (effective uid 0) to create network namespaces, \
         but run as uid {euid}; rerun them with sudo"
    );
    ip(&["netns", "list"])
        .map(drop)
        .with_context(|| format!("{tier} tests need a working `ip netns` (iproute2)"))
}

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        thread::sleep(left.min(Duration::from_millis(10)));
    }
}

/// The pid encoded in a testbed namespace name, `None` for other names.
fn owner_pid(ns_name: &str) -> Option<libc::pid_t> {
    let (prefix, _) = ns_name.strip_prefix(TAG)?.split_once('-')?;
    let base36_only = prefix
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    // The counter after the pid has at least one digit.
    if prefix.len() <= PID_DIGITS || !base36_only {
        return None;
    }
    libc::pid_t::from_str_radix(&prefix[..PID_DIGITS], 36).ok()
}

fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub(crate) fn base36(mut n: u64) -> String {
    let mut digits = Vec::new();
    loop {
        let digit = (n % 36) as u32;
        digits.push(char::from_digit(digit, 36).expect("digit below radix"));
        n /= 36;
        if n == 0 {
            return digits.iter().rev().collect();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_round_trips_the_pid() {
        let name = format!(
            "{TAG}{:0>PID_DIGITS$}{}-host",
            base36(4_194_304),
            base36(40)
        );
        assert_eq!(owner_pid(&name), Some(4_194_304));
        assert_eq!(owner_pid("xl0000a-host"), None, "counter missing");
        assert_eq!(owner_pid("xlab-cd"), None);
        assert_eq!(owner_pid("other"), None);
    }
}
