//! The pool scenario's IPv6 twin: a dual-stack LoadBalancer Service of
//! class xdplb.io/l2 gets an address of the agents' IPv6 pool
//! (`cluster::LB_POOL6`, inside the LAN's /64 and routed nowhere), which
//! the router finds by NDP: exactly one node answers its Neighbour
//! Solicitation. Marked NotReady, that node gives the address up, the
//! other takes it over with an unsolicited Neighbour Advertisement, and
//! new connections from outside reach the pods through it.
//!
//! The counter pods serve it: they listen on both families.
use std::net::{SocketAddr, SocketAddrV6};

use super::*;
use testbed::cluster::{CLIENT_ADDR6, LB_POOL6};

const SERVICE: &str = "lb-pool6";
/// As the IPv4 twin's: the goal is 3 s, the bound leaves room for a
/// loaded machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

pub(super) fn lb_pool6(bed: &mut Bed) -> Result<Verdict> {
    let result = steps(bed);
    for node in bed.node_names() {
        bed.state.set_node_ready(&node, true)?;
    }
    let _ = bed.state.remove_service(SERVICE);
    bed.publish()?;
    result
}

fn steps(bed: &mut Bed) -> Result<Verdict> {
    let mut svc = service(
        SERVICE,
        "LoadBalancer",
        json!({ "app": "counter", "tier": "app" }),
        json!([{ "port": 80, "targetPort": COUNTER_PORT, "protocol": "TCP" }]),
    );
    svc["spec"]["loadBalancerClass"] = json!("xdplb.io/l2");
    svc["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
    svc["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    bed.state.add_services([svc])?;
    bed.publish()?;
    let mut addr = None;
    let (took, _) = within(
        &format!("Service {SERVICE} listed with an IPv6 pool address"),
        APPLY_BOUND,
        || {
            let node = &bed.node_names()[0];
            let service = format!("default/{SERVICE}");
            addr = Some(lb_pool::pool_address6(
                &bed.bin,
                &bed.cluster.run,
                node,
                &service,
            )?);
            Ok(())
        },
    )?;
    let addr = addr.context("no address")?;
    let target = SocketAddr::V6(SocketAddrV6::new(addr, 80, 0, 0));
    let frontend = format!("{target}/TCP");
    note(format!(
        "{SERVICE} got {addr} from {LB_POOL6} ({})",
        ms(took)
    ));
    let outside = bed.outside();
    let counters: Vec<String> = bed
        .state
        .pods
        .iter()
        .filter(|p| p.app == App::Counter)
        .map(|p| p.name.clone())
        .collect();
    let (took, _) = within(
        &format!("{target} answered by the counters {counters:?}"),
        APPLY_BOUND,
        || answered_by_all(bed, &outside, target, &counters),
    )?;
    let names = bed.node_names();
    let macs = lb_pool::lan_macs(&bed.cluster.run, names.iter().map(String::as_str))?;
    let announcer = |bed: &Bed| lb_pool::announcer_seen_by_router(&bed.cluster.run, addr, &macs);
    let first = announcer(bed)?;
    from_outside::listed_as_announced_by(bed, &frontend, &first, LB_POOL6)?;
    note(format!(
        "{target} from {CLIENT_ADDR6} reached both counters over {SPREAD} connections ({}); \
         the router has {first}'s MAC {} for it",
        ms(took),
        macs[&first]
    ));
    let other = names
        .into_iter()
        .find(|n| *n != first)
        .context("one node only")?;
    let before = bed.frontend_packets(&other, &frontend)?;
    bed.state.set_node_ready(&first, false)?;
    bed.publish()?;
    let (took, _) = within(
        &format!("{target} reached through {other}"),
        FAILOVER_BOUND,
        || {
            let now = announcer(bed)?;
            ensure!(now == other, "the router still has {now}'s MAC");
            let outcome = bed.run_in(&outside, || traffic::get_any(target))??;
            outcome
                .answer
                .with_context(|| format!("{target} not answered"))?;
            let after = bed.frontend_packets(&other, &frontend)?;
            ensure!(
                after > before,
                "{other} has counted no packet to {frontend}"
            );
            Ok(())
        },
    )?;
    note(format!(
        "{first} marked NotReady: {other} answers NDP for {addr} (the router's entry moved) \
         and new connections go through it after {} (goal 3 s)",
        ms(took)
    ));
    Ok(Verdict::Pass)
}

/// [`SPREAD`] connections from `client` to `target`, answered by exactly
/// `want` together.
fn answered_by_all(bed: &Bed, client: &Client, target: SocketAddr, want: &[String]) -> Result<()> {
    let mut pods = Vec::new();
    for _ in 0..SPREAD {
        let outcome = bed.run_in(client, || traffic::get_any(target))??;
        pods.push(
            outcome
                .answer
                .with_context(|| format!("{target} not answered"))?
                .pod,
        );
    }
    pods.sort();
    pods.dedup();
    let mut want = want.to_vec();
    want.sort();
    ensure!(
        pods == want,
        "{SPREAD} answers came from {pods:?}, expected exactly {want:?}"
    );
    Ok(())
}
