//! Processes in a node's own network namespace.
use super::*;

/// The node client's bound: 16 requests of at most 2 s each would be 32 s;
/// a working path answers them in milliseconds.
const HOST_CLIENT_BOUND: Duration = Duration::from_secs(10);

/// Issue 4: processes of the node itself (hostNetwork pods, node agents)
/// reach ClusterIPs. XDP never sees their packets, so this needs the
/// agent's cgroup socket hooks, on the node's own cgroup (`--cgroup-path`).
pub(super) fn host_process(bed: &mut Bed) -> Result<Verdict> {
    let result = host_process_steps(bed);
    if bed.host_hooks {
        return result;
    }
    Ok(Verdict::NotYetSupported(match result {
        Ok(_) => "`xdplb agent --help` lists no --cgroup-path, yet the scenario passed".into(),
        Err(err) => format!(
            "`xdplb agent --help` lists no --cgroup-path (expected to fail; it did: {err:#})"
        ),
    }))
}

fn host_process_steps(bed: &mut Bed) -> Result<Verdict> {
    let web = bed.vip("web", 0)?;
    let dns = bed.vip("dns", 1)?;
    for node in bed.node_names() {
        let cgroup = bed
            .cluster
            .run
            .cgroup(&node)
            .context("cgroup v2 is not mounted: the nodes have no cgroups of their own")?;
        let tcp = node_client(bed, &node, Proto::Tcp, web, 16)?;
        answered_by(
            &format!("{node} (its own namespace) -> {web}"),
            &tcp,
            &["web-1", "web-2"],
        )?;
        let udp = node_client(bed, &node, Proto::Udp, dns, 4)?;
        for (who, from) in &udp {
            ensure!(
                who.port == 8054 && *from == dns,
                "{node} -> {dns}/udp: {who}, the reply came from {from} rather than the ClusterIP"
            );
        }
        let peers: std::collections::BTreeSet<String> = tcp
            .iter()
            .map(|w| format!("{} saw {}", w.pod, w.peer.ip()))
            .collect();
        note(format!(
            "{node} (cgroup {}): {web} reached both pods ({}); {dns}/udp answered from the ClusterIP",
            cgroup.display(),
            peers.into_iter().collect::<Vec<_>>().join(", ")
        ));
        // kube-proxy serves NodePorts on localhost to the node's processes,
        // in IPv4 only.
        if !bed.family.is_v6() {
            let port = bed.node_port("np-cluster", 0, &node)?.port();
            let localhost = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port);
            let answers: Vec<Who> = node_client(bed, &node, Proto::Tcp, localhost, 16)?;
            answered_by(
                &format!("{node} (its own namespace) -> {localhost}"),
                &answers,
                &["web-1", "web-2"],
            )?;
            note(format!(
                "{node}: the NodePort on {localhost} reached both pods"
            ));
        }
    }
    Ok(Verdict::Pass)
}

/// Runs `e2e-probe who` as a process of `node`: its namespace and cgroup.
fn node_client<T: NodeAnswer>(
    bed: &Bed,
    node: &str,
    proto: Proto,
    target: SocketAddr,
    count: usize,
) -> Result<Vec<T>> {
    let mut command = bed.cluster.node_command(node, &bed.bin.join("e2e-probe"))?;
    command
        .args([
            "who",
            &proto.to_string(),
            &target.to_string(),
            &count.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (ok, stdout, stderr) = run_bounded(command, HOST_CLIENT_BOUND)?;
    let answers: Vec<Result<T>> = stdout.lines().map(T::parse).collect();
    if !ok || answers.iter().any(Result::is_err) {
        let explain = bed.explain(
            node,
            SocketAddr::new(bed.node_addr(node)?, 40000),
            target,
            proto,
        );
        bail!(
            "{node} -> {target}/{proto} from the node's own namespace and cgroup:\n{}{}\n      \
             xdplb explain on {node}: {}",
            indent(&stdout),
            indent(&stderr),
            explain.trim()
        );
    }
    answers.into_iter().collect()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("        {l}\n")).collect()
}

/// An answer line of `e2e-probe who`.
trait NodeAnswer: Sized {
    fn parse(line: &str) -> Result<Self>;
}

impl NodeAnswer for Who {
    fn parse(line: &str) -> Result<Self> {
        Who::parse(line)
    }
}

/// A UDP answer and the source address the socket layer reported.
impl NodeAnswer for (Who, SocketAddr) {
    fn parse(line: &str) -> Result<Self> {
        let from = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("from="))
            .with_context(|| format!("no from= in {line:?}"))?
            .parse()?;
        Ok((Who::parse(line)?, from))
    }
}

/// Runs `command`, killing it after `bound`; returns whether it succeeded
/// and its output.
fn run_bounded(mut command: Command, bound: Duration) -> Result<(bool, String, String)> {
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= bound {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (stdout, mut stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    if status.is_none() {
        stderr += &format!("(killed after {} s)\n", bound.as_secs());
    }
    Ok((status.is_some_and(|s| s.success()), stdout, stderr))
}
