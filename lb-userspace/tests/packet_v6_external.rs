//! BPF_PROG_TEST_RUN tier for IPv6 traffic from outside the cluster: a
//! dual-stack NodePort and LoadBalancer Service written by the agent's model
//! and syncer from manifests, through `lb` (XDP), which hands IPv6 to `lb6`.
//! Source NAT to the node's IPv6 address, traffic policies and source
//! ranges, as `packet_policies` checks them for IPv4.
mod common;

use common::{
    external_v6::{
        node, CLIENT, CLUSTER_IP, EXTERNAL_IP, LB_IP, LOCAL, LOCAL_LB_IP, NODE, NODE_PORT, REMOTE,
    },
    packets_v6::{addr, parse_checked, tcp, udp},
};
use lb_common::Reason;
use lb_userspace::datapath::{run_frame, Datapath, POD_PROGRAM, PROGRAM};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn xdp(dp: &Datapath, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = run_frame(dp.program(PROGRAM).unwrap(), frame, 1).unwrap();
    (r.action, r.frame)
}

fn count(dp: &Datapath, r: Reason) -> u64 {
    dp.maps.reason_total(r).unwrap()
}

/// The node's address strings as the parsed frames show them.
fn at(a: &str, port: u16) -> (std::net::Ipv6Addr, u16) {
    (addr(a), port)
}

#[test]
fn nodeport_to_a_remote_backend_is_source_translated_and_the_reply_returns() {
    let dp = node();
    let (_, out) = xdp(&dp, &tcp(CLIENT, (NODE, NODE_PORT), true, b"GET"));
    let p = parse_checked(&out);
    assert_eq!(p.dst, at(REMOTE.0, REMOTE.1));
    assert_eq!(
        p.src,
        at(NODE, CLIENT.1),
        "source NAT to the node so the reply comes back here, keeping the client's free port"
    );
    assert_eq!(count(&dp, Reason::SnatNewFlow), 1);

    let (action, out) = xdp(&dp, &tcp(REMOTE, (NODE, p.src.1), false, b"200"));
    assert_ne!(action, XDP_DROP);
    let r = parse_checked(&out);
    assert_eq!(
        (r.src, r.dst),
        (at(NODE, NODE_PORT), at(CLIENT.0, CLIENT.1))
    );
    assert_eq!(r.payload, b"200");
    assert_eq!(count(&dp, Reason::XlateReply), 1);

    let (_, out) = xdp(&dp, &tcp(CLIENT, (NODE, NODE_PORT), false, b"more"));
    let again = parse_checked(&out);
    assert_eq!((again.src, again.dst), (p.src, p.dst));
}

/// The LoadBalancer IP and the externalIP lead to the same backend, each
/// flow source-translated; UDP too.
#[test]
fn lb_ip_and_external_ip_reach_the_remote_backend_through_source_nat() {
    let dp = node();
    for (i, dst) in [(LB_IP, 80), (EXTERNAL_IP, 80)].into_iter().enumerate() {
        let client = (CLIENT.0, CLIENT.1 + i as u16);
        let (_, out) = xdp(&dp, &tcp(client, dst, true, b""));
        let p = parse_checked(&out);
        assert_eq!((p.src, p.dst), (at(NODE, client.1), at(REMOTE.0, REMOTE.1)));
        let (_, out) = xdp(&dp, &tcp(REMOTE, (NODE, client.1), false, b""));
        let r = parse_checked(&out);
        assert_eq!((r.src, r.dst), (at(dst.0, dst.1), at(client.0, client.1)));
    }
    let (_, out) = xdp(&dp, &udp(CLIENT, (LB_IP, 53), b"q"));
    let p = parse_checked(&out);
    assert_eq!((p.src, p.dst), (at(NODE, CLIENT.1), at(REMOTE.0, REMOTE.1)));
    let (_, out) = xdp(&dp, &udp(REMOTE, (NODE, CLIENT.1), b"a"));
    let r = parse_checked(&out);
    assert_eq!((r.src, r.dst), (at(LB_IP, 53), at(CLIENT.0, CLIENT.1)));
}

/// netfilter's rule: the client's port when the reply tuple is free, else
/// one of the SNAT range; the first flow keeps its translation.
#[test]
fn a_taken_client_port_gets_one_from_the_snat_range() {
    let dp = node();
    let other = ("2001:db8:7::8", CLIENT.1);
    let mut ports = Vec::new();
    for client in [CLIENT, other] {
        let (_, out) = xdp(&dp, &tcp(client, (NODE, NODE_PORT), true, b""));
        let p = parse_checked(&out);
        assert_eq!((p.src.0, p.dst), (addr(NODE), at(REMOTE.0, REMOTE.1)));
        ports.push(p.src.1);
    }
    assert_eq!(ports[0], CLIENT.1);
    assert!(
        lb_common::Config::DEFAULT.snat_ports.contains(ports[1]),
        "second flow's port {}",
        ports[1]
    );
    for (client, port) in [(CLIENT, ports[0]), (other, ports[1])] {
        let (_, out) = xdp(&dp, &tcp(REMOTE, (NODE, port), false, b""));
        let r = parse_checked(&out);
        assert_eq!(
            (r.src, r.dst),
            (at(NODE, NODE_PORT), at(client.0, client.1))
        );
    }
}

/// A client whose port is itself a NodePort keeps it through source NAT;
/// the backend's reply to that port of the node is the flow's reply, not a
/// new flow to the NodePort.
#[test]
fn a_reply_to_a_kept_port_that_is_a_nodeport_stays_a_reply() {
    let dp = node();
    let client = (CLIENT.0, NODE_PORT);
    let (_, out) = xdp(&dp, &tcp(client, (LB_IP, 80), true, b""));
    let p = parse_checked(&out);
    assert_eq!(p.src, at(NODE, NODE_PORT));
    let (_, out) = xdp(&dp, &tcp(REMOTE, (NODE, NODE_PORT), false, b"hi"));
    let r = parse_checked(&out);
    assert_eq!((r.src, r.dst), (at(LB_IP, 80), at(client.0, client.1)));
    assert_eq!(count(&dp, Reason::XlateNew), 1);
}

#[test]
fn policy_local_without_local_endpoints_drops() {
    let dp = node();
    let (action, _) = xdp(&dp, &tcp(CLIENT, (LOCAL_LB_IP, 80), true, b""));
    assert_eq!(action, XDP_DROP);
    assert_eq!(count(&dp, Reason::DropNoLocalBackend), 1);
    assert_eq!(count(&dp, Reason::SnatNewFlow), 0);
}

/// A local endpoint keeps the client's address (no SNAT), and only the
/// listed IPv6 range gets in.
#[test]
fn source_ranges_admit_listed_ipv6_clients_only_and_local_endpoints_see_them() {
    let dp = node();
    let lb = ("fd00:50::12", 80);
    let (_, out) = xdp(&dp, &tcp(CLIENT, lb, true, b""));
    let p = parse_checked(&out);
    assert_eq!(
        (p.src, p.dst),
        (at(CLIENT.0, CLIENT.1), at(LOCAL.0, LOCAL.1))
    );
    assert_eq!(count(&dp, Reason::SnatNewFlow), 0);
    let outsider = ("2001:db8:9::9", 40000);
    let (action, _) = xdp(&dp, &tcp(outsider, lb, true, b""));
    assert_eq!(action, XDP_DROP);
    assert_eq!(count(&dp, Reason::DropSourceRange), 1);
}

/// A pod reaching itself through its own IPv6 ClusterIP on the per-packet
/// pod path is source-translated to the node, as kube-proxy masquerades
/// hairpin traffic.
#[test]
fn hairpin_pod_reaching_itself_is_source_translated() {
    let dp = node();
    let pod = (LOCAL.0, 45000);
    let ranged_vip = ("fd00:96::12", 80);
    let run = |frame: &[u8]| {
        let r = run_frame(dp.classifier(POD_PROGRAM).unwrap(), frame, 1).unwrap();
        r.frame
    };
    let p = parse_checked(&run(&tcp(pod, ranged_vip, true, b"")));
    assert_eq!(p.dst, at(LOCAL.0, LOCAL.1));
    assert_eq!(
        p.src.0,
        addr(NODE),
        "a packet from itself to itself would be dropped as martian"
    );
    let r = parse_checked(&run(&tcp(LOCAL, (NODE, p.src.1), false, b"")));
    assert_eq!(
        (r.src, r.dst),
        (at(ranged_vip.0, ranged_vip.1), at(pod.0, pod.1))
    );
}

#[test]
fn unknown_port_on_the_node_address_and_the_cluster_ip_from_outside_are_handled_as_for_ipv4() {
    let dp = node();
    let ssh = tcp(CLIENT, (NODE, 22), true, b"");
    let (action, out) = xdp(&dp, &ssh);
    assert_eq!((action, out), (XDP_PASS, ssh), "the node's own sshd");
    let (_, out) = xdp(&dp, &tcp(CLIENT, CLUSTER_IP, true, b""));
    let p = parse_checked(&out);
    assert_eq!(
        (p.src, p.dst),
        (at(CLIENT.0, CLIENT.1), at(REMOTE.0, REMOTE.1)),
        "a ClusterIP is no external frontend: no source NAT"
    );
}
