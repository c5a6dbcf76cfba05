//! The processes of a cluster's nodes and pods: started in their namespace
//! and cgroup, logging to the run's files, watched and killed by label.
use std::{
    fs::{self, File},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{cgroup::join_cgroup, Cluster};
use crate::control_plane::Pod;

impl Cluster {
    /// Starts `program` as `pod`'s process, in its namespace and cgroup,
    /// logging to `<pod>.log`. It runs in its own process group: Ctrl-C is
    /// for the demo, which then tears it down, and a kept cluster's
    /// processes outlive the terminal's job.
    pub fn spawn(
        &mut self,
        pod: &Pod,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<()> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.run.ns(&pod.name)])
            .arg(program);
        if let Some(cgroup) = self.pod_cgroups.get(&pod.name) {
            join_cgroup(&mut command, cgroup)?;
        }
        self.start(command, &pod.name, args, env)
    }

    /// Starts `program` as a process of `node` itself: in the node's
    /// namespace and cgroup. Otherwise as [`Cluster::spawn`].
    pub fn spawn_on_node(
        &mut self,
        node: &str,
        label: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<()> {
        let command = self.node_command(node, program)?;
        self.start(command, label, args, env)
    }

    /// A command that runs `program` as a process of `node`: in its network
    /// namespace and, where there is one, its cgroup.
    pub fn node_command(&self, node: &str, program: &Path) -> Result<Command> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.run.ns(node)])
            .arg(program);
        if let Some(cgroup) = self.run.cgroup(node) {
            join_cgroup(&mut command, &cgroup)?;
        }
        Ok(command)
    }

    fn start(
        &mut self,
        mut command: Command,
        label: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<()> {
        let log_path = self.run.log(label);
        fs::create_dir_all(log_path.parent().expect("logs dir"))?;
        let log = File::create(&log_path)?;
        let child = command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        self.children.push((label.to_owned(), child));
        Ok(())
    }

    /// The pid of the process started as `label`, while it runs.
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, child)| child.id())
    }

    /// Kills the process started as `label` with SIGKILL and waits for it.
    pub fn kill(&mut self, label: &str) -> Result<()> {
        let mut child = self.take_child(label)?;
        // `ip netns exec` execs the program: this is its pid.
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Stops the process started as `label` with SIGTERM, as a kubelet or
    /// systemd stops a service, and waits up to `bound` for it to exit
    /// (then kills it and fails).
    pub fn terminate(&mut self, label: &str, bound: Duration) -> Result<ExitStatus> {
        let mut child = self.take_child(label)?;
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: a plain syscall; the pid is this process's child, not yet
        // waited for, so it names no other process.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("SIGTERM to {label}: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                child.kill()?;
                child.wait()?;
                bail!("{label} was still running {bound:?} after SIGTERM; killed");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process started as `label`, which the cluster no longer waits
    /// for.
    fn take_child(&mut self, label: &str) -> Result<Child> {
        let index = self
            .children
            .iter()
            .position(|(l, _)| l == label)
            .with_context(|| format!("no process {label}"))?;
        Ok(self.children.remove(index).1)
    }

    /// Fails, with the end of its log, if a started process has exited.
    pub fn check_processes(&mut self) -> Result<()> {
        for (label, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                let log = fs::read_to_string(self.run.log(label)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{label} exited ({status}); the end of {}:\n{}",
                    self.run.log(label).display(),
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }
}
