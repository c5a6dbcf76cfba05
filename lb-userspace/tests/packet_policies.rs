//! BPF_PROG_TEST_RUN tier for the node-level semantics (data plane II):
//! source NAT for remote backends and hairpin, traffic policies, session
//! affinity and loadBalancerSourceRanges.
mod common;

use std::net::Ipv4Addr;

use common::{
    be, load,
    packets::{fragments, parse_checked, tcp_frame, Tcp},
    source_range, Provision,
};
use lb_common::{
    conntrack::STATE_SEEN_REPLY, snat::SnatPorts, Config, CtKey, CtKeyV4, CtValueV4, FrontendValue,
    Reason, BE_LOCAL, CT_DIR_FORWARD, FE_DROP_EMPTY, FE_EXTERNAL, FE_SOURCE_RANGES, PROTO_TCP,
};
use lb_userspace::{
    datapath::{now_ns, run_frame, Datapath, PROGRAM},
    sync::NodeMaps,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 7), 40000);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const NODE_PORT: (Ipv4Addr, u16) = (NODE, 31000);
const VIP: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 10), 80);
const B1: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 2), 3000);
const B2: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 2, 2), 3000);
const B3: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 3, 2), 3000);

fn run(dp: &Datapath, frame: &[u8]) -> (u32, Vec<u8>) {
    let r = run_frame(dp.program(PROGRAM).unwrap(), frame, 1).unwrap();
    (r.action, r.frame)
}

fn count(dp: &Datapath, r: Reason) -> u64 {
    dp.maps.reason_total(r).unwrap()
}

/// A data plane whose node address is `NODE`, with one service exposed on
/// `frontend` (external when `flags` says so) over `backends`.
fn node(
    frontend: (Ipv4Addr, u16),
    flags: u32,
    backend_flags: u16,
    backends: &[(Ipv4Addr, u16)],
) -> Datapath {
    let mut dp = load();
    let cfg = Config {
        snat_addr: be(NODE),
        ..Config::DEFAULT
    };
    dp.maps.put_config(cfg).unwrap();
    let template = FrontendValue {
        flags,
        ..Default::default()
    };
    Provision::new().service_with(
        &mut dp,
        7,
        frontend,
        PROTO_TCP,
        backends,
        backend_flags,
        template,
    );
    if frontend.0 == NODE {
        // NodePorts live on node addresses, which the agent never marks as
        // frontend addresses (the node's own ports must keep working).
        dp.maps.addrs_mut().remove(&be(NODE)).unwrap();
    }
    dp
}

#[test]
fn nodeport_to_a_remote_backend_is_source_translated_and_the_reply_returns() {
    let dp = node(NODE_PORT, FE_EXTERNAL, 0, &[B1]);
    let (_, out) = run(&dp, &tcp_frame(CLIENT, NODE_PORT, Tcp::syn(), b"GET", &[]));
    let p = parse_checked(&out);
    assert_eq!((p.dst, p.dport), B1);
    assert_eq!(
        (p.src, p.sport),
        (NODE, CLIENT.1),
        "source NAT to the node so the reply comes back here, keeping the client's free port"
    );
    assert_eq!(count(&dp, Reason::SnatNewFlow), 1);

    let (action, out) = run(
        &dp,
        &tcp_frame(B1, (NODE, p.sport), Tcp::syn_ack(), b"200", &[]),
    );
    assert_ne!(action, XDP_DROP);
    let r = parse_checked(&out);
    assert_eq!(((r.src, r.sport), (r.dst, r.dport)), (NODE_PORT, CLIENT));
    assert_eq!(r.payload, b"200");

    // The connection goes on with the same translation.
    let (_, out) = run(&dp, &tcp_frame(CLIENT, NODE_PORT, Tcp::ack(), b"more", &[]));
    let again = parse_checked(&out);
    assert_eq!(
        ((again.src, again.sport), (again.dst, again.dport)),
        ((NODE, p.sport), B1)
    );
}

/// netfilter's rule: the client's port when the reply tuple is free, else
/// one of the SNAT range; the first flow keeps its translation.
#[test]
fn a_taken_client_port_gets_one_from_the_snat_range() {
    let dp = node(NODE_PORT, FE_EXTERNAL, 0, &[B1]);
    let other = (Ipv4Addr::new(198, 51, 100, 8), CLIENT.1);
    let mut ports = Vec::new();
    for client in [CLIENT, other] {
        let (_, out) = run(&dp, &tcp_frame(client, NODE_PORT, Tcp::syn(), b"", &[]));
        let p = parse_checked(&out);
        assert_eq!((p.src, (p.dst, p.dport)), (NODE, B1));
        ports.push(p.sport);
    }
    assert_eq!(ports[0], CLIENT.1);
    assert!(
        Config::DEFAULT.snat_ports.contains(ports[1]),
        "second flow's port {}",
        ports[1]
    );
    for (client, port) in [(CLIENT, ports[0]), (other, ports[1])] {
        let (_, out) = run(&dp, &tcp_frame(B1, (NODE, port), Tcp::syn_ack(), b"", &[]));
        let r = parse_checked(&out);
        assert_eq!(((r.src, r.sport), (r.dst, r.dport)), (NODE_PORT, client));
    }
}

/// With every candidate port taken, a new flow is dropped and counted,
/// never sent with a tuple another flow's replies use.
#[test]
fn snat_exhaustion_drops_the_new_flow_and_counts_it() {
    let mut dp = node(NODE_PORT, FE_EXTERNAL, 0, &[B1]);
    let one_port = Config {
        snat_addr: be(NODE),
        snat_ports: SnatPorts {
            min: 1024,
            max: 1024,
            skip_from: u16::MAX,
            skip_len: 0,
        },
        ..Config::DEFAULT
    };
    dp.maps.put_config(one_port).unwrap();
    let clients = [7, 8, 9].map(|last| (Ipv4Addr::new(198, 51, 100, last), CLIENT.1));
    let mut actions = Vec::new();
    for client in clients {
        let (action, out) = run(&dp, &tcp_frame(client, NODE_PORT, Tcp::syn(), b"", &[]));
        actions.push(action);
        if action != XDP_DROP {
            let p = parse_checked(&out);
            assert_eq!((p.src, (p.dst, p.dport)), (NODE, B1));
        }
    }
    assert_eq!(actions[2], XDP_DROP, "no port left for the third client");
    assert!(actions[..2].iter().all(|a| *a != XDP_DROP));
    assert_eq!(count(&dp, Reason::DropSnatPortsExhausted), 1);
    assert_eq!(count(&dp, Reason::SnatNewFlow), 2);

    // Neither flow got a reply: once both have been idle long enough, the
    // third client takes the port of the one idle longer, the second
    // (port 1024; its own port is the first flow's), and that flow is gone.
    let [first, second, third] = clients;
    for (client, idle_ns) in [(first, 1_000_000_000), (second, 2_000_000_000)] {
        let entries: Vec<_> = dp
            .maps
            .ct()
            .iter()
            .map(|e| e.unwrap())
            .filter(|(k, v)| {
                (k.dir == CT_DIR_FORWARD && k.src_addr == be(client.0))
                    || (k.dir != CT_DIR_FORWARD && v.snat_addr == be(client.0))
            })
            .collect();
        assert_eq!(entries.len(), 2, "both entries of {client:?}'s flow");
        for (k, v) in entries {
            let aged = CtValueV4 {
                last_seen_ns: v.last_seen_ns.saturating_sub(idle_ns),
                ..v
            };
            dp.maps.ct_mut().insert(k, aged, 0).unwrap();
        }
    }
    let (action, out) = run(&dp, &tcp_frame(third, NODE_PORT, Tcp::syn(), b"", &[]));
    assert_ne!(action, XDP_DROP, "a stale unreplied flow gives up its port");
    let p = parse_checked(&out);
    assert_eq!((p.src, p.sport), (NODE, 1024));
    assert_eq!(count(&dp, Reason::SnatPortReclaimed), 1);
    let forward_of = |client: (Ipv4Addr, u16)| {
        dp.maps
            .ct()
            .iter()
            .map(|e| e.unwrap())
            .any(|(k, _)| k.dir == CT_DIR_FORWARD && k.src_addr == be(client.0))
    };
    assert!(!forward_of(second), "the second flow's entry is forgotten");
    assert!(forward_of(first), "the first flow keeps its port");
    let (_, out) = run(&dp, &tcp_frame(B1, (NODE, 1024), Tcp::syn_ack(), b"", &[]));
    let r = parse_checked(&out);
    assert_eq!(
        (r.dst, r.dport),
        third,
        "replies reach the new flow's client"
    );
}

/// Ports taken by live flows lie in runs (a burst of flows takes them in
/// the order it comes), so each probe draws its own port: a window of
/// consecutive ports from one random start would fall inside a run of
/// taken ones most of the time. Here 900 of 1,000 ports in one run are
/// answered flows' and 100 are free: each new flow's 32 probes miss them
/// all with odds of 0.9 to the 32nd power (3%), where 32 consecutive
/// ports from a random start miss them with odds of 87%.
#[test]
fn snat_probes_spread_over_the_range() {
    let mut dp = node(NODE_PORT, FE_EXTERNAL, 0, &[B1]);
    let ports = SnatPorts {
        min: 40_000,
        max: 40_999,
        skip_from: u16::MAX,
        skip_len: 0,
    };
    let cfg = Config {
        snat_addr: be(NODE),
        snat_ports: ports,
        ..Config::DEFAULT
    };
    dp.maps.put_config(cfg).unwrap();
    let now = now_ns();
    let answered = CtValueV4 {
        expires_ns: now + 60_000_000_000,
        last_seen_ns: now,
        state: STATE_SEEN_REPLY,
        nat_addr: be(NODE_PORT.0),
        nat_port: NODE_PORT.1.to_be(),
        ..Default::default()
    };
    for port in 40_000..40_900u16 {
        let key = CtKeyV4::reply(
            (be(B1.0), B1.1.to_be()),
            (be(NODE), port.to_be()),
            PROTO_TCP,
        );
        dp.maps.ct_mut().insert(key, answered, 0).unwrap();
    }
    // Each client's own port is taken too.
    for last in 1..=10 {
        let client = (Ipv4Addr::new(203, 0, 113, last), 40_000);
        let (action, out) = run(&dp, &tcp_frame(client, NODE_PORT, Tcp::syn(), b"", &[]));
        if action != XDP_DROP {
            let p = parse_checked(&out);
            assert!((40_900..=40_999).contains(&p.sport), "port {}", p.sport);
        }
    }
    let dropped = count(&dp, Reason::DropSnatPortsExhausted);
    assert!(dropped <= 4, "{dropped} of 10 new flows found no free port");
}

/// A burst of 6,000 spoofed SYNs to a NodePort (every one a new flow to the
/// one remote backend, never answered) leaves room for the clients that
/// follow: each keeps its own port or finds one in the wide SNAT range.
#[test]
fn spoofed_syn_burst_leaves_snat_ports_for_legitimate_clients() {
    let dp = node(NODE_PORT, FE_EXTERNAL, 0, &[B1]);
    let mut state = 0x2545_f491u32;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    for _ in 0..6_000 {
        let r = next();
        let spoofed = (
            Ipv4Addr::new(203, 0, (r >> 24) as u8, (r >> 16) as u8),
            (r as u16) | 1024,
        );
        run(&dp, &tcp_frame(spoofed, NODE_PORT, Tcp::syn(), b"", &[]));
    }
    let mut served = 0;
    for i in 0..100u16 {
        let client = (Ipv4Addr::new(198, 51, 100, 200), 40_000 + i);
        let (action, out) = run(&dp, &tcp_frame(client, NODE_PORT, Tcp::syn(), b"", &[]));
        if action != XDP_DROP && parse_checked(&out).dst == B1.0 {
            served += 1;
        }
    }
    assert!(served >= 99, "{served} of 100 legitimate clients served");
    assert_eq!(count(&dp, Reason::DropSnatPortsExhausted), 0);
}

#[test]
fn nodeport_to_a_local_backend_keeps_the_client_source() {
    let dp = node(NODE_PORT, FE_EXTERNAL, BE_LOCAL, &[B1]);
    let (_, out) = run(&dp, &tcp_frame(CLIENT, NODE_PORT, Tcp::syn(), b"", &[]));
    let p = parse_checked(&out);
    assert_eq!(((p.src, p.sport), (p.dst, p.dport)), (CLIENT, B1));
    assert_eq!(count(&dp, Reason::SnatNewFlow), 0);
}

#[test]
fn unknown_port_on_a_node_address_is_left_to_the_node() {
    let dp = node(NODE_PORT, FE_EXTERNAL, 0, &[B1]);
    let ssh = tcp_frame(CLIENT, (NODE, 22), Tcp::syn(), b"", &[]);
    let (action, out) = run(&dp, &ssh);
    assert_eq!(
        (action, out),
        (2, ssh),
        "passed untouched to the node's own sshd"
    );
}

#[test]
fn hairpin_pod_reaching_itself_through_its_service_is_source_translated() {
    let dp = node(VIP, 0, BE_LOCAL, &[B1]);
    let pod = (B1.0, 45000);
    let (_, out) = run(&dp, &tcp_frame(pod, VIP, Tcp::syn(), b"", &[]));
    let p = parse_checked(&out);
    assert_eq!((p.dst, p.dport), B1);
    assert_eq!(
        p.src, NODE,
        "a packet from itself to itself would be dropped as martian"
    );
    let (_, out) = run(
        &dp,
        &tcp_frame(B1, (NODE, p.sport), Tcp::syn_ack(), b"", &[]),
    );
    let r = parse_checked(&out);
    assert_eq!(((r.src, r.sport), (r.dst, r.dport)), (VIP, pod));
}

#[test]
fn policy_local_without_local_backends_drops_instead_of_rejecting() {
    let dp = node(NODE_PORT, FE_EXTERNAL | FE_DROP_EMPTY, 0, &[]);
    let (action, _) = run(&dp, &tcp_frame(CLIENT, NODE_PORT, Tcp::syn(), b"", &[]));
    assert_eq!(action, XDP_DROP);
    assert_eq!(count(&dp, Reason::DropNoLocalBackend), 1);
    assert_eq!(count(&dp, Reason::RejectNoBackend), 0);
}

#[test]
fn session_affinity_holds_each_client_to_one_backend() {
    let mut dp = load();
    let template = FrontendValue {
        affinity_timeout_s: 10_800,
        ..Default::default()
    };
    Provision::new().service_with(&mut dp, 7, VIP, PROTO_TCP, &[B1, B2, B3], 0, template);
    let mut per_client = Vec::new();
    for c in 0..30u8 {
        let client = Ipv4Addr::new(10, 0, 0, c + 1);
        let mut seen = std::collections::HashSet::new();
        for port in 0..20u16 {
            let (_, out) = run(
                &dp,
                &tcp_frame((client, 20000 + port), VIP, Tcp::syn(), b"", &[]),
            );
            let p = parse_checked(&out);
            seen.insert((p.dst, p.dport));
        }
        assert_eq!(seen.len(), 1, "client {client} moved: {seen:?}");
        per_client.push(seen.into_iter().next().unwrap());
    }
    per_client.sort();
    per_client.dedup();
    assert!(per_client.len() > 1, "clients still spread over backends");
}

#[test]
fn source_ranges_admit_listed_clients_only() {
    let mut dp = node(NODE_PORT, FE_EXTERNAL | FE_SOURCE_RANGES, BE_LOCAL, &[B1]);
    source_range(&mut dp, 7, Ipv4Addr::new(198, 51, 100, 0), 24);
    let (_, out) = run(&dp, &tcp_frame(CLIENT, NODE_PORT, Tcp::syn(), b"", &[]));
    assert_eq!((parse_checked(&out).dst, parse_checked(&out).dport), B1);
    let outsider = (Ipv4Addr::new(203, 0, 113, 9), 40000);
    let (action, _) = run(&dp, &tcp_frame(outsider, NODE_PORT, Tcp::syn(), b"", &[]));
    assert_eq!(action, XDP_DROP);
    assert_eq!(count(&dp, Reason::DropSourceRange), 1);
}

#[test]
fn later_fragments_follow_the_first_to_its_backend_and_back() {
    use common::packets::udp_frame;
    let mut dp = load();
    Provision::new().service(&mut dp, 7, VIP, lb_common::PROTO_UDP, &[B1, B2, B3]);
    let big = vec![0x5au8; 3000];
    let (first, second) = fragments(&udp_frame(CLIENT, VIP, &big, false), 1480);
    let (_, out) = run(&dp, &first);
    let (ip, _) = etherparse::Ipv4Header::from_slice(&out[14..]).unwrap();
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    let backend = Ipv4Addr::from(ip.destination);
    assert!([B1.0, B2.0, B3.0].contains(&backend));
    let (action, out) = run(&dp, &second);
    assert_eq!(action, 2);
    let (ip2, rest) = etherparse::Ipv4Header::from_slice(&out[14..]).unwrap();
    assert_eq!(
        Ipv4Addr::from(ip2.destination),
        backend,
        "the later fragment follows the first"
    );
    assert_eq!(ip2.header_checksum, ip2.calc_header_checksum());
    assert_eq!(rest, &second[34..]);
    assert_eq!(count(&dp, Reason::XlateFragment), 1);

    // Replies fragment too.
    let chosen = [B1, B2, B3].into_iter().find(|b| b.0 == backend).unwrap();
    let (rfirst, rsecond) = fragments(&udp_frame(chosen, CLIENT, &big, false), 1480);
    let (_, out) = run(&dp, &rfirst);
    let (ip, _) = etherparse::Ipv4Header::from_slice(&out[14..]).unwrap();
    assert_eq!(Ipv4Addr::from(ip.source), VIP.0);
    let (_, out) = run(&dp, &rsecond);
    let (ip, _) = etherparse::Ipv4Header::from_slice(&out[14..]).unwrap();
    assert_eq!(Ipv4Addr::from(ip.source), VIP.0);

    // A later fragment nobody saw the first of goes to the kernel as it is.
    let (_, stray) = fragments(&udp_frame((CLIENT.0, 40999), VIP, &big, false), 1480);
    let mut stray = stray;
    stray[18] ^= 0x55; // another IP id
    let ip = etherparse::Ipv4Header::from_slice(&stray[14..]).unwrap().0;
    let mut fixed = stray[..14].to_vec();
    let mut h = ip.clone();
    h.header_checksum = h.calc_header_checksum();
    h.write(&mut fixed).unwrap();
    fixed.extend_from_slice(&stray[34..]);
    assert_eq!(run(&dp, &fixed), (2, fixed.clone()));
    assert_eq!(count(&dp, Reason::PassFragment), 1);
}

/// Affinity lasts while the client keeps coming and ends `timeoutSeconds`
/// after its last new flow. The test plays the clock by writing the entry's
/// last-seen time itself, and points the entry at a backend outside the
/// ring so whether it was honoured shows in every packet.
#[test]
fn session_affinity_expires_after_its_timeout() {
    use lb_common::{AffinityKeyV4, AffinityValue, BackendV4, FrontendKeyV4};
    let mut dp = load();
    let template = FrontendValue {
        affinity_timeout_s: 5,
        ..Default::default()
    };
    Provision::new().service_with(&mut dp, 7, VIP, PROTO_TCP, &[B1, B2, B3], 0, template);
    let outside: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 9, 9), 3000);
    let backend = BackendV4 {
        addr: be(outside.0),
        port: outside.1.to_be(),
        flags: 0,
    };
    dp.maps.backends_mut().set(50, backend, 0).unwrap();
    let client = Ipv4Addr::new(10, 0, 0, 1);
    run(&dp, &tcp_frame((client, 20000), VIP, Tcp::syn(), b"", &[]));
    let key = AffinityKeyV4 {
        frontend: FrontendKeyV4 {
            addr: be(VIP.0),
            port: VIP.1.to_be(),
            proto: PROTO_TCP,
            _pad: 0,
        },
        client_addr: be(client),
    };
    let now = dp.maps.affinity().get(&key, 0).unwrap().last_seen_ns;
    let destinations = |dp: &Datapath, base: u16| -> std::collections::HashSet<(Ipv4Addr, u16)> {
        (0..20u16)
            .map(|p| {
                let (_, out) = run(
                    dp,
                    &tcp_frame((client, base + p), VIP, Tcp::syn(), b"", &[]),
                );
                let o = parse_checked(&out);
                (o.dst, o.dport)
            })
            .collect()
    };
    let held = AffinityValue {
        last_seen_ns: now,
        backend_id: 50,
        _pad: 0,
    };
    dp.maps.affinity_mut().insert(key, held, 0).unwrap();
    assert_eq!(
        destinations(&dp, 21000),
        [outside].into(),
        "held within the timeout"
    );
    // Six seconds of silence since the last new flow: past the timeout.
    let stale = AffinityValue {
        last_seen_ns: now.saturating_sub(6_000_000_000),
        ..held
    };
    dp.maps.affinity_mut().insert(key, stale, 0).unwrap();
    let after = destinations(&dp, 22000);
    assert!(
        !after.contains(&outside),
        "expired affinity still honoured: {after:?}"
    );
    assert_eq!(
        after.len(),
        1,
        "the next flow starts a new affinity: {after:?}"
    );
}

#[test]
fn nodeport_answers_on_every_local_address() {
    let second_node_addr = Ipv4Addr::new(172, 16, 0, 1);
    let mut dp = node(NODE_PORT, FE_EXTERNAL, BE_LOCAL, &[B1]);
    let template = FrontendValue {
        flags: FE_EXTERNAL,
        ..Default::default()
    };
    let other = (second_node_addr, NODE_PORT.1);
    Provision::new().service_with(&mut dp, 8, other, PROTO_TCP, &[B1], BE_LOCAL, template);
    dp.maps.addrs_mut().remove(&be(second_node_addr)).unwrap();
    for frontend in [NODE_PORT, other] {
        let (_, out) = run(&dp, &tcp_frame(CLIENT, frontend, Tcp::syn(), b"", &[]));
        let p = parse_checked(&out);
        assert_eq!(
            ((p.src, p.sport), (p.dst, p.dport)),
            (CLIENT, B1),
            "via {frontend:?}"
        );
    }
}

#[test]
fn internal_policy_local_without_local_backends_drops_pod_traffic() {
    let dp = node(VIP, FE_DROP_EMPTY, 0, &[]);
    let pod = (Ipv4Addr::new(10, 244, 1, 7), 45000);
    let (action, _) = run(&dp, &tcp_frame(pod, VIP, Tcp::syn(), b"", &[]));
    assert_eq!(action, XDP_DROP);
    assert_eq!(count(&dp, Reason::DropNoLocalBackend), 1);
}

/// An externalIP that is one of the node's own addresses takes only its
/// port there, as under kube-proxy: SSH, the kubelet and the agent's own
/// ports on that address stay the node's instead of being reset.
#[test]
fn externalip_on_a_node_address_takes_only_its_port() {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use lb_userspace::{
        model::{desired_state, ModelOptions, NodeInfo},
        sync::Syncer,
    };
    let (vip, port) = VIP;
    let service: Service = serde_yaml::from_str(&format!(
        "metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {vip}
  externalIPs: [{NODE}]
  ports: [{{port: {port}}}]"
    ))
    .unwrap();
    let slice: EndpointSlice = serde_yaml::from_str(&format!(
        "metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{port: {}}}]
endpoints: [{{addresses: [\"{}\"]}}]",
        B1.1, B1.0
    ))
    .unwrap();
    let opts = ModelOptions {
        node_addresses: vec![NODE],
        ..Default::default()
    };
    let desired = desired_state(&[service], &[slice], &NodeInfo::default(), &opts);
    assert_eq!(desired.problems, []);
    let mut dp = load();
    let mut syncer = Syncer::recover(&mut dp.maps).unwrap();
    syncer.sync(&desired, &mut dp.maps).unwrap();

    let ssh = tcp_frame(CLIENT, (NODE, 22), Tcp::syn(), b"", &[]);
    assert_eq!(
        run(&dp, &ssh),
        (XDP_PASS, ssh),
        "passed untouched to the node's own sshd"
    );
    let (_, out) = run(&dp, &tcp_frame(CLIENT, (NODE, port), Tcp::syn(), b"", &[]));
    let p = parse_checked(&out);
    assert_eq!(((p.src, p.sport), (p.dst, p.dport)), (CLIENT, B1));
    // The ClusterIP is no node address: its unknown ports are still refused.
    run(&dp, &tcp_frame(CLIENT, (vip, 22), Tcp::syn(), b"", &[]));
    assert_eq!(count(&dp, Reason::RejectUnknownPort), 1);
}
