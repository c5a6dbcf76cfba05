//! The agent restarting under a live connection.
use super::*;

/// The agent is killed with SIGKILL and restarted on the same pin path;
/// connections through node1 (from outside to a pod on the other node,
/// source-NATed; from a pod to pods on both nodes) keep working while it
/// is gone and after it is back.
pub(super) fn agent_restart(bed: &mut Bed) -> Result<Verdict> {
    let node = "node1";
    let outside = bed.outside();
    let client = bed.pod_client("client-1")?;
    let nodeport = bed.node_port("np-node2", 0, node)?;
    let mut conns = vec![
        (
            "outside -> NodePort (SNAT to node2)",
            bed.open(&outside, nodeport)?,
        ),
        (
            "client-1 -> web-node2",
            bed.open(&client, bed.vip("web-node2", 0)?)?,
        ),
        (
            "client-1 -> web-node1",
            bed.open(&client, bed.vip("web-node1", 0)?)?,
        ),
    ];
    let check_all = |conns: &mut Vec<(&str, crate::e2e::probe::Conn)>, when: &str| -> Result<()> {
        for (what, conn) in conns.iter_mut() {
            conn.check().with_context(|| format!("{what}, {when}"))?;
        }
        Ok(())
    };
    check_all(&mut conns, "before the restart")?;
    let label = bed.agents.get(node).context("no agent on node1")?.clone();
    bed.cluster.kill(&label)?;
    note(format!("killed {label} with SIGKILL"));
    check_all(&mut conns, "while the agent is gone")?;
    bed.ask(&outside, nodeport, Proto::Tcp)
        .context("a new connection while the agent is gone")?;
    // One restart per family: the label (and log) of each is its own.
    let label = format!("agent-{node}-restart-{}", bed.family);
    let t = Instant::now();
    apps::start_agent(&mut bed.cluster, node, &bed.bin, &label)?;
    bed.agents.insert(node.into(), label.clone());
    if let Err(err) = progress::wait_agent(&mut bed.cluster, &bed.state, node) {
        let without = match check_all(&mut conns, "with no agent running") {
            Ok(()) => "the data plane still serves the three connections with no agent".into(),
            Err(e) => format!("and the connections broke too: {e:#}"),
        };
        return Err(err.context(format!(
            "the agent restarted on {node}'s pin path did not come up; {without}"
        )));
    }
    note(format!(
        "restarted as {label} on the same pin path; healthy after {}",
        ms(t.elapsed())
    ));
    check_all(&mut conns, "after the restart")?;
    for (what, conn) in &conns {
        note(format!(
            "{what}: {} -> {} still answered by {} after {} exchanges",
            conn.source, conn.target, conn.first.pod, conn.exchanges
        ));
    }
    let answers = bed.ask_n(&outside, nodeport, Proto::Tcp, 5)?;
    answered_by("new connections after the restart", &answers, &["web-2"])?;
    Ok(Verdict::Pass)
}
