use serde_json::json;

use super::*;

fn svc(name: &str, created: &str, spec: serde_json::Value) -> Service {
    let mut spec_obj = json!({"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30080}]});
    for (k, v) in spec.as_object().unwrap() {
        spec_obj[k] = v.clone();
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
        "spec": spec_obj,
    }))
    .unwrap()
}

fn lb(name: &str, minute: u32) -> Service {
    svc(name, &format!("2026-01-01T00:{minute:02}:00Z"), json!({}))
}

fn with_annotation(mut s: Service, key: &str, value: &str) -> Service {
    s.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
    s
}

fn range(r: &str) -> Pools {
    Pools::parse(&[], &[r.to_string()]).unwrap()
}

/// The addresses of `family`, by Service name.
fn addrs_of(a: &Allocation, family: Family) -> BTreeMap<String, IpAddr> {
    a.addrs
        .iter()
        .filter(|((_, f), _)| *f == family)
        .map(|(((_, n), _), v)| (n.clone(), v.addr))
        .collect()
}

fn addrs(a: &Allocation) -> BTreeMap<String, IpAddr> {
    addrs_of(a, Family::V4)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn pools_parse_cidrs_and_ranges_of_both_families_and_refuse_overlaps() {
    let pools = Pools::parse(
        &["192.168.1.0/30".into(), "10.0.0.7/32".into()],
        &["192.168.2.10-192.168.2.12".into()],
    )
    .unwrap();
    let all: Vec<IpAddr> = (0..pools.size()).map(|i| pools.nth(i)).collect();
    assert_eq!(
        all,
        [
            ip("192.168.1.1"),
            ip("192.168.1.2"),
            ip("10.0.0.7"),
            ip("192.168.2.10"),
            ip("192.168.2.11"),
            ip("192.168.2.12")
        ],
        "a CIDR without its network and broadcast addresses"
    );
    let v6 = Pools::parse(
        &["fd00:10::/126".into(), "fd00:20::7/128".into()],
        &["fd00:10::200-fd00:10::202".into()],
    )
    .unwrap();
    let all: Vec<IpAddr> = (0..v6.size()).map(|i| v6.nth(i)).collect();
    assert_eq!(
        all,
        [
            ip("fd00:10::1"),
            ip("fd00:10::2"),
            ip("fd00:10::3"),
            ip("fd00:20::7"),
            ip("fd00:10::200"),
            ip("fd00:10::201"),
            ip("fd00:10::202")
        ],
        "an IPv6 CIDR without its Subnet-Router anycast address"
    );
    let both = Pools::parse(
        &["192.168.1.0/30".into(), "fd00:10::/120".into()],
        &["fd00:10::1:0-fd00:10::1:ff".into()],
    )
    .unwrap();
    assert_eq!(both.of(Family::V4).size(), 2);
    assert_eq!(both.of(Family::V6).size(), 255 + 256);
    let huge = Pools::parse(&["::/0".into()], &["::-ffff::".into()]);
    assert!(huge.unwrap_err().contains("overlap"));
    let whole = Pools::parse(&[], &["::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".into()]).unwrap();
    assert_eq!(whole.size(), u128::MAX, "saturated");
    let err = Pools::parse(
        &["fd00:10::/64".into()],
        &["fd00:10::200-fd00:10::220".into()],
    )
    .unwrap_err();
    assert!(err.contains("overlap"), "{err}");
    let err = Pools::parse(&[], &["192.168.1.1-fd00::1".into()]).unwrap_err();
    assert!(err.contains("two families"), "{err}");
    let err = Pools::parse(
        &["192.168.1.0/24".into()],
        &["192.168.1.200-192.168.1.220".into()],
    )
    .unwrap_err();
    assert!(err.contains("overlap"), "{err}");
    for bad in [
        "192.168.1.0",
        "192.168.1.0/33",
        "192.168.1.0/+8",
        "fd00::/129",
    ] {
        assert!(Pools::parse(&[bad.into()], &[]).is_err(), "{bad}");
    }
    assert!(Pools::parse(&[], &["192.168.1.9-192.168.1.1".into()]).is_err());
}

#[test]
fn an_older_service_keeps_its_address_when_others_come_and_go() {
    let pools = range("192.168.50.200-192.168.50.220");
    let opts = ModelOptions::default();
    let all: Vec<Service> = (0..10).map(|i| lb(&format!("s{i}"), i)).collect();
    let full = addrs(&allocate(&all, &pools, &opts));
    assert_eq!(full.len(), 10);
    // The same answer whatever order the objects arrive in.
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(addrs(&allocate(&reversed, &pools, &opts)), full);
    // Newer Services come later: everything older is as it was.
    for n in 0..10 {
        let fewer = addrs(&allocate(&all[..n], &pools, &opts));
        for (name, addr) in &fewer {
            assert_eq!(full[name], *addr, "{name} with {n} Services");
        }
    }
    // A removed Service moves only younger Services that had been pushed
    // past the address their hash named (by it, or by one that moves).
    let start = |name: &str| {
        pools.nth(u128::from(stable_hash(&["default".as_bytes(), name.as_bytes()])) % pools.size())
    };
    let pushed: Vec<&String> = full.keys().filter(|n| full[*n] != start(n)).collect();
    assert!(!pushed.is_empty(), "the test needs a collision");
    for gone in 0..10 {
        let mut rest = all.clone();
        rest.remove(gone);
        let after = addrs(&allocate(&rest, &pools, &opts));
        for (name, addr) in &after {
            if full[name] != *addr {
                let younger = name[1..].parse::<usize>().unwrap() > gone;
                assert!(
                    younger && pushed.contains(&name),
                    "removing s{gone} moved {name}"
                );
            }
        }
    }
}

#[test]
fn a_requested_address_is_honoured_when_in_a_pool_and_free() {
    let pools = range("192.168.50.200-192.168.50.220");
    let opts = ModelOptions::default();
    let services = [
        svc(
            "spec",
            "2026-01-01T00:01:00Z",
            json!({"loadBalancerIP": "192.168.50.210"}),
        ),
        with_annotation(
            lb("metallb", 2),
            "metallb.universe.tf/loadBalancerIPs",
            "192.168.50.211",
        ),
        with_annotation(
            lb("cilium", 3),
            "lbipam.cilium.io/ips",
            "fd00::1, 192.168.50.212",
        ),
        // Requested by an older Service already, then outside the pools.
        svc(
            "late",
            "2026-01-01T00:04:00Z",
            json!({"loadBalancerIP": "192.168.50.210"}),
        ),
        svc(
            "outside",
            "2026-01-01T00:05:00Z",
            json!({"loadBalancerIP": "10.1.1.1"}),
        ),
        // An older plain Service does not keep a younger one from its request.
        lb("plain", 0),
    ];
    let a = allocate(&services, &pools, &opts);
    let got = addrs(&a);
    assert_eq!(got["spec"], ip("192.168.50.210"));
    assert_eq!(got["metallb"], ip("192.168.50.211"));
    assert_eq!(got["cilium"], ip("192.168.50.212"));
    assert!(!got.contains_key("late") && !got.contains_key("outside"));
    assert!(![
        ip("192.168.50.210"),
        ip("192.168.50.211"),
        ip("192.168.50.212")
    ]
    .contains(&got["plain"]));
    let messages: Vec<String> = a.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        messages,
        [
            "Service default/late: no requested LoadBalancer address is free: 192.168.50.210 is used by default/spec",
            "Service default/outside: no requested LoadBalancer address is free: 10.1.1.1 is in no pool",
        ]
    );
    assert_eq!(a.exhausted, 0);
}

#[test]
fn an_exhausted_pool_leaves_the_youngest_without_and_says_so() {
    let pools = range("192.168.50.200-192.168.50.202");
    let services: Vec<Service> = (0..5).map(|i| lb(&format!("s{i}"), i)).collect();
    let a = allocate(&services, &pools, &ModelOptions::default());
    let got = addrs(&a);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["s0", "s1", "s2"]);
    assert_eq!(a.exhausted, 2);
    assert_eq!(a.problems.len(), 2);
    assert!(a.problems[0]
        .to_string()
        .starts_with("Service default/s3: no LoadBalancer address"));
    assert_eq!(
        a.usage(&pools),
        [("192.168.50.200-192.168.50.202".to_string(), 3, 0)]
    );
}

#[test]
fn only_unaddressed_load_balancers_of_our_class_and_proxy_take_part() {
    let pools = range("192.168.50.200-192.168.50.220");
    let mut with_status = lb("status", 1);
    with_status.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}))
            .unwrap(),
    );
    let mut other_proxy = lb("other-proxy", 6);
    other_proxy.metadata.labels = Some(
        [(
            "service.kubernetes.io/service-proxy-name".to_string(),
            "other".to_string(),
        )]
        .into(),
    );
    let services = [
        with_status,
        svc(
            "ours",
            "2026-01-01T00:02:00Z",
            json!({"loadBalancerClass": CLASS_L2}),
        ),
        svc(
            "theirs",
            "2026-01-01T00:03:00Z",
            json!({"loadBalancerClass": "example.com/bgp"}),
        ),
        svc(
            "nodeport",
            "2026-01-01T00:04:00Z",
            json!({"type": "NodePort"}),
        ),
        lb("unclassed", 5),
        other_proxy,
        svc(
            "wants-status-ip",
            "2026-01-01T00:07:00Z",
            json!({"loadBalancerIP": "203.0.113.5"}),
        ),
    ];
    let a = allocate(&services, &pools, &ModelOptions::default());
    let got = addrs(&a);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["ours", "unclassed"]);
    assert_eq!(a.problems.len(), 1, "{:?}", a.problems);
    assert!(
        a.problems[0]
            .message
            .contains("203.0.113.5 is used by default/status"),
        "{:?}",
        a.problems
    );
    // The address becomes a status ingress IP, which the model programs.
    let applied = a.apply(&services, &pools);
    assert_eq!(
        ingress_ips(&applied[1], Family::V4).collect::<Vec<_>>(),
        [got["ours"]]
    );
    assert_eq!(ingress_ips(&applied[2], Family::V4).count(), 0);
}

fn node(name: &str, ready: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }))
    .unwrap()
}

fn slice(service: &str, endpoints: &[(&str, bool)]) -> EndpointSlice {
    let eps: Vec<_> = endpoints
        .iter()
        .enumerate()
        .map(|(i, (node, ready))| {
            json!({"addresses": [format!("10.244.0.{}", i + 1)], "nodeName": node,
                   "conditions": {"ready": ready}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": eps,
    }))
    .unwrap()
}

#[test]
fn one_ready_node_announces_and_only_its_addresses_move_when_it_leaves() {
    let names: Vec<String> = (1..=4).map(|i| format!("node{i}")).collect();
    let v4 = (0..64).map(|i| IpAddr::V4(Ipv4Addr::new(192, 168, 50, 100 + i)));
    let v6 = (0..64).map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x200 + i)));
    for addrs in [v4.collect::<Vec<_>>(), v6.collect()] {
        let before: Vec<&String> = addrs
            .iter()
            .map(|a| announcer(*a, &names).unwrap())
            .collect();
        for n in &names {
            assert!(before.contains(&n), "{n} announces something of 64");
        }
        let rest: Vec<String> = names[1..].to_vec();
        for (a, was) in addrs.iter().zip(&before) {
            let now = announcer(*a, &rest).unwrap();
            if *was != "node1" {
                assert_eq!(now, *was, "{a} moved without cause");
            }
        }
        assert_eq!(announcer(addrs[0], &Vec::<String>::new()), None);
    }
}

#[test]
fn announcements_follow_ready_nodes_and_local_endpoints() {
    let pools = range("192.168.50.200-192.168.50.220");
    let services = [
        lb("cluster", 1),
        svc(
            "local",
            "2026-01-01T00:02:00Z",
            json!({"externalTrafficPolicy": "Local"}),
        ),
    ];
    let a = allocate(&services, &pools, &ModelOptions::default());
    let nodes = [
        node("node1", "True"),
        node("node2", "True"),
        node("node3", "False"),
    ];
    let slices = [slice(
        "local",
        &[("node2", true), ("node1", false), ("node3", true)],
    )];
    let ann = announcements(&services, &slices, &ready_nodes(&nodes), &a);
    assert_eq!(ann.len(), 2);
    let by: BTreeMap<&str, Option<&str>> = ann
        .iter()
        .map(|x| (x.service.1.as_str(), x.node.as_deref()))
        .collect();
    let ready = ["node1".to_string(), "node2".to_string()];
    let cluster = announcer(
        a.addrs[&(("default".into(), "cluster".into()), Family::V4)].addr,
        &ready,
    );
    assert_eq!(by["cluster"], cluster.map(String::as_str));
    assert_eq!(
        by["local"],
        Some("node2"),
        "the one Ready node with a ready endpoint"
    );
    let ann = announcements(&services, &[], &ready_nodes(&nodes), &a);
    assert!(ann
        .iter()
        .any(|x| x.service.1 == "local" && x.node.is_none()));
    assert!(announcements(&services, &slices, &BTreeSet::new(), &a)
        .iter()
        .all(|x| x.node.is_none()));
}

fn with_ingress(mut s: Service, ip: &str) -> Service {
    s.status = Some(
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}}))
            .unwrap(),
    );
    s
}

#[test]
fn an_address_recorded_in_the_status_stays_with_its_service() {
    let pools = range("192.168.50.200-192.168.50.220");
    let services = [lb("a", 1), lb("b", 2), lb("c", 3)];
    let first = allocate(&services, &pools, &ModelOptions::default());
    // The status writer records the allocation; allocating again from the
    // recorded statuses gives the same addresses, and the statuses wanted
    // are the ones written.
    let written: Vec<Service> = services
        .iter()
        .map(|s| {
            let ingress = wanted_ingress(s, &first, &pools);
            with_ingress(s.clone(), ingress[0].ip.as_deref().unwrap())
        })
        .collect();
    let again = allocate(&written, &pools, &ModelOptions::default());
    assert_eq!(again, first);
    for s in &written {
        assert_eq!(wanted_ingress(s, &again, &pools), ingress_of(s));
    }
    let opts = ModelOptions::default();
    assert_eq!(status_changes(&services, &first, &pools, &opts).len(), 3);
    assert_eq!(status_changes(&written, &again, &pools, &opts), []);
    // An older Service requesting a recorded address does not take it:
    // once written, an address stays where it is.
    let b_addr = first.addrs[&(("default".into(), "b".into()), Family::V4)]
        .addr
        .to_string();
    let mut with_request = written.clone();
    with_request.push(svc(
        "old",
        "2025-01-01T00:00:00Z",
        json!({"loadBalancerIP": b_addr}),
    ));
    let a = allocate(&with_request, &pools, &ModelOptions::default());
    assert_eq!(addrs(&a)["b"].to_string(), b_addr);
    assert!(!addrs(&a).contains_key("old"));
    // A recorded address of two Services stays with the older one only.
    let dup = with_ingress(lb("d", 4), &b_addr);
    let a = allocate(&[written[1].clone(), dup], &pools, &ModelOptions::default());
    assert_eq!(addrs(&a)["b"].to_string(), b_addr);
    assert_ne!(addrs(&a)["d"].to_string(), b_addr);
}

#[test]
fn a_service_leaving_the_pools_keeps_its_address_taken_until_its_status_is_cleared() {
    let pools = range("192.168.50.200-192.168.50.200");
    let left = with_ingress(
        svc("left", "2026-01-01T00:01:00Z", json!({"type": "NodePort"})),
        "192.168.50.200",
    );
    let services = [left.clone(), lb("new", 2)];
    let a = allocate(&services, &pools, &ModelOptions::default());
    assert!(a.addrs.is_empty());
    assert_eq!(a.exhausted, 1);
    assert!(wanted_ingress(&left, &a, &pools).is_empty(), "cleared");
    let changes = status_changes(&services, &a, &pools, &ModelOptions::default());
    assert_eq!(changes, [(("default".into(), "left".into()), vec![])]);
    let mut cleared = left;
    cleared.status = None;
    let a = allocate(&[cleared, lb("new", 2)], &pools, &ModelOptions::default());
    assert_eq!(addrs(&a)["new"], ip("192.168.50.200"));
}

fn dual(name: &str, minute: u32, families: &[&str]) -> Service {
    svc(
        name,
        &format!("2026-01-01T00:{minute:02}:00Z"),
        json!({"ipFamilies": families, "ipFamilyPolicy": "PreferDualStack"}),
    )
}

fn both_pools() -> Pools {
    Pools::parse(
        &[],
        &[
            "192.168.50.200-192.168.50.220".into(),
            "fd00:10::200-fd00:10::220".into(),
        ],
    )
    .unwrap()
}

#[test]
fn a_dual_stack_service_gets_one_address_per_family_and_single_stacks_one() {
    let pools = both_pools();
    let services = [
        dual("both", 1, &["IPv6", "IPv4"]),
        dual("six", 2, &["IPv6"]),
        dual("four", 3, &["IPv4"]),
        lb("plain", 4),
        // A hand-written manifest without ipFamilies: its cluster IP's.
        svc(
            "manifest6",
            "2026-01-01T00:05:00Z",
            json!({"clusterIP": "fd00:96::1"}),
        ),
    ];
    let a = allocate(&services, &pools, &ModelOptions::default());
    let v4 = addrs_of(&a, Family::V4);
    let v6 = addrs_of(&a, Family::V6);
    assert_eq!(v4.keys().collect::<Vec<_>>(), ["both", "four", "plain"]);
    assert_eq!(v6.keys().collect::<Vec<_>>(), ["both", "manifest6", "six"]);
    assert!(v6
        .values()
        .all(|a| pools.of(Family::V6).pool_of(*a).is_some()));
    // IPv4 is allocated as it was without IPv6 pools or Services.
    let v4_only = range("192.168.50.200-192.168.50.220");
    let alone = allocate(&services, &v4_only, &ModelOptions::default());
    assert_eq!(addrs(&alone), v4);
    assert!(addrs_of(&alone, Family::V6).is_empty());
    // The status lists IPv4, then IPv6; once written, it is kept.
    let ingress = wanted_ingress(&services[0], &a, &pools);
    let ips: Vec<&str> = ingress.iter().map(|i| i.ip.as_deref().unwrap()).collect();
    assert_eq!(ips, [v4["both"].to_string(), v6["both"].to_string()]);
    assert!(ingress.iter().all(|i| i.ip_mode.as_deref() == Some("VIP")));
    let mut written = services[0].clone();
    written.status =
        Some(serde_json::from_value(json!({"loadBalancer": {"ingress": ingress}})).unwrap());
    let again = allocate(
        &[written.clone(), dual("older", 0, &["IPv4", "IPv6"])],
        &pools,
        &ModelOptions::default(),
    );
    assert_eq!(addrs_of(&again, Family::V6)["both"], v6["both"]);
    assert_eq!(addrs_of(&again, Family::V4)["both"], v4["both"]);
    assert_eq!(
        status_changes(&[written], &again, &pools, &ModelOptions::default()),
        []
    );
    let ann = announcements(&services, &[], &BTreeSet::from(["n1".to_string()]), &a);
    assert_eq!(ann.len(), 6);
    assert!(ann.iter().all(|x| x.node.as_deref() == Some("n1")));
}

#[test]
fn requested_addresses_are_honoured_per_family() {
    let pools = both_pools();
    let services = [
        with_annotation(
            dual("both", 1, &["IPv4", "IPv6"]),
            "metallb.universe.tf/loadBalancerIPs",
            "fd00:10::210, 192.168.50.210",
        ),
        // IPv6 requested only: IPv4 from the hash.
        with_annotation(
            dual("v6asked", 2, &["IPv4", "IPv6"]),
            "lbipam.cilium.io/ips",
            "fd00:10::211",
        ),
        svc(
            "taken",
            "2026-01-01T00:03:00Z",
            json!({"ipFamilies": ["IPv6"], "loadBalancerIP": "fd00:10::210"}),
        ),
        svc(
            "outside",
            "2026-01-01T00:04:00Z",
            json!({"ipFamilies": ["IPv6"], "loadBalancerIP": "fd00:99::1"}),
        ),
    ];
    let a = allocate(&services, &pools, &ModelOptions::default());
    let v4 = addrs_of(&a, Family::V4);
    let v6 = addrs_of(&a, Family::V6);
    assert_eq!(v4["both"], ip("192.168.50.210"));
    assert_eq!(v6["both"], ip("fd00:10::210"));
    assert_eq!(v6["v6asked"], ip("fd00:10::211"));
    assert!(v4.contains_key("v6asked"));
    assert!(!v6.contains_key("taken") && !v6.contains_key("outside"));
    let messages: Vec<String> = a.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        messages,
        [
            "Service default/outside: no requested LoadBalancer address is free: fd00:99::1 is in no pool",
            "Service default/taken: no requested LoadBalancer address is free: fd00:10::210 is used by default/both",
        ]
    );
}

#[test]
fn an_exhausted_ipv6_pool_is_reported_and_leaves_ipv4_alone() {
    let pools = Pools::parse(
        &[],
        &[
            "192.168.50.200-192.168.50.220".into(),
            "fd00:10::200-fd00:10::201".into(),
        ],
    )
    .unwrap();
    let services: Vec<Service> = (0..4)
        .map(|i| dual(&format!("s{i}"), i, &["IPv4", "IPv6"]))
        .collect();
    let a = allocate(&services, &pools, &ModelOptions::default());
    assert_eq!(addrs_of(&a, Family::V4).len(), 4);
    assert_eq!(
        addrs_of(&a, Family::V6).keys().collect::<Vec<_>>(),
        ["s0", "s1"]
    );
    assert_eq!(a.exhausted, 2);
    let messages: Vec<String> = a.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        messages,
        [
            "Service default/s2: no LoadBalancer address: every address of the IPv6 pools is in use",
            "Service default/s3: no LoadBalancer address: every address of the IPv6 pools is in use",
        ]
    );
    assert_eq!(
        a.usage(&pools),
        [
            ("192.168.50.200-192.168.50.220".to_string(), 4, 17),
            ("fd00:10::200-fd00:10::201".to_string(), 2, 0)
        ]
    );
}

#[test]
fn a_required_family_without_a_pool_is_reported_and_the_other_served() {
    let pools = range("192.168.50.200-192.168.50.220");
    let require = svc(
        "require",
        "2026-01-01T00:01:00Z",
        json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}),
    );
    let services = [require, dual("prefer", 2, &["IPv4", "IPv6"])];
    let a = allocate(&services, &pools, &ModelOptions::default());
    assert_eq!(
        addrs_of(&a, Family::V4).keys().collect::<Vec<_>>(),
        ["prefer", "require"]
    );
    assert!(addrs_of(&a, Family::V6).is_empty());
    let messages: Vec<String> = a.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0].contains("default/require") && messages[0].contains("no IPv6 pool"),
        "{messages:?}"
    );
    let none = allocate(&services, &Pools::default(), &ModelOptions::default());
    assert!(
        none.problems.is_empty(),
        "no pools at all: nothing to report"
    );
}
