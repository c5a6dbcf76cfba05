use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;
use crate::source::manifests::{parse_str, LoadReport, Objects};

const FRONTENDS: &str = include_str!("../../tests/fixtures/model/frontends.yaml");
const SKIPS: &str = include_str!("../../tests/fixtures/model/skips.yaml");
const ENDPOINTS: &str = include_str!("../../tests/fixtures/model/endpoints.yaml");
const POLICIES: &str = include_str!("../../tests/fixtures/model/policies.yaml");
const TOPOLOGY: &str = include_str!("../../tests/fixtures/model/topology.yaml");
const INVALID: &str = include_str!("../../tests/fixtures/model/invalid.yaml");
const COUNTER_CLUSTER: &str = include_str!("../../tests/fixtures/model/counter-cluster.yaml");
const COUNTER_SLICES: &str = include_str!("../../tests/fixtures/model/counter-slices.yaml");
const DUAL_STACK: &str = include_str!("../../tests/fixtures/model/dual-stack.yaml");
const SEEDS: [&str; 4] = [
    include_str!("../../../deploy/examples/counter-app.yml"),
    include_str!("../../../deploy/examples/counter-lb.yml"),
    include_str!("../../../deploy/examples/counter-nodeport.yml"),
    include_str!("../../../deploy/examples/counter-redis-svc.yml"),
];

fn parse(texts: &[&str]) -> (Objects, LoadReport) {
    let mut objects = Objects::default();
    let mut report = LoadReport::default();
    for (i, text) in texts.iter().enumerate() {
        parse_str(
            &format!("fixture{i}"),
            text,
            false,
            &mut objects,
            &mut report,
        );
    }
    assert_eq!(report.problems, [], "fixtures must parse");
    (objects, report)
}

fn opts(proxy_name: Option<&str>) -> ModelOptions {
    ModelOptions {
        service_proxy_name: proxy_name.map(str::to_string),
        nodeport_addresses: vec![
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(192, 168, 1, 11),
        ],
        node_addresses: vec![
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(192, 168, 1, 11),
            Ipv4Addr::new(192, 168, 1, 12),
        ],
        nodeport_addresses_v6: vec![
            Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x10),
            Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x11),
        ],
        node_addresses_v6: vec![
            Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x10),
            Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x11),
            Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x12),
        ],
    }
}

fn run(texts: &[&str], node: &str, proxy_name: Option<&str>) -> DesiredState {
    let (objects, _) = parse(texts);
    let node = NodeInfo::from_nodes(node, &objects.nodes);
    desired_state(&objects.services, &objects.slices, &node, &opts(proxy_name))
}

fn backends<A: fmt::Display>(list: &[Backend<A>]) -> String {
    let one = |b: &Backend<A>| {
        let mut s = format!("{}:{}", b.addr, b.port);
        for (flag, on) in [
            ("local", b.is_local),
            ("unready", !b.ready),
            ("unserving", !b.serving),
            ("terminating", b.terminating),
        ] {
            if on {
                s += " ";
                s += flag;
            }
        }
        s
    };
    list.iter().map(one).collect::<Vec<_>>().join(", ")
}

fn frontends<A: Into<IpAddr> + Copy>(list: &[Frontend<A>]) -> String {
    list.iter()
        .map(|f| {
            let on_node = f.on_node && f.kind != FrontendKind::NodePort;
            format!(
                "{}:{} {:?}{}",
                fmt_addr(f.addr.into()),
                f.port,
                f.kind,
                if on_node { " on node" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One field of a ServicePort as text, so cases read like the YAML.
fn field(sp: &ServicePort, name: &str) -> String {
    match name {
        "frontends" => frontends(&sp.frontends),
        "v6 frontends" => frontends(&sp.frontends_v6),
        "cluster" => backends(&sp.cluster_backends),
        "v6 cluster" => backends(&sp.cluster_backends_v6),
        "external" => backends(&sp.external_backends),
        "v6 external" => backends(&sp.external_backends_v6),
        "affinity" => format!("{:?}", sp.session_affinity_timeout_s),
        "policy" => format!(
            "external local={} internal local={}",
            sp.external_policy_local, sp.internal_policy_local
        ),
        "ranges" => sp
            .load_balancer_source_ranges
            .iter()
            .map(|(ip, len)| format!("{ip}/{len}"))
            .collect::<Vec<_>>()
            .join(", "),
        "v6 ranges" => sp
            .load_balancer_source_ranges_v6
            .iter()
            .map(|(ip, len)| format!("{ip}/{len}"))
            .collect::<Vec<_>>()
            .join(", "),
        "hc" => format!("{:?}", sp.health_check_node_port),
        "local" => sp.local_endpoints.to_string(),
        other => panic!("unknown field {other}"),
    }
}

struct Case {
    name: &'static str,
    fixtures: &'static [&'static str],
    node: &'static str,
    proxy_name: Option<&'static str>,
    /// `ServicePortId` as displayed: "ns/name:port/PROTO".
    port: &'static str,
    /// (field, rendered value); an empty list means the port must be absent.
    expect: &'static [(&'static str, &'static str)],
}

const fn case(
    name: &'static str,
    fixtures: &'static [&'static str],
    port: &'static str,
    expect: &'static [(&'static str, &'static str)],
) -> Case {
    Case {
        name,
        fixtures,
        node: "node-a",
        proxy_name: Some("xdplb"),
        port,
        expect,
    }
}

const CASES: &[Case] = &[
    // Frontends.
    case("cluster IP and externalIP; the IPv6 ones apart", &[FRONTENDS], "default/web:http/TCP", &[
        ("frontends", "10.96.0.10:80 ClusterIp, 203.0.113.7:80 ExternalIp"),
        ("v6 frontends", "[2001:db8::7]:80 ExternalIp, [fd00::10]:80 ClusterIp"),
        ("cluster", ""),
        ("affinity", "None"),
        ("ranges", ""),
    ]),
    case("every port of a multi-port service", &[FRONTENDS], "default/web:https/TCP", &[
        ("frontends", "10.96.0.10:443 ClusterIp, 203.0.113.7:443 ExternalIp"),
    ]),
    case("UDP port", &[FRONTENDS], "default/web:dns/UDP", &[
        ("frontends", "10.96.0.10:53 ClusterIp, 203.0.113.7:53 ExternalIp"),
    ]),
    case("unnamed port, same name in another namespace", &[FRONTENDS], "other/web:/TCP", &[
        ("frontends", "10.96.1.10:80 ClusterIp"),
    ]),
    case("NodePort on every nodeport address", &[FRONTENDS], "default/np:/TCP", &[
        ("frontends", "10.96.0.11:3000 ClusterIp, 192.168.1.10:31000 NodePort, 192.168.1.11:31000 NodePort"),
        ("policy", "external local=false internal local=false"),
    ]),
    case("LoadBalancer: ingress IPs but not ipMode Proxy's, source ranges, default affinity", &[FRONTENDS], "default/lb:/TCP", &[
        ("frontends", "10.96.0.12:30000 ClusterIp, 192.168.1.10:30500 NodePort, 192.168.1.11:30500 NodePort, \
                       198.51.100.1:30000 LoadBalancer"),
        ("ranges", "10.0.0.0/8, 192.168.0.0/16"),
        ("v6 frontends", "[2001:db8::1]:30000 LoadBalancer, [fd00:1::10]:30500 NodePort, [fd00:1::11]:30500 NodePort"),
        ("v6 ranges", "2001:db8::/32"),
        ("affinity", "Some(10800)"),
        ("hc", "None"),
    ]),
    case("LoadBalancer without nodePort", &[FRONTENDS], "default/lb-no-nodeport:/TCP", &[
        ("frontends", "10.96.0.13:8443 ClusterIp"),
    ]),
    case("ClientIP affinity with timeout", &[FRONTENDS], "default/sticky:/TCP", &[
        ("affinity", "Some(60)"),
    ]),
    case("shared externalIP: first service port in id order keeps it", &[FRONTENDS], "default/xweb:http/TCP", &[
        ("frontends", "10.96.0.15:80 ClusterIp"),
    ]),
    case("externalIP on another port is not shared", &[FRONTENDS], "default/xweb:alt/TCP", &[
        ("frontends", "10.96.0.15:8080 ClusterIp, 203.0.113.7:8080 ExternalIp"),
    ]),
    case("externalIP and ingress IP on node addresses: only their port is the Service's", &[FRONTENDS], "default/on-node:/TCP", &[
        ("frontends", "10.96.0.16:2222 ClusterIp, 192.168.1.10:30600 NodePort, 192.168.1.11:2222 LoadBalancer on node, \
                       192.168.1.11:30600 NodePort, 192.168.1.12:2222 ExternalIp on node, 203.0.113.9:2222 ExternalIp"),
    ]),
    // Dual stack: each family's ClusterIP with that family's endpoints.
    case("dual-stack: IPv4 endpoints for IPv4 frontends, IPv6 ones for the IPv6 ClusterIP", &[DUAL_STACK], "default/dual:http/TCP", &[
        ("frontends", "10.96.0.40:80 ClusterIp, 192.168.1.10:30040 NodePort, 192.168.1.11:30040 NodePort"),
        ("cluster", "10.244.1.40:8080 local"),
        ("external", "10.244.1.40:8080 local"),
        ("v6 frontends", "[fd00:1::10]:30040 NodePort, [fd00:1::11]:30040 NodePort, [fd00:96::40]:80 ClusterIp"),
        ("v6 cluster", "fd00:244:1::40:8080 local, fd00:244:2::40:8080"),
        ("v6 external", "fd00:244:1::40:8080 local, fd00:244:2::40:8080"),
        ("local", "1"),
    ]),
    case("dual-stack UDP port", &[DUAL_STACK], "default/dual:dns/UDP", &[
        ("v6 frontends", "[fd00:1::10]:30053 NodePort, [fd00:1::11]:30053 NodePort, [fd00:96::40]:53 ClusterIp"),
        ("v6 cluster", "fd00:244:1::40:5353 local, fd00:244:2::40:5353"),
    ]),
    case("IPv6-only Service: no IPv4 frontend", &[DUAL_STACK], "default/v6only:/TCP", &[
        ("frontends", ""),
        ("cluster", ""),
        ("v6 frontends", "[fd00:96::41]:8080 ClusterIp"),
        ("v6 cluster", "fd00:244:3::1:8080"),
    ]),
    case("IPv6 internalTrafficPolicy Local", &[DUAL_STACK], "default/v6local:/TCP", &[
        ("v6 cluster", "fd00:244:1::42:8080 local"),
    ]),
    Case {
        node: "node-b",
        ..case("IPv6 internalTrafficPolicy Local from node-b", &[DUAL_STACK], "default/v6local:/TCP", &[
            ("v6 cluster", "fd00:244:2::42:8080 local"),
        ])
    },
    case("dual-stack LoadBalancer: every kind of IPv6 frontend, Local policy, IPv6 source ranges", &[DUAL_STACK], "default/dual-lb:/TCP", &[
        ("v6 frontends", "[2001:db8::44]:443 ExternalIp, [2001:db8:1::44]:443 LoadBalancer, [fd00:1::10]:30044 NodePort, \
                          [fd00:1::11]:30044 NodePort, [fd00:1::12]:443 ExternalIp on node, [fd00:96::44]:443 ClusterIp"),
        ("v6 external", "fd00:1::10:8443 local, fd00:244:1::44:8443 local"),
        ("v6 cluster", "fd00:1::10:8443 local, fd00:244:1::44:8443 local, fd00:244:2::44:8443"),
        ("external", "10.244.1.44:8443 local"),
        ("ranges", "10.0.0.0/8"),
        ("v6 ranges", "2001:db8:ff::/48"),
        ("hc", "Some(32044)"),
        ("local", "2"),
    ]),
    Case {
        node: "node-b",
        ..case("dual-stack LoadBalancer from a node with only IPv6 endpoints", &[DUAL_STACK], "default/dual-lb:/TCP", &[
            ("external", ""),
            ("v6 external", "fd00:244:2::44:8443 local"),
            ("local", "1"),
        ])
    },
    case("an IPv4-mapped ClusterIP skips the Service", &[DUAL_STACK], "default/v6mapped:/TCP", &[]),
    case("IPv4-only Service: no IPv6 frontends, IPv6 slices unused", &[SKIPS], "default/app:http/TCP", &[
        ("v6 frontends", ""),
        ("v6 cluster", ""),
    ]),
    // Skipped objects.
    case("ExternalName", &[SKIPS], "default/ext:/TCP", &[]),
    case("headless", &[SKIPS], "default/headless:/TCP", &[]),
    case("another proxy's service", &[SKIPS], "default/other-proxy:/TCP", &[]),
    case("our proxy name", &[SKIPS], "default/ours:/TCP", &[("frontends", "10.96.0.21:80 ClusterIp")]),
    Case {
        proxy_name: None,
        ..case("labelled service without a proxy name", &[SKIPS], "default/ours:/TCP", &[])
    },
    case("only IPv4, non-headless slices of the same namespace, port and protocol", &[SKIPS], "default/app:http/TCP", &[
        ("cluster", "10.244.1.1:8080"),
    ]),
    // Endpoints.
    case("named target port resolves per slice, conditions, duplicates, first address", &[ENDPOINTS], "default/multi:http/TCP", &[
        ("cluster", "10.244.1.10:8080 local, 10.244.2.10:8080, 10.244.2.12:8080, 10.244.3.10:8081"),
        ("external", "10.244.1.10:8080 local, 10.244.2.10:8080, 10.244.2.12:8080, 10.244.3.10:8081"),
        ("local", "1"),
    ]),
    case("second port of the same slices", &[ENDPOINTS], "default/multi:metrics/TCP", &[
        ("cluster", "10.244.1.10:9100 local, 10.244.2.12:9100"),
    ]),
    case("no ready endpoints: serving and terminating ones", &[ENDPOINTS], "default/draining:/TCP", &[
        ("cluster", "10.244.4.1:8080 local unready terminating"),
        ("local", "0"),
    ]),
    case("no slices", &[ENDPOINTS], "default/empty:/TCP", &[("frontends", "10.96.0.32:80 ClusterIp"), ("cluster", "")]),
    // Traffic policies.
    case("externalTrafficPolicy Local on NodePort: no health check", &[POLICIES], "default/local-ext:/TCP", &[
        ("cluster", "10.244.5.1:8080 local, 10.244.5.2:8080"),
        ("external", "10.244.5.1:8080 local"),
        ("policy", "external local=true internal local=false"),
        ("hc", "None"),
        ("local", "1"),
    ]),
    Case {
        node: "node-b",
        ..case("externalTrafficPolicy Local seen from node-b", &[POLICIES], "default/local-ext:/TCP", &[
            ("external", "10.244.5.2:8080 local"),
            ("local", "1"),
        ])
    },
    Case {
        node: "node-c",
        ..case("externalTrafficPolicy Local without local endpoints", &[POLICIES], "default/local-ext:/TCP", &[
            ("cluster", "10.244.5.1:8080, 10.244.5.2:8080"),
            ("external", ""),
            ("local", "0"),
        ])
    },
    case("externalTrafficPolicy Local on LoadBalancer: health check", &[POLICIES], "default/local-lb:/TCP", &[
        ("external", "10.244.6.1:8080 local, 10.244.6.2:8080 local"),
        ("hc", "Some(32001)"),
        ("local", "2"),
    ]),
    case("internalTrafficPolicy Local", &[POLICIES], "default/local-int:/TCP", &[
        ("cluster", "10.244.7.1:8080 local"),
        ("external", "10.244.7.1:8080 local, 10.244.7.2:8080"),
        ("policy", "external local=false internal local=true"),
    ]),
    case("Local policies fall back to local serving-terminating endpoints", &[POLICIES], "default/local-fallback:/TCP", &[
        ("cluster", "10.244.8.1:8080 local unready terminating"),
        ("external", "10.244.8.1:8080 local unready terminating"),
        ("hc", "Some(32002)"),
        ("local", "0"),
    ]),
    Case {
        node: "node-b",
        ..case("Local policies with a ready local endpoint ignore the draining one", &[POLICIES], "default/local-fallback:/TCP", &[
            ("cluster", "10.244.8.2:8080 local"),
            ("external", "10.244.8.2:8080 local"),
            ("local", "1"),
        ])
    },
    case("externalIPs make a ClusterIP service externally accessible", &[POLICIES], "default/eip-local:/TCP", &[
        ("cluster", "10.244.9.1:8080 local, 10.244.9.2:8080"),
        ("external", "10.244.9.1:8080 local"),
        ("policy", "external local=true internal local=false"),
    ]),
    case("externalTrafficPolicy on a purely internal service is ignored", &[POLICIES], "default/internal-etp-local:/TCP", &[
        ("external", "10.244.10.1:8080 local, 10.244.10.2:8080"),
        ("policy", "external local=false internal local=false"),
    ]),
    // Topology hints (kube-proxy's topologyModeFromHints).
    case("zone hints: node-a's zone z1", &[TOPOLOGY], "default/zoned:/TCP", &[
        ("cluster", "10.244.20.1:8080 local, 10.244.20.3:8080"),
        ("external", "10.244.20.1:8080 local, 10.244.20.3:8080"),
    ]),
    Case {
        node: "node-b",
        ..case("zone hints: node-b's zone z2", &[TOPOLOGY], "default/zoned:/TCP", &[
            ("cluster", "10.244.20.2:8080 local"),
        ])
    },
    Case {
        node: "node-c",
        ..case("zone hints on a node without a zone label: all", &[TOPOLOGY], "default/zoned:/TCP", &[
            ("cluster", "10.244.20.1:8080, 10.244.20.2:8080, 10.244.20.3:8080"),
        ])
    },
    Case {
        node: "node-d",
        ..case("zone hints, none for the node's zone z3: all", &[TOPOLOGY], "default/zoned:/TCP", &[
            ("cluster", "10.244.20.1:8080, 10.244.20.2:8080, 10.244.20.3:8080"),
        ])
    },
    case("a ready endpoint without hints: all; unready ones do not count", &[TOPOLOGY], "default/partly-hinted:/TCP", &[
        ("cluster", "10.244.21.1:8080 local, 10.244.21.2:8080"),
    ]),
    case("an unready endpoint without hints does not disable them", &[TOPOLOGY], "default/unready-unhinted:/TCP", &[
        ("cluster", "10.244.22.1:8080 local"),
    ]),
    case("node hints first, then zone hints", &[TOPOLOGY], "default/node-hinted:/TCP", &[
        ("cluster", "10.244.23.2:8080"),
    ]),
    case("Local policies ignore hints; Cluster ones use them", &[TOPOLOGY], "default/zoned-local:/TCP", &[
        ("cluster", "10.244.24.1:8080 local, 10.244.24.2:8080 local"),
        ("external", "10.244.24.3:8080"),
    ]),
    // Invalid objects: what survives.
    case("valid service next to broken ones", &[INVALID], "default/good:/TCP", &[
        ("frontends", "10.96.0.50:80 ClusterIp"),
        ("cluster", "10.244.11.1:8080"),
    ]),
    case("bad cluster IP", &[INVALID], "default/bad-cluster-ip:/TCP", &[]),
    case("bad externalIP", &[INVALID], "default/bad-external-ip:/TCP", &[]),
    case("bad ingress IP", &[INVALID], "default/bad-ingress-ip:/TCP", &[]),
    case("port out of range", &[INVALID], "default/bad-port:huge/TCP", &[]),
    case("port zero", &[INVALID], "default/bad-port:zero/TCP", &[]),
    case("valid port of a service with bad ones", &[INVALID], "default/bad-port:fine/TCP", &[("frontends", "10.96.0.53:80 ClusterIp")]),
    case("TCP port next to SCTP and ICMP ones", &[INVALID], "default/protocols:tcp/TCP", &[("frontends", "10.96.0.54:9 ClusterIp")]),
    case("NodePort without nodePort", &[INVALID], "default/np-missing:none/TCP", &[]),
    case("nodePort out of range", &[INVALID], "default/np-missing:bad/TCP", &[]),
    case("valid nodePort of the same service", &[INVALID], "default/np-missing:fine/TCP", &[
        ("frontends", "10.96.0.55:82 ClusterIp, 192.168.1.10:30055 NodePort, 192.168.1.11:30055 NodePort"),
    ]),
    case("bad CIDR skips the whole service", &[INVALID], "default/bad-cidr:/TCP", &[]),
    case("CIDR without prefix length", &[INVALID], "default/cidr-without-prefix:/TCP", &[]),
    case("bad affinity timeout", &[INVALID], "default/bad-affinity:/TCP", &[]),
    case("unknown traffic policy", &[INVALID], "default/bad-policy:/TCP", &[]),
    case("unknown type", &[INVALID], "default/bad-type:/TCP", &[]),
    case("duplicate port id keeps the first", &[INVALID], "default/dup-ports:/TCP", &[("frontends", "10.96.0.61:80 ClusterIp")]),
    case("cluster IP 0.0.0.0", &[INVALID], "default/cluster-ip-unspecified:/TCP", &[]),
    case("loopback cluster IP", &[INVALID], "default/cluster-ip-loopback:/TCP", &[]),
    case("multicast externalIP", &[INVALID], "default/external-ip-multicast:/TCP", &[]),
    case("broadcast externalIP", &[INVALID], "default/external-ip-broadcast:/TCP", &[]),
    case("link-local externalIP", &[INVALID], "default/external-ip-link-local:/TCP", &[]),
    case("loopback ingress IP", &[INVALID], "default/ingress-ip-loopback:/TCP", &[]),
    case("endpoint at a ClusterIP is skipped, the others serve", &[INVALID], "default/loop:/TCP", &[
        ("frontends", "10.96.0.63:80 ClusterIp"),
        ("cluster", "10.244.11.3:8080"),
    ]),
    // The seed manifests as written (no cluster IPs, no allocated ports) ...
    case("seed redis without a cluster IP", &[SEEDS[0], SEEDS[1], SEEDS[2], SEEDS[3], COUNTER_SLICES], "default/redis:/TCP", &[
        ("frontends", ""),
        ("cluster", "10.244.1.20:6379 local"),
    ]),
    case("seed NodePort 31000", &[SEEDS[0], SEEDS[1], SEEDS[2], SEEDS[3], COUNTER_SLICES], "default/counter-app:/TCP", &[
        ("frontends", "192.168.1.10:31000 NodePort, 192.168.1.11:31000 NodePort"),
        ("external", "10.244.1.21:3000 local, 10.244.2.21:3000"),
    ]),
    case("seed LoadBalancer before allocation", &[SEEDS[0], SEEDS[1], SEEDS[2], SEEDS[3], COUNTER_SLICES], "default/counter-lb:/TCP", &[
        ("frontends", ""),
        ("cluster", "10.244.1.21:3000 local, 10.244.2.21:3000"),
    ]),
    // ... and as the API server returns them.
    case("counter redis in a cluster", &[COUNTER_CLUSTER, COUNTER_SLICES], "default/redis:/TCP", &[
        ("frontends", "10.96.100.10:6379 ClusterIp"),
        ("cluster", "10.244.1.20:6379 local"),
    ]),
    case("counter NodePort in a cluster", &[COUNTER_CLUSTER, COUNTER_SLICES], "default/counter-app:/TCP", &[
        ("frontends", "10.96.100.11:3000 ClusterIp, 192.168.1.10:31000 NodePort, 192.168.1.11:31000 NodePort"),
        ("cluster", "10.244.1.21:3000 local, 10.244.2.21:3000"),
        ("external", "10.244.1.21:3000 local, 10.244.2.21:3000"),
    ]),
    case("counter LoadBalancer in a cluster", &[COUNTER_CLUSTER, COUNTER_SLICES], "default/counter-lb:/TCP", &[
        ("frontends", "10.96.100.12:30000 ClusterIp, 172.18.255.200:30000 LoadBalancer, \
                       192.168.1.10:30123 NodePort, 192.168.1.11:30123 NodePort"),
        ("external", "10.244.1.21:3000 local, 10.244.2.21:3000"),
        ("local", "1"),
    ]),
];

#[test]
fn cases() {
    for c in CASES {
        let state = run(c.fixtures, c.node, c.proxy_name);
        let found = state
            .services
            .iter()
            .find(|(id, _)| id.to_string() == c.port);
        match (found, c.expect) {
            (None, []) => {}
            (Some((_, sp)), []) => panic!("{}: {} should be absent, got {sp:?}", c.name, c.port),
            (None, _) => panic!(
                "{}: {} missing; have {:?}",
                c.name,
                c.port,
                state
                    .services
                    .keys()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            ),
            (Some((_, sp)), expect) => {
                for (name, want) in expect {
                    assert_eq!(
                        field(sp, name),
                        *want,
                        "{}: field {name} of {}",
                        c.name,
                        c.port
                    );
                }
            }
        }
    }
}

/// (object, message fragment) for every problem a fixture must report, in
/// the sorted order `desired_state` returns them.
const PROBLEMS: &[(&str, &[(&str, &str)])] = &[
    (
        FRONTENDS,
        &[(
            "Service default/xweb",
            "203.0.113.7:80/TCP (ExternalIp) is already used by default/web:http/TCP",
        )],
    ),
    (SKIPS, &[]),
    (POLICIES, &[]),
    (COUNTER_SLICES, &[]),
    (
        DUAL_STACK,
        &[
            (
                "EndpointSlice default/dual-v6",
                "\"10.244.2.42\" is not an IPv6 address",
            ),
            (
                "Service default/dual",
                "endpoint fd00:96::41 is the ClusterIP of Service default/v6only",
            ),
            (
                "Service default/dual",
                "endpoint fd00:96::41 is the ClusterIP of Service default/v6only",
            ),
            (
                "Service default/v6mapped",
                "spec.clusterIPs: ::ffff:10.96.0.43 is an IPv4-mapped address",
            ),
        ],
    ),
    (
        ENDPOINTS,
        &[
            (
                "EndpointSlice default/multi-a",
                "\"10.244.300.1\" is not an IPv4 address",
            ),
            (
                "EndpointSlice default/multi-a",
                "\"fd00::5\" is not an IPv4 address",
            ),
        ],
    ),
    (
        INVALID,
        &[
            ("EndpointSlice default/good-a", "endpoint without addresses"),
            (
                "EndpointSlice default/good-a",
                "port \"icmp\": unknown protocol \"ICMP\"",
            ),
            (
                "EndpointSlice default/good-a",
                "port \"missing\": port number is missing",
            ),
            (
                "EndpointSlice default/good-a",
                "port \"zero\": port 0 is outside 1..=65535",
            ),
            (
                "EndpointSlice default/good-b",
                "0.0.0.0 is the unspecified address",
            ),
            (
                "EndpointSlice default/good-b",
                "127.0.0.1 is a loopback address",
            ),
            (
                "EndpointSlice default/good-b",
                "224.0.0.1 is a multicast address",
            ),
            (
                "EndpointSlice default/good-b",
                "255.255.255.255 is the broadcast address",
            ),
            (
                "EndpointSlice default/unlabelled",
                "no kubernetes.io/service-name label",
            ),
            ("Service default/", "metadata.name is missing"),
            (
                "Service default/bad-affinity",
                "timeoutSeconds 0 is outside 1..=86400",
            ),
            ("Service default/bad-cidr", "invalid CIDR \"10.0.0.0/33\""),
            (
                "Service default/bad-cluster-ip",
                "spec.clusterIPs: invalid IP \"10.96.0.300\"",
            ),
            (
                "Service default/bad-external-ip",
                "spec.externalIPs: invalid IP \"not-an-ip\"",
            ),
            (
                "Service default/bad-ingress-ip",
                "status.loadBalancer.ingress[].ip: invalid IP \"1.2.3\"",
            ),
            (
                "Service default/bad-policy",
                "spec.externalTrafficPolicy: unknown policy \"Nearby\"",
            ),
            (
                "Service default/bad-port",
                "port \"huge\": port 70000 is outside 1..=65535",
            ),
            (
                "Service default/bad-port",
                "port \"zero\": port 0 is outside 1..=65535",
            ),
            ("Service default/bad-type", "unknown spec.type \"Magic\""),
            (
                "Service default/cidr-without-prefix",
                "invalid CIDR \"10.0.0.1\"",
            ),
            (
                "Service default/cluster-ip-loopback",
                "spec.clusterIPs: 127.0.0.10 is a loopback address",
            ),
            (
                "Service default/cluster-ip-unspecified",
                "spec.clusterIPs: 0.0.0.0 is the unspecified address",
            ),
            (
                "Service default/dup-ports",
                "port default/dup-ports:/TCP is defined more than once",
            ),
            (
                "Service default/external-ip-broadcast",
                "spec.externalIPs: 255.255.255.255 is the broadcast address",
            ),
            (
                "Service default/external-ip-link-local",
                "spec.externalIPs: 169.254.169.254 is a link-local address",
            ),
            (
                "Service default/external-ip-multicast",
                "spec.externalIPs: 224.0.0.251 is a multicast address",
            ),
            (
                "Service default/ingress-ip-loopback",
                "status.loadBalancer.ingress[].ip: 127.0.0.1 is a loopback address",
            ),
            (
                "Service default/loop",
                "endpoint 10.96.0.50 is the ClusterIP of Service default/good; skipped",
            ),
            (
                "Service default/np-missing",
                "port \"bad\": nodePort 70000 is outside 1..=65535",
            ),
            (
                "Service default/np-missing",
                "port \"none\": nodePort is missing",
            ),
            (
                "Service default/protocols",
                "port \"icmp\": unknown protocol \"ICMP\"",
            ),
            (
                "Service default/protocols",
                "port \"sctp\": protocol SCTP is not supported",
            ),
        ],
    ),
];

#[test]
fn problems() {
    for (i, (fixture, want)) in PROBLEMS.iter().enumerate() {
        let got = run(&[*fixture], "node-a", None).problems;
        assert_eq!(got.len(), want.len(), "fixture {i}: {got:#?}");
        for (problem, (object, fragment)) in got.iter().zip(want.iter()) {
            assert_eq!(problem.object, *object, "fixture {i}: {problem}");
            assert!(
                problem.message.contains(fragment),
                "fixture {i}: {problem} lacks {fragment:?}"
            );
        }
    }
}

#[test]
fn seed_manifests_parse_and_skip_deployments() {
    let (objects, report) = parse(&SEEDS);
    assert_eq!(report.ignored, 2, "the two Deployments");
    let names: Vec<_> = objects
        .services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["counter-lb", "counter-app", "redis"]);
}

#[test]
fn output_does_not_depend_on_input_order() {
    let (mut objects, _) = parse(&[
        FRONTENDS,
        ENDPOINTS,
        POLICIES,
        INVALID,
        COUNTER_CLUSTER,
        COUNTER_SLICES,
        DUAL_STACK,
    ]);
    let node = NodeInfo::from_nodes("node-a", &objects.nodes);
    let before = desired_state(&objects.services, &objects.slices, &node, &opts(None));
    objects.services.reverse();
    objects.slices.reverse();
    let after = desired_state(&objects.services, &objects.slices, &node, &opts(None));
    assert_eq!(before, after);
}

#[test]
fn backends_and_frontends_are_sorted_and_unique() {
    let state = run(
        &[
            FRONTENDS,
            ENDPOINTS,
            POLICIES,
            COUNTER_CLUSTER,
            COUNTER_SLICES,
            DUAL_STACK,
        ],
        "node-a",
        None,
    );
    for (id, sp) in &state.services {
        let keys: Vec<_> = sp.frontends.iter().map(|f| (f.addr, f.port)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{id}: {keys:?}");
        let keys: Vec<_> = sp.frontends_v6.iter().map(|f| (f.addr, f.port)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{id}: {keys:?}");
        for list in [&sp.cluster_backends, &sp.external_backends] {
            let keys: Vec<_> = list.iter().map(|b| (b.addr, b.port)).collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "{id}: {keys:?}");
        }
        for list in [&sp.cluster_backends_v6, &sp.external_backends_v6] {
            let keys: Vec<_> = list.iter().map(|b| (b.addr, b.port)).collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "{id}: {keys:?}");
        }
    }
}

const GOOD_OWNS_VIP: &str = "
apiVersion: v1
kind: Service
metadata: {name: good, namespace: default}
spec:
  clusterIP: 10.96.0.50
  ports: [{port: 80}]
";

fn steals_good_vip(cluster_ip: &str) -> String {
    format!(
        "
apiVersion: v1
kind: Service
metadata: {{name: steals-good-vip, namespace: default}}
spec:
  clusterIP: {cluster_ip}
  externalIPs: [10.0.0.9]
  ports: [{{port: 80}}]
"
    )
}

fn state_with_last_good(texts: &[&str], previous: &DesiredState) -> DesiredState {
    let mut next = run(texts, "node-a", None);
    keep_last_good(previous, &mut next);
    next
}

fn owner_of(state: &DesiredState, addr: [u8; 4], port: u16) -> Vec<String> {
    state
        .services
        .iter()
        .filter(|(_, sp)| {
            sp.frontends
                .iter()
                .any(|fe| fe.addr == Ipv4Addr::from(addr) && fe.port == port)
        })
        .map(|(id, _)| id.name.clone())
        .collect()
}

#[test]
fn an_invalid_edit_keeps_the_last_good_version() {
    let before = run(&[&steals_good_vip("10.96.0.60")], "node-a", None);
    let after = state_with_last_good(&[&steals_good_vip("10.96.0.300")], &before);
    assert_eq!(after.services, before.services);
    assert!(after.problems[0].message.contains("10.96.0.300"));
}

/// The VIP a Service had in its last good version went to another Service
/// while its own new version is invalid: the valid one keeps it, through
/// the invalid edit and after the fix, in the model and in the maps.
#[test]
fn a_restored_service_yields_frontends_a_valid_one_owns() {
    let steals_ok = steals_good_vip("10.96.0.50");
    let steals_bad = steals_good_vip("10.96.0.300");
    let steals_fixed = steals_good_vip("10.96.0.51");
    let first = run(&[&steals_ok], "node-a", None);
    let broken = state_with_last_good(&[GOOD_OWNS_VIP, &steals_bad], &first);
    assert_eq!(owner_of(&broken, [10, 96, 0, 50], 80), ["good"]);
    assert_eq!(owner_of(&broken, [10, 0, 0, 9], 80), ["steals-good-vip"]);
    assert!(
        broken
            .problems
            .iter()
            .any(|p| p.message.contains("without 10.96.0.50:80/TCP")),
        "{:#?}",
        broken.problems
    );
    let fixed = state_with_last_good(&[GOOD_OWNS_VIP, &steals_fixed], &broken);
    assert_eq!(owner_of(&fixed, [10, 96, 0, 50], 80), ["good"]);

    let mut w = crate::sync::fake::FakeServiceMaps::new(1 << 16);
    let mut syncer = crate::sync::Syncer::recover(&mut w).unwrap();
    let vip = lb_common::FrontendKeyV4 {
        addr: lb_common::addr::to_map(Ipv4Addr::new(10, 96, 0, 50)),
        port: 80u16.to_be(),
        proto: lb_common::PROTO_TCP,
        _pad: 0,
    };
    let owner = |w: &crate::sync::fake::FakeServiceMaps| {
        w.maps
            .frontends
            .get(&vip)
            .map(|fe| w.maps.services[&fe.svc_id].clone())
    };
    syncer.sync(&first, &mut w).unwrap();
    syncer.sync(&broken, &mut w).unwrap();
    assert_eq!(owner(&w).as_deref(), Some("default/good:/TCP"));
    syncer.sync(&fixed, &mut w).unwrap();
    assert_eq!(owner(&w).as_deref(), Some("default/good:/TCP"));
}

/// Manifests may give two Services one ClusterIP; the problem about an
/// endpoint at it names the same Service whichever arrived first (found by
/// the fuzzer in `fuzz.rs`).
#[test]
fn an_endpoint_at_a_shared_cluster_ip_is_blamed_on_one_owner_in_any_order() {
    let (mut objects, _) = parse(&["
apiVersion: v1
kind: Service
metadata: {name: b, namespace: default}
spec: {clusterIP: 10.96.0.50, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {clusterIP: 10.96.0.50, ports: [{port: 81}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-1, namespace: default, labels: {kubernetes.io/service-name: b}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.96.0.50]}]
"]);
    let node = NodeInfo::default();
    let before = desired_state(&objects.services, &objects.slices, &node, &opts(None));
    objects.services.reverse();
    let after = desired_state(&objects.services, &objects.slices, &node, &opts(None));
    assert_eq!(before, after);
    assert!(
        before
            .problems
            .iter()
            .any(|p| p.message.contains("is the ClusterIP of Service default/a;")),
        "{:?}",
        before.problems
    );
}

#[test]
fn a_node_being_deleted_or_tainted_for_deletion_is_not_eligible() {
    let node = |name: &str, extra: &str| {
        format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n{extra}---\n")
    };
    let text = [
        node("plain", ""),
        node(
            "deleting",
            "  deletionTimestamp: \"2026-12-02T10:00:00Z\"\n  finalizers: [x]\n",
        ),
        node(
            "tainted",
            "spec:\n  taints:\n  - key: ToBeDeletedByClusterAutoscaler\n    effect: NoSchedule\n",
        ),
        node(
            "other-taint",
            "spec:\n  taints:\n  - key: node.kubernetes.io/unschedulable\n    effect: NoSchedule\n",
        ),
    ]
    .concat();
    let (objects, _) = parse(&[&text]);
    assert_eq!(objects.nodes.len(), 4);
    for (name, eligible) in [
        ("plain", true),
        ("deleting", false),
        ("tainted", false),
        ("other-taint", true),
        ("absent", true),
    ] {
        assert_eq!(node_eligible(name, &objects.nodes), eligible, "{name}");
    }
}
