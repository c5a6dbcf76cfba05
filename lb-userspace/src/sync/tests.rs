use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::addr::from_map_v6;

use super::{fake::FakeServiceMaps, Syncer};
use crate::model::{
    testing::{backend, backend_at, id, service, state},
    Backend, DesiredState, Frontend, FrontendKind, Proto, ServicePort,
};

fn fresh() -> (Syncer, FakeServiceMaps) {
    let mut w = FakeServiceMaps::new(1 << 20);
    (Syncer::recover(&mut w).unwrap(), w)
}

#[test]
fn cold_sync_publishes_complete_services_only() {
    let (mut s, mut w) = fresh();
    let r = s
        .sync(
            &state(&[("a", service(1, &[1, 2, 3])), ("b", service(2, &[3, 4]))]),
            &mut w,
        )
        .unwrap();
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    assert_eq!((r.services, r.frontends, r.backends), (2, 4, 4));
    let first_frontend = w
        .log
        .iter()
        .position(|op| op.starts_with("frontend"))
        .unwrap();
    let last_ring = w.log.iter().rposition(|op| op.starts_with("ring")).unwrap();
    assert!(last_ring < first_frontend, "{:#?}", w.log);
}

#[test]
fn resync_of_the_same_state_writes_nothing() {
    let (mut s, mut w) = fresh();
    let desired = state(&[("a", service(1, &[1, 2]))]);
    s.sync(&desired, &mut w).unwrap();
    let before = w.maps.clone();
    assert_eq!(s.sync(&desired, &mut w).unwrap().writes, 0);
    assert_eq!(format!("{:?}", w.maps), format!("{before:?}"));
}

/// kube-proxy's full resyncs are the syncs that plan every Service port
/// against the maps read back; the others only touch what changed.
#[test]
fn a_sync_is_full_after_reading_the_maps_back_and_partial_otherwise() {
    let (mut s, mut w) = fresh();
    let desired = state(&[("a", service(1, &[1, 2]))]);
    assert!(s.sync(&desired, &mut w).unwrap().full);
    assert!(!s.sync(&desired, &mut w).unwrap().full);
    let changed = state(&[("a", service(1, &[2, 3]))]);
    w.fail_at = Some(w.log.len());
    s.sync(&changed, &mut w).unwrap_err();
    w.fail_at = None;
    assert!(s.sync(&changed, &mut w).unwrap().full);
    assert!(!s.sync(&changed, &mut w).unwrap().full);
}

#[test]
fn endpoint_change_swaps_the_ring_and_keeps_ids() {
    let (mut s, mut w) = fresh();
    s.sync(
        &state(&[("a", service(1, &[1, 2])), ("b", service(2, &[7]))]),
        &mut w,
    )
    .unwrap();
    let svc_ids = w.maps.services.clone();
    let b_frontends: Vec<_> = w
        .maps
        .frontends
        .iter()
        .filter(|(_, v)| v.svc_id == 2)
        .map(|(k, v)| (*k, *v))
        .collect();
    w.log.clear();
    s.sync(
        &state(&[("a", service(1, &[2, 3])), ("b", service(2, &[7]))]),
        &mut w,
    )
    .unwrap();
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    assert_eq!(w.maps.services, svc_ids);
    // Service b untouched; the retired backend .1 removed only after a's frontends moved.
    for (k, v) in &b_frontends {
        assert_eq!(w.maps.frontends.get(k), Some(v));
    }
    let removed = w.log.iter().position(|op| op == "backend 1").unwrap();
    let moved = w
        .log
        .iter()
        .rposition(|op| op.starts_with("frontend"))
        .unwrap();
    assert!(moved < removed, "{:#?}", w.log);
    assert!(
        w.log.len() < 12,
        "a one-endpoint change is a handful of writes: {:#?}",
        w.log
    );
}

#[test]
fn removal_clears_everything_the_service_owned() {
    let (mut s, mut w) = fresh();
    s.sync(
        &state(&[("a", service(1, &[1, 2])), ("b", service(2, &[3]))]),
        &mut w,
    )
    .unwrap();
    s.sync(&state(&[("b", service(2, &[3]))]), &mut w).unwrap();
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    assert_eq!(w.maps.frontends.len(), 2);
    assert_eq!(w.maps.backends.len(), 1);
    assert_eq!(w.maps.services.len(), 1);
    let (mut s2, mut w2) = fresh();
    s2.sync(&state(&[("b", service(2, &[3]))]), &mut w2)
        .unwrap();
    assert_eq!(w.maps.filter, w2.maps.filter, "no stale filter bits");
    s.sync(&state(&[]), &mut w).unwrap();
    assert!(w.maps.frontends.is_empty() && w.maps.backends.is_empty() && w.maps.filter.is_empty());
}

/// Removals and changes interleaved in name order (before, between and
/// after the kept Service ports), added and removed in the same sync.
#[test]
fn one_sync_adds_changes_and_removes_in_any_name_order() {
    let (mut s, mut w) = fresh();
    let all: Vec<(&str, ServicePort)> = (1..=5u8)
        .map(|i| (["a", "b", "c", "d", "e"][i as usize - 1], service(i, &[i])))
        .collect();
    s.sync(&state(&all), &mut w).unwrap();
    let next = state(&[
        ("b", service(2, &[2])),
        ("bb", service(6, &[6])),
        ("d", service(4, &[4, 7])),
    ]);
    s.sync(&next, &mut w).unwrap();
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    let mut names: Vec<String> = w.maps.services.values().cloned().collect();
    names.sort();
    let (mut s2, mut w2) = fresh();
    s2.sync(&next, &mut w2).unwrap();
    let mut expected: Vec<String> = w2.maps.services.values().cloned().collect();
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(w.maps.frontends.len(), w2.maps.frontends.len());
    assert_eq!(w.maps.backends.len(), 4);
    assert_eq!(w.maps.filter, w2.maps.filter);
    assert_eq!(s.sync(&next, &mut w).unwrap().writes, 0);
}

#[test]
fn service_without_backends_is_published_with_an_empty_ring() {
    let (mut s, mut w) = fresh();
    s.sync(&state(&[("a", service(1, &[]))]), &mut w).unwrap();
    assert!(w.violations.is_empty());
    assert!(w.maps.frontends.values().all(|v| v.ring_size == 0));
    s.sync(&state(&[("a", service(1, &[5]))]), &mut w).unwrap();
    assert!(w.maps.frontends.values().all(|v| v.ring_size > 0));
}

#[test]
fn restart_over_the_same_maps_keeps_ids_and_writes_nothing() {
    let (mut s, mut w) = fresh();
    // "empty" has no backends: its empty ring sits at offset 0 beside a real one.
    let desired = state(&[
        ("a", service(1, &[1, 2, 3])),
        ("b", service(2, &[3, 4])),
        ("empty", service(4, &[])),
    ]);
    s.sync(&desired, &mut w).unwrap();
    let before = w.maps.clone();
    let mut restarted = Syncer::recover(&mut w).unwrap();
    assert_eq!(restarted.sync(&desired, &mut w).unwrap().writes, 0);
    assert_eq!(format!("{:?}", w.maps), format!("{before:?}"));
    // And it goes on allocating without clashing with what it recovered.
    restarted
        .sync(
            &state(&[("a", service(1, &[1, 2, 3])), ("c", service(3, &[9]))]),
            &mut w,
        )
        .unwrap();
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    let ids: std::collections::BTreeSet<u32> = w.maps.services.keys().copied().collect();
    assert_eq!(ids.len(), 2);
}

/// A new program (agent upgrade or restart) comes with an empty filter:
/// recovering over the pinned maps refills it before any sync, so the
/// program is never attached with Services it would pass as "not ours".
#[test]
fn restart_with_a_new_program_refills_its_filter() {
    let (mut s, mut w) = fresh();
    let desired = state(&[("a", service(1, &[1, 2])), ("b", service(2, &[2, 3]))]);
    s.sync(&desired, &mut w).unwrap();
    let before = w.maps.filter.clone();
    assert!(!before.is_empty());
    w.maps.filter.clear();
    w.maps.filter.insert(7, 1 << 7);
    let mut restarted = Syncer::recover(&mut w).unwrap();
    assert_eq!(
        w.maps.filter, before,
        "refilled exactly, stray bits cleared"
    );
    assert_eq!(restarted.sync(&desired, &mut w).unwrap().writes, 0);
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
}

#[test]
fn policies_reach_the_frontends() {
    use lb_common::{BE_LOCAL, FE_DROP_EMPTY, FE_EXTERNAL, FE_SOURCE_RANGES};
    let (mut s, mut w) = fresh();
    let mut sp = service(1, &[1, 2]);
    sp.external_backends = vec![Backend {
        is_local: true,
        ..backend(2)
    }];
    sp.cluster_backends[1].is_local = true;
    sp.external_policy_local = true;
    sp.session_affinity_timeout_s = Some(10_800);
    sp.load_balancer_source_ranges = vec![(Ipv4Addr::new(203, 0, 113, 0), 24)];
    s.sync(&state(&[("a", sp)]), &mut w).unwrap();
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    let nodeport = w
        .maps
        .frontends
        .iter()
        .find(|(k, _)| k.port != 80u16.to_be())
        .unwrap();
    let clusterip = w
        .maps
        .frontends
        .iter()
        .find(|(k, _)| k.port == 80u16.to_be())
        .unwrap();
    assert_eq!(
        nodeport.1.flags,
        FE_EXTERNAL | FE_DROP_EMPTY | FE_SOURCE_RANGES
    );
    assert_eq!(clusterip.1.flags, 0);
    assert!(w
        .maps
        .frontends
        .values()
        .all(|v| v.affinity_timeout_s == 10_800));
    assert_ne!(
        nodeport.1.ring_offset, clusterip.1.ring_offset,
        "external ring has only local backends"
    );
    // NodePort addresses are node addresses: unknown ports there are not rejected.
    let addr =
        |key: &lb_common::FrontendKeyV4| std::net::IpAddr::V4(lb_common::addr::from_map(key.addr));
    assert!(w.maps.addrs.contains_key(&addr(clusterip.0)));
    assert!(!w.maps.addrs.contains_key(&addr(nodeport.0)));
    let local: Vec<_> = w
        .maps
        .backends
        .values()
        .filter(|b| b.flags & BE_LOCAL != 0)
        .collect();
    assert_eq!(local.len(), 1);
    let range_at = w
        .log
        .iter()
        .position(|op| op.starts_with("source range"))
        .unwrap();
    let first_frontend = w
        .log
        .iter()
        .position(|op| op.starts_with("frontend"))
        .unwrap();
    assert!(range_at < first_frontend);
    s.sync(&state(&[("a", service(1, &[1, 2]))]), &mut w)
        .unwrap();
    assert!(w.maps.source_ranges.is_empty());
}

/// What a packet would meet, independent of the ids a sync handed out:
/// each frontend with its Service's name, flags and ring members, and the
/// address sets; two maps that serve the same are equal in this view.
fn view(w: &FakeServiceMaps) -> String {
    let m = &w.maps;
    let backend = |id: &u32| {
        let b = &m.backends[id];
        format!(
            "{}:{}",
            lb_common::addr::from_map(b.addr),
            u16::from_be(b.port)
        )
    };
    let mut out = String::new();
    for (k, v) in &m.frontends {
        let members: std::collections::BTreeSet<String> = (v.ring_offset
            ..v.ring_offset + v.ring_size)
            .map(|slot| backend(&m.slots[slot as usize]))
            .collect();
        out += &format!(
            "{}:{} {} flags {} ring {} {members:?}\n",
            lb_common::addr::from_map(k.addr),
            u16::from_be(k.port),
            m.services[&v.svc_id],
            v.flags,
            v.ring_size
        );
    }
    let backend_v6 = |id: &u32| {
        let b = &m.backends_v6[id];
        format!("[{}]:{}", from_map_v6(b.addr), u16::from_be(b.port))
    };
    for (k, v) in &m.frontends_v6 {
        let members: std::collections::BTreeSet<String> = (v.ring_offset
            ..v.ring_offset + v.ring_size)
            .map(|slot| backend_v6(&m.slots[slot as usize]))
            .collect();
        out += &format!(
            "[{}]:{} {} flags {} ring {} {members:?}\n",
            from_map_v6(k.addr),
            u16::from_be(k.port),
            m.services[&v.svc_id],
            v.flags,
            v.ring_size
        );
    }
    let backends: std::collections::BTreeSet<String> = m
        .backends
        .keys()
        .map(backend)
        .chain(m.backends_v6.keys().map(backend_v6))
        .collect();
    let ranges: std::collections::BTreeSet<String> = m
        .source_ranges
        .iter()
        .map(|(id, a, l)| format!("{} {a}/{l}", m.services[id]))
        .collect();
    out += &format!(
        "services {:?}\naddrs {:?}\nbackends {backends:?}\nfilter {:?}\nranges {ranges:?}\n",
        m.services
            .values()
            .collect::<std::collections::BTreeSet<_>>(),
        m.addrs.keys().collect::<Vec<_>>(),
        m.filter,
    );
    out
}

fn synced_fresh(desired: &DesiredState, room: super::Room) -> FakeServiceMaps {
    let mut w = FakeServiceMaps::with_room(room);
    let mut s = Syncer::recover(&mut w).unwrap();
    s.sync(desired, &mut w).unwrap();
    w
}

fn room() -> super::Room {
    FakeServiceMaps::new(1 << 20).room
}

fn many(n: u8, backends: &[u8]) -> Vec<(String, ServicePort)> {
    (1..=n)
        .map(|i| (format!("svc-{i:03}"), service(i, backends)))
        .collect()
}

fn state_of(list: &[(String, ServicePort)]) -> DesiredState {
    let named: Vec<(&str, ServicePort)> =
        list.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
    state(&named)
}

/// Services that would overflow a map are refused by name before anything
/// of theirs is written; the rest are applied; retrying leaks no ids; once
/// the config fits again the maps equal a fresh sync's.
#[test]
fn what_does_not_fit_is_refused_per_service_and_nothing_leaks() {
    for (map, room) in [
        (
            "FRONTENDS_V4",
            super::Room {
                frontends: 10,
                ..room()
            },
        ),
        ("ADDRS_V4", super::Room { addrs: 5, ..room() }),
        (
            "SVC_NAMES",
            super::Room {
                services: 6,
                ..room()
            },
        ),
        // Five Services of two 211-slot rings, and room for the two
        // 101-slot rings of one changed Service beside its old ones.
        (
            "MAGLEV_SLOTS",
            super::Room {
                ring_slots: 5 * 2 * 211 + 2 * 101,
                ..room()
            },
        ),
    ] {
        let mut w = FakeServiceMaps::with_room(room);
        let mut s = Syncer::recover(&mut w).unwrap();
        let eight = state_of(&many(8, &[1, 2]));
        let r = s.sync(&eight, &mut w).unwrap();
        let refused: Vec<String> = r.refused.iter().map(|f| f.service.name.clone()).collect();
        assert_eq!(refused, ["svc-006", "svc-007", "svc-008"], "{map}");
        assert!(r.refused.iter().all(|f| f.reason.contains(map)), "{r:#?}");
        assert_eq!(w.maps.services.len(), 5, "{map}");
        let five = state_of(&many(5, &[1, 2]));
        assert_eq!(view(&w), view(&synced_fresh(&five, room)), "{map}");
        for _ in 0..50 {
            let again = s.sync(&eight, &mut w).unwrap();
            assert_eq!((again.writes, again.refused.len()), (0, 3), "{map}");
        }
        // An unrelated change is still applied while three stay refused.
        let mut changed = many(8, &[1, 2]);
        changed[0].1 = service(1, &[3]);
        s.sync(&state_of(&changed), &mut w).unwrap();
        changed.truncate(5);
        assert_eq!(
            view(&w),
            view(&synced_fresh(&state_of(&changed), room)),
            "{map}"
        );
        // Back to a config that fits: everything refused before is applied.
        let four = state_of(&many(4, &[1, 2]));
        assert!(s.sync(&four, &mut w).unwrap().refused.is_empty());
        let again = s.sync(&four, &mut w).unwrap();
        assert_eq!(again.writes, 0);
        assert_eq!(view(&w), view(&synced_fresh(&four, room)), "{map}");
        assert!(
            w.maps.services.keys().all(|&id| id <= 5),
            "ids reused, not leaked"
        );
        assert!(w.violations.is_empty(), "{:#?}", w.violations);
    }
}

/// A write that fails at any point of a sync that adds, changes and
/// removes Services: the packet path never sees a half-built Service, and
/// the next sync (same agent, or a restarted one over the same maps)
/// converges to exactly what a fresh sync writes.
#[test]
fn a_sync_failing_at_any_write_converges_on_the_next() {
    let before = state(&[
        ("a", service(1, &[1, 2])),
        ("b", service(2, &[3])),
        ("c", service(3, &[4, 5])),
    ]);
    let mut ranged = service(4, &[5, 6]);
    ranged.load_balancer_source_ranges = vec![(Ipv4Addr::new(203, 0, 113, 0), 24)];
    let after = state(&[
        ("a", service(1, &[2, 7])),
        ("c", service(3, &[4, 5])),
        ("d", ranged),
    ]);
    let want = view(&synced_fresh(&after, room()));
    let mut failures = 0;
    for restart in [false, true] {
        for k in 0.. {
            let (mut s, mut w) = fresh();
            s.sync(&before, &mut w).unwrap();
            w.fail_at = Some(w.log.len() + k);
            if s.sync(&after, &mut w).is_ok() {
                assert!(k > 3, "the change takes more than {k} writes");
                break;
            }
            failures += 1;
            w.fail_at = None;
            if restart {
                s = Syncer::recover(&mut w).unwrap();
            }
            s.sync(&after, &mut w).unwrap();
            assert_eq!(view(&w), want, "failed at write {k}, restart {restart}");
            assert!(
                w.violations.is_empty(),
                "failed at write {k}: {:#?}",
                w.violations
            );
            let ids: Vec<u32> = w.maps.services.keys().copied().collect();
            assert!(ids.iter().all(|&id| id <= 4), "{ids:?}");
            assert_eq!(s.sync(&after, &mut w).unwrap().writes, 0);
        }
    }
    assert!(failures > 20, "{failures}");
}

/// Pinned maps holding what no Service owns (an address, a backend, a
/// frontend of an unnamed id, an unreadable name, a source range): the
/// restarted agent serves on, and its first sync leaves exactly what a
/// fresh sync writes.
#[test]
fn a_restart_over_stray_pinned_entries_converges() {
    let desired = state(&[("a", service(1, &[1, 2])), ("b", service(2, &[3]))]);
    let (mut s, mut w) = fresh();
    s.sync(&desired, &mut w).unwrap();
    let stray = Ipv4Addr::new(10, 96, 9, 9);
    w.maps.addrs.insert(stray.into(), ());
    w.maps.backends.insert(
        77,
        lb_common::BackendV4 {
            addr: lb_common::addr::to_map(stray),
            port: 1u16.to_be(),
            flags: 0,
        },
    );
    let (key, value) = w
        .maps
        .frontends
        .iter()
        .next()
        .map(|(k, v)| (*k, *v))
        .unwrap();
    let orphan_key = lb_common::FrontendKeyV4 {
        port: 9999u16.to_be(),
        ..key
    };
    w.maps.frontends.insert(
        orphan_key,
        lb_common::FrontendValue {
            svc_id: 40,
            ..value
        },
    );
    w.maps.services.insert(41, "not a service port name".into());
    w.maps
        .source_ranges
        .insert((42, IpAddr::V4(Ipv4Addr::new(198, 51, 100, 0)), 24));
    let mut restarted = Syncer::recover(&mut w).unwrap();
    assert!(
        w.maps.frontends.contains_key(&orphan_key),
        "serves on until the sync"
    );
    restarted.sync(&desired, &mut w).unwrap();
    assert_eq!(view(&w), view(&synced_fresh(&desired, room())));
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    // Ids the strays held are free again.
    let more: Vec<(String, ServicePort)> = (3..=60)
        .map(|i| (format!("s{i}"), service(i, &[1])))
        .collect();
    restarted.sync(&state_of(&more), &mut w).unwrap();
    assert!(w.maps.services.keys().all(|&id| id <= 60));
}

/// The longest names Kubernetes allows are stored whole (a restarted agent
/// reads its ids back by them); a name no Service can have is refused.
#[test]
fn long_names_are_stored_whole_and_unencodable_ones_refused() {
    let (mut s, mut w) = fresh();
    let long = super::ServicePortId {
        namespace: "n".repeat(63),
        name: "s".repeat(63),
        port_name: "p".repeat(15),
        protocol: Proto::Udp,
    };
    let odd = super::ServicePortId {
        name: "a:b".into(),
        ..id("x")
    };
    let desired = DesiredState {
        services: [
            (long.clone(), service(1, &[1])),
            (odd.clone(), service(2, &[2])),
        ]
        .into(),
        problems: Vec::new(),
    };
    let r = s.sync(&desired, &mut w).unwrap();
    assert_eq!(r.refused.len(), 1);
    assert_eq!(r.refused[0].service, odd);
    assert_eq!(w.maps.services.values().next(), Some(&long.to_string()));
    let mut restarted = Syncer::recover(&mut w).unwrap();
    assert_eq!(restarted.sync(&desired, &mut w).unwrap().writes, 0);
}

#[test]
fn removed_ipv6_backends_lose_their_udp_flows_only() {
    use super::{fake::FakeNodeMaps, stale};
    use lb_common::{addr::to_map_v6, CtKey, CtKeyV6, CtValueV6, PROTO_TCP, PROTO_UDP};
    let mut maps = FakeNodeMaps::default();
    let addr = |last| Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, last);
    let (gone, kept) = (addr(1), addr(2));
    let vip = (
        to_map_v6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 10)),
        53u16.to_be(),
    );
    // One client port per flow: each needs a forward entry of its own.
    for (port, backend, proto) in [
        (40000u16, gone, PROTO_UDP),
        (40001, gone, PROTO_TCP),
        (40002, kept, PROTO_UDP),
    ] {
        let client = (to_map_v6(addr(9)), port.to_be());
        let backend = (to_map_v6(backend), 5353u16.to_be());
        let mut to_backend = CtValueV6::default();
        (to_backend.nat_addr, to_backend.nat_port) = backend;
        maps.ct_v6
            .insert(CtKeyV6::forward(client, vip, proto), to_backend);
        maps.ct_v6
            .insert(CtKeyV6::reply(backend, client, proto), CtValueV6::default());
    }
    let forgotten = stale::forget(&mut maps, &[], &[(3, gone, 5353)]).unwrap();
    assert_eq!(
        forgotten,
        stale::Forgotten {
            entries: 2,
            flows: 0,
            flows_v6: 1
        },
        "both entries of the UDP flow to the removed backend"
    );
    assert_eq!(
        maps.ct_v6.len(),
        4,
        "its TCP flow and the other backend's stay"
    );
    assert!(maps
        .ct_v6
        .keys()
        .all(|k| k.proto == PROTO_TCP || k.src_addr != to_map_v6(gone)));
}

#[test]
fn removed_backends_lose_their_udp_flows_and_affinities_only() {
    use lb_common::{
        addr::to_map, sock::SockAffinityKeyV4, AffinityKeyV4, AffinityValue, CtKey, CtKeyV4,
        CtValueV4, FrontendKeyV4, CT_DIR_FORWARD, PROTO_TCP, PROTO_UDP,
    };

    use super::{fake::FakeNodeMaps, stale};

    let net = |(a, p): (Ipv4Addr, u16)| (to_map(a), p.to_be());
    let client = to_map(Ipv4Addr::new(198, 51, 100, 7));
    let vip = net((Ipv4Addr::new(10, 96, 0, 1), 53));
    let (gone, kept) = (
        (Ipv4Addr::new(10, 0, 0, 1), 53),
        (Ipv4Addr::new(10, 0, 0, 2), 53),
    );
    let mut maps = FakeNodeMaps::default();
    for (i, (proto, backend)) in [(PROTO_UDP, gone), (PROTO_UDP, kept), (PROTO_TCP, gone)]
        .into_iter()
        .enumerate()
    {
        let port = (40000 + i as u16).to_be();
        let forward = CtKeyV4 {
            src_addr: client,
            dst_addr: vip.0,
            src_port: port,
            dst_port: vip.1,
            proto,
            dir: CT_DIR_FORWARD,
            _pad: 0,
        };
        let to = net(backend);
        let value = CtValueV4 {
            nat_addr: to.0,
            nat_port: to.1,
            ..Default::default()
        };
        maps.ct.insert(forward, value);
        let reply = CtKeyV4::reply(to, (client, port), proto);
        maps.ct.insert(reply, CtValueV4::default());
    }
    let frontend = FrontendKeyV4 {
        addr: vip.0,
        port: vip.1,
        proto: PROTO_UDP,
        _pad: 0,
    };
    let to_backend = |backend_id| AffinityValue {
        backend_id,
        ..Default::default()
    };
    for (client_addr, backend_id) in [(client, 1), (client + 1, 2)] {
        let key = AffinityKeyV4 {
            frontend,
            client_addr,
        };
        maps.affinity.insert(key, to_backend(backend_id));
    }
    let socket = SockAffinityKeyV4 {
        frontend,
        netns_cookie: 9,
    };
    maps.sock_affinity.insert(socket, to_backend(1));

    assert_eq!(
        stale::forget(&mut maps, &[], &[]).unwrap(),
        stale::Forgotten::default()
    );
    let forgotten = stale::forget(&mut maps, &[(1, gone.0, gone.1)], &[]).unwrap();
    assert_eq!(
        forgotten,
        stale::Forgotten {
            entries: 4,
            flows: 1,
            flows_v6: 0
        },
        "both entries of the UDP flow, and both affinities"
    );
    let left: Vec<_> = maps
        .ct
        .iter()
        .map(|(k, v)| (k.proto, k.dir == CT_DIR_FORWARD, v.nat_addr))
        .collect();
    assert_eq!(
        left.len(),
        4,
        "the other backend's flow and the TCP one stay"
    );
    assert!(!left.contains(&(PROTO_UDP, true, net(gone).0)), "{left:?}");
    assert_eq!(
        maps.affinity
            .values()
            .map(|v| v.backend_id)
            .collect::<Vec<_>>(),
        [2]
    );
    assert!(maps.sock_affinity.is_empty());
}

fn dual_stack(vip_last: u8, backends: &[u8], backends_v6: &[u16]) -> ServicePort {
    let mut sp = service(vip_last, backends);
    sp.frontends_v6 = vec![Frontend {
        addr: Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, vip_last.into()),
        port: 80,
        kind: FrontendKind::ClusterIp,
        on_node: false,
    }];
    sp.cluster_backends_v6 = backends_v6
        .iter()
        .map(|&last| backend_at(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, last)))
        .collect();
    sp
}

/// A dual-stack Service port's IPv6 ClusterIP gets a ring of IPv6 backends
/// of its own under the same service id, in the IPv4 write order: its
/// backends and ring before the frontend, the frontend removed before its
/// backends; and a restarted agent reads it all back.
#[test]
fn ipv6_cluster_ips_get_their_own_ring_in_the_same_write_order() {
    let (mut s, mut w) = fresh();
    let r = s
        .sync(&state(&[("a", dual_stack(1, &[1, 2], &[1, 2, 3]))]), &mut w)
        .unwrap();
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    assert_eq!((r.frontends, r.backends), (3, 5));
    let (key, fe6) = w
        .maps
        .frontends_v6
        .iter()
        .next()
        .map(|(k, v)| (*k, *v))
        .unwrap();
    assert_eq!(
        from_map_v6(key.addr),
        "fd00:96::1".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(
        (u16::from_be(key.port), key.proto),
        (80, lb_common::PROTO_TCP)
    );
    let fe4 = w.maps.frontends.values().next().unwrap();
    assert_eq!(fe6.svc_id, fe4.svc_id);
    assert_ne!(fe6.ring_offset, fe4.ring_offset);
    let ring = &w.maps.slots[fe6.ring_offset as usize..(fe6.ring_offset + fe6.ring_size) as usize];
    assert!(ring.iter().all(|id| w.maps.backends_v6.contains_key(id)));
    assert!(ring.iter().all(|id| !w.maps.backends.contains_key(id)));
    let position = |log: &[String], prefix: &str| log.iter().position(|op| op.starts_with(prefix));
    let frontend = position(&w.log, "frontend v6").unwrap();
    assert!(
        w.log
            .iter()
            .rposition(|op| op.starts_with("backend v6"))
            .unwrap()
            < frontend
    );
    assert!(w.log.iter().rposition(|op| op.starts_with("ring")).unwrap() < frontend);

    let mut restarted = Syncer::recover(&mut w).unwrap();
    let same = state(&[("a", dual_stack(1, &[1, 2], &[1, 2, 3]))]);
    assert_eq!(restarted.sync(&same, &mut w).unwrap().writes, 0);

    w.log.clear();
    let report = restarted
        .sync(&state(&[("a", dual_stack(1, &[1, 2], &[2]))]), &mut w)
        .unwrap();
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    assert_eq!(w.maps.backends_v6.len(), 1);
    let gone = |last| (Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, last), 8080);
    let mut removed_v6: Vec<_> = report.removed_v6.iter().map(|&(_, a, p)| (a, p)).collect();
    removed_v6.sort();
    assert_eq!(
        removed_v6,
        [gone(1), gone(3)],
        "for their sockets to be closed"
    );
    assert_eq!(report.removed, [], "no IPv4 backend went");
    let frontend = position(&w.log, "frontend v6").unwrap();
    assert!(
        position(&w.log, "remove backend v6").unwrap() > frontend,
        "{:#?}",
        w.log
    );

    w.log.clear();
    restarted.sync(&state(&[]), &mut w).unwrap();
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    let removed = position(&w.log, "remove frontend v6").unwrap();
    assert!(
        position(&w.log, "remove backend v6").unwrap() > removed,
        "{:#?}",
        w.log
    );
    assert!(w.maps.frontends_v6.is_empty() && w.maps.backends_v6.is_empty());
}

/// An IPv6 backend that does not fit `BACKENDS_V6` refuses its Service
/// port, IPv4 half and all, before anything of it is written.
#[test]
fn ipv6_backends_beyond_the_map_refuse_the_service_port() {
    let mut w = FakeServiceMaps::with_room(super::Room {
        backends_v6: 2,
        ..room()
    });
    let mut s = Syncer::recover(&mut w).unwrap();
    let r = s
        .sync(
            &state(&[
                ("a", dual_stack(1, &[1], &[1, 2])),
                ("b", dual_stack(2, &[2], &[3])),
            ]),
            &mut w,
        )
        .unwrap();
    let refused: Vec<&str> = r.refused.iter().map(|f| f.service.name.as_str()).collect();
    assert_eq!(refused, ["b"]);
    assert!(
        r.refused[0].reason.contains("BACKENDS_V6"),
        "{:?}",
        r.refused
    );
    assert_eq!((w.maps.frontends.len(), w.maps.frontends_v6.len()), (2, 1));
}

/// The IPv6 frontend at `addr` and `port`.
fn frontend_v6(w: &FakeServiceMaps, addr: &str, port: u16) -> lb_common::FrontendValue {
    let addr: Ipv6Addr = addr.parse().unwrap();
    w.maps
        .frontends_v6
        .iter()
        .find(|(k, _)| from_map_v6(k.addr) == addr && k.port == port.to_be())
        .map(|(_, v)| *v)
        .unwrap()
}

/// The distinct IPv6 backends of `fe`'s ring, sorted.
fn ring_v6(w: &FakeServiceMaps, fe: &lb_common::FrontendValue) -> Vec<Ipv6Addr> {
    let slots = &w.maps.slots[fe.ring_offset as usize..(fe.ring_offset + fe.ring_size) as usize];
    let mut members: Vec<Ipv6Addr> = slots
        .iter()
        .map(|id| from_map_v6(w.maps.backends_v6[id].addr))
        .collect();
    members.sort();
    members.dedup();
    members
}

/// A dual-stack Service port's IPv6 NodePort, ingress IP and externalIP
/// are external frontends as the IPv4 ones are: one ring of its external
/// IPv6 backends, the external policy's flags; a restarted agent reads
/// that ring back apart from the ClusterIP's, and removing the Service
/// port leaves what a fresh sync of the rest writes.
#[test]
fn ipv6_external_frontends_get_an_external_ring_and_policies() {
    use lb_common::{FE_DROP_EMPTY, FE_EXTERNAL, FE_SOURCE_RANGES};
    let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let at = |addr: &str, port: u16, kind: FrontendKind| Frontend {
        addr: v6(addr),
        port,
        kind,
        on_node: kind == FrontendKind::NodePort,
    };
    let mut sp = dual_stack(1, &[1, 2], &[1, 2, 3]);
    sp.frontends_v6.extend([
        at("fd00:1::10", 30001, FrontendKind::NodePort),
        at("2001:db8:1::1", 80, FrontendKind::LoadBalancer),
        at("2001:db8::7", 80, FrontendKind::ExternalIp),
    ]);
    sp.frontends_v6.sort();
    sp.external_policy_local = true;
    sp.external_backends_v6 = vec![Backend {
        is_local: true,
        ..backend_at(Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 2))
    }];
    sp.load_balancer_source_ranges_v6 = vec![(v6("2001:db8:ff::"), 48)];
    let other = ("b", dual_stack(2, &[3], &[3]));
    let (mut s, mut w) = fresh();
    s.sync(&state(&[("a", sp.clone()), other.clone()]), &mut w)
        .unwrap();
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    let cluster_ip = frontend_v6(&w, "fd00:96::1", 80);
    assert_eq!(cluster_ip.flags, 0);
    assert_eq!(ring_v6(&w, &cluster_ip).len(), 3);
    let external = [
        frontend_v6(&w, "fd00:1::10", 30001),
        frontend_v6(&w, "2001:db8:1::1", 80),
        frontend_v6(&w, "2001:db8::7", 80),
    ];
    for e in &external {
        assert_eq!(e.flags, FE_EXTERNAL | FE_DROP_EMPTY | FE_SOURCE_RANGES);
        assert_eq!(
            (e.ring_offset, e.svc_id),
            (external[0].ring_offset, cluster_ip.svc_id)
        );
        assert_eq!(ring_v6(&w, e), [v6("fd00:244::2")]);
    }
    assert_ne!(external[0].ring_offset, cluster_ip.ring_offset);
    let v4_rings: Vec<u32> = w.maps.frontends.values().map(|f| f.ring_offset).collect();
    assert!(!v4_rings.contains(&external[0].ring_offset));
    let svc_id = cluster_ip.svc_id;
    assert_eq!(
        w.maps.source_ranges.iter().copied().collect::<Vec<_>>(),
        [(svc_id, IpAddr::V6(v6("2001:db8:ff::")), 48)],
        "the IPv6 range, and nothing else, is written"
    );

    let mut restarted = Syncer::recover(&mut w).unwrap();
    let same = state(&[("a", sp.clone()), other.clone()]);
    assert_eq!(restarted.sync(&same, &mut w).unwrap().writes, 0);

    // As kube-proxy filters ranges per family, IPv4 ranges leave the IPv6
    // frontends open, and under Cluster policy an empty ring is no reason
    // to drop.
    let mut cluster_policy = sp.clone();
    cluster_policy.external_policy_local = false;
    cluster_policy.load_balancer_source_ranges_v6 = Vec::new();
    cluster_policy.load_balancer_source_ranges = vec![(Ipv4Addr::new(203, 0, 113, 0), 24)];
    cluster_policy.external_backends_v6 = cluster_policy.cluster_backends_v6.clone();
    restarted
        .sync(&state(&[("a", cluster_policy), other.clone()]), &mut w)
        .unwrap();
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    let external = frontend_v6(&w, "2001:db8::7", 80);
    assert_eq!(external.flags, FE_EXTERNAL);
    assert_eq!(ring_v6(&w, &external).len(), 3);
    assert_eq!(
        w.maps.source_ranges.iter().copied().collect::<Vec<_>>(),
        [(svc_id, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 0)), 24)]
    );
    sp.load_balancer_source_ranges_v6 = Vec::new();
    restarted
        .sync(&state(&[("a", sp), other.clone()]), &mut w)
        .unwrap();
    assert_eq!(
        frontend_v6(&w, "2001:db8::7", 80).flags,
        FE_EXTERNAL | FE_DROP_EMPTY
    );

    let rest = state(&[other]);
    restarted.sync(&rest, &mut w).unwrap();
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
    assert_eq!(view(&w), view(&synced_fresh(&rest, room())));
}
