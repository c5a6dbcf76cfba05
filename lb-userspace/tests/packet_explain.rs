//! `xdplb explain` decides new flows with `lb_common::decide` over the
//! pinned maps read from userspace (`MapsView`); the program decides with
//! the same function over its own view. Here both see the same maps and
//! the same frames, and must agree on every kind of decision: ring,
//! affinity, source ranges, empty rings under either traffic policy,
//! unknown ports and addresses that are no frontend.
mod common;

use std::net::Ipv4Addr;

use aya::maps::lpm_trie::Key;
use common::{
    load,
    packets::{parse_checked, tcp_frame, Tcp},
    Provision,
};
use lb_common::{
    decide::{self, By, Client, Decision},
    flow::flow_hash_v4,
    AffinityKeyV4, AffinityValue, FrontendKeyV4, FrontendValue, Reason, SourceRangeKeyV4,
    FE_DROP_EMPTY, FE_EXTERNAL, FE_SOURCE_RANGES, PROTO_TCP,
};
use lb_userspace::datapath::{now_ns, run_frame, Datapath, MapsView, PROGRAM};

const RING: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const AFFINITY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const RANGED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
const LOCAL_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 14);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 15);
const PORT: u16 = 80;
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 100);
const ALLOWED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

fn backends() -> Vec<(Ipv4Addr, u16)> {
    (1..=3)
        .map(|i| (Ipv4Addr::new(10, 244, i, 2), 8080))
        .collect()
}

fn key(addr: Ipv4Addr, port: u16) -> FrontendKeyV4 {
    FrontendKeyV4 {
        addr: common::be(addr),
        port: port.to_be(),
        proto: PROTO_TCP,
        _pad: 0,
    }
}

fn provision(dp: &mut Datapath) {
    let mut p = Provision::new();
    p.service(dp, 1, (RING, PORT), PROTO_TCP, &backends());
    let with = |flags, affinity_timeout_s| FrontendValue {
        flags,
        affinity_timeout_s,
        ..FrontendValue::default()
    };
    p.service_with(
        dp,
        2,
        (AFFINITY, PORT),
        PROTO_TCP,
        &backends(),
        0,
        with(0, 600),
    );
    p.service_with(
        dp,
        3,
        (RANGED, PORT),
        PROTO_TCP,
        &backends(),
        0,
        with(FE_EXTERNAL | FE_SOURCE_RANGES, 0),
    );
    p.service_with(
        dp,
        4,
        (LOCAL_EMPTY, PORT),
        PROTO_TCP,
        &[],
        0,
        with(FE_DROP_EMPTY, 0),
    );
    p.service(dp, 5, (EMPTY, PORT), PROTO_TCP, &[]);
    let range = SourceRangeKeyV4 {
        svc_id_be: 3u32.to_be(),
        addr: common::be(Ipv4Addr::new(203, 0, 113, 0)),
    };
    dp.maps
        .source_ranges_mut()
        .insert(&Key::new(32 + 24, range), 1, 0)
        .unwrap();
    // The affinity client sticks to the third backend, wherever its hash
    // would land on the ring.
    let third = dp
        .maps
        .backends()
        .iter()
        .filter_map(|b| b.ok())
        .position(|b| b.addr == common::be(backends()[2].0))
        .unwrap() as u32;
    let entry = AffinityKeyV4 {
        frontend: key(AFFINITY, PORT),
        client_addr: common::be(CLIENT),
    };
    let value = AffinityValue {
        last_seen_ns: now_ns(),
        backend_id: third,
        _pad: 0,
    };
    dp.maps.affinity_mut().insert(entry, value, 0).unwrap();
}

/// Decides the flow in userspace, then runs its SYN through the program,
/// and checks the program did what the decision says.
fn agree(dp: &Datapath, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Decision {
    let fe_key = key(dst.0, dst.1);
    let src_be = common::be(src.0);
    let decision = decide::new_flow(
        &MapsView(&dp.maps),
        &fe_key,
        src_be,
        false,
        &Client::Addr(src_be),
        now_ns(),
        || flow_hash_v4(src_be, fe_key.addr, src.1.to_be(), fe_key.port, PROTO_TCP),
    );
    let before = dp.maps.reason_totals().unwrap();
    let out = run_frame(
        dp.program(PROGRAM).unwrap(),
        &tcp_frame(src, dst, Tcp::syn(), b"", &[]),
        1,
    )
    .unwrap();
    let after = dp.maps.reason_totals().unwrap();
    let counted: Vec<Reason> = before
        .iter()
        .zip(&after)
        .filter(|((_, b), (_, a))| a > b)
        .map(|((r, _), _)| *r)
        .collect();
    let expected = match decision {
        Decision::NotOurs => Reason::PassNotOurs,
        Decision::Refused(reason) => reason,
        Decision::Backend { backend, .. } => {
            let p = parse_checked(&out.frame);
            assert_eq!(
                (common::be(p.dst), p.dport.to_be()),
                (backend.addr, backend.port),
                "{src:?} -> {dst:?}: {decision:?}"
            );
            Reason::XlateNew
        }
    };
    assert!(
        counted.contains(&expected),
        "{src:?} -> {dst:?}: decided {decision:?}, the program counted {counted:?}"
    );
    decision
}

#[test]
fn explain_and_the_program_decide_alike() {
    let mut dp = load();
    provision(&mut dp);
    let mut slots = std::collections::BTreeSet::new();
    for port in 0..40 {
        match agree(&dp, (CLIENT, 20000 + port), (RING, PORT)) {
            Decision::Backend {
                by: By::Ring { slot, .. },
                ..
            } => {
                slots.insert(slot);
            }
            other => panic!("ring: {other:?}"),
        }
    }
    assert!(slots.len() > 10, "flows spread over the ring: {slots:?}");
    for port in 0..10 {
        let d = agree(&dp, (CLIENT, 30000 + port), (AFFINITY, PORT));
        assert!(
            matches!(d, Decision::Backend { by: By::Affinity, backend, .. } if backend.addr == common::be(backends()[2].0)),
            "{d:?}"
        );
    }
    assert_eq!(
        agree(&dp, (CLIENT, 40000), (RANGED, PORT)),
        Decision::Refused(Reason::DropSourceRange)
    );
    assert!(matches!(
        agree(&dp, (ALLOWED, 40000), (RANGED, PORT)),
        Decision::Backend { .. }
    ));
    assert_eq!(
        agree(&dp, (CLIENT, 40001), (LOCAL_EMPTY, PORT)),
        Decision::Refused(Reason::DropNoLocalBackend)
    );
    assert_eq!(
        agree(&dp, (CLIENT, 40002), (EMPTY, PORT)),
        Decision::Refused(Reason::RejectNoBackend)
    );
    assert_eq!(
        agree(&dp, (CLIENT, 40003), (RING, PORT + 1)),
        Decision::Refused(Reason::RejectUnknownPort)
    );
    assert_eq!(
        agree(&dp, (CLIENT, 40004), (Ipv4Addr::new(10, 1, 2, 3), PORT)),
        Decision::NotOurs
    );
}
