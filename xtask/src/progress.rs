//! A line per step, saying what it does and, once done, how long it took;
//! waits for a cluster's agents and pods; and Ctrl-C turned into an error
//! the command unwinds from, so the cluster's teardown runs.
use std::{
    io::{IsTerminal, Write},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use testbed::{
    apps,
    cluster::Cluster,
    control_plane::{Pod, State},
};

/// Loading and verifying the programs takes about a second alone, and two
/// agents load at once; on a 2-core machine with builds beside them it
/// was seen to take 21 s.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
const POD_TIMEOUT: Duration = Duration::from_secs(10);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP only set a flag that
/// [`check_interrupt`] and [`wait_for`] turn into an error.
pub fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; the command removed what it had started");
    }
    Ok(())
}

pub struct Progress {
    started: Instant,
    step: usize,
    steps: usize,
    /// Whether a step's line is still open, waiting for its result.
    open: bool,
    tty: bool,
}

impl Progress {
    pub fn new(steps: usize) -> Self {
        Self {
            started: Instant::now(),
            step: 0,
            steps,
            open: false,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Runs one step. Steps whose commands print (`loud`) get their own
    /// line; the others are finished on the line that announced them.
    pub fn step<T>(&mut self, what: &str, loud: bool, f: impl FnOnce() -> Result<T>) -> Result<T> {
        check_interrupt()?;
        self.step += 1;
        let started = Instant::now();
        let (bold, reset) = if self.tty {
            ("\x1b[1m", "\x1b[0m")
        } else {
            ("", "")
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "{bold}[{}/{}]{reset} {what} ... ",
            self.step, self.steps
        );
        if loud {
            let _ = writeln!(err);
        }
        let _ = err.flush();
        drop(err);
        self.open = !loud;
        let result = f();
        let took = started.elapsed();
        let outcome = match &result {
            Ok(_) => format!("done ({})", seconds(took)),
            Err(_) if INTERRUPTED.load(Ordering::SeqCst) => "interrupted".to_owned(),
            Err(_) => format!("FAILED ({})", seconds(took)),
        };
        if self.open {
            eprintln!("{outcome}");
        } else {
            eprintln!("      {outcome}");
        }
        self.open = false;
        result
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

pub fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Polls `ready` every 50 ms until it returns true; fails when `check`
/// fails (say a process died), on Ctrl-C, or after `timeout`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<()>,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupt()?;
        check()?;
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: not ready after {}", seconds(timeout));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `node`'s agent serves the node and every pod `state`
/// places there.
pub fn wait_agent(cluster: &mut Cluster, state: &State, node: &str) -> Result<()> {
    let pods = state
        .pods
        .iter()
        .filter(|p| p.node == node)
        .map(|p| p.name.as_str());
    let serves = apps::agent_serves(&cluster.run, node, pods);
    wait_for(
        &format!("the agent on {node}"),
        AGENT_TIMEOUT,
        || cluster.check_processes(),
        serves,
    )
}

/// Waits until the pod's program serves.
pub fn wait_pod(cluster: &mut Cluster, pod: &Pod) -> Result<()> {
    let ready = apps::pod_ready(&cluster.run, pod);
    wait_for(
        &format!("pod {}", pod.name),
        POD_TIMEOUT,
        || cluster.check_processes(),
        ready,
    )
}
