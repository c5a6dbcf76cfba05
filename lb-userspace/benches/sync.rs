//! Sync cost: a cold sync of 10,000 Services with 10 endpoints each, and a
//! single EndpointSlice change on top of it, against the in-memory writer
//! and against the real (memory-mapped and pinned-style) maps.
//! Run with `cargo xtask bench`. Targets: cold < 2 s, one change < 10 ms.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_userspace::{
    datapath::{Capacities, Datapath},
    model::{Backend, DesiredState, Frontend, FrontendKind, Proto, ServicePort, ServicePortId},
    sync::{fake::FakeServiceMaps, ServiceMaps, Syncer},
};

const SERVICES: u32 = 10_000;
const ENDPOINTS: u32 = 10;
const CHANGES: usize = 20;

fn service(i: u32, generation: u32) -> (ServicePortId, ServicePort) {
    let id = ServicePortId {
        namespace: "bench".into(),
        name: format!("svc-{i}"),
        port_name: "http".into(),
        protocol: Proto::Tcp,
    };
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i);
    let backends = (0..ENDPOINTS)
        .map(|e| Backend {
            addr: Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 16 + e + generation * 8,
            ),
            port: 8080,
            node_name: None,
            is_local: false,
            ready: true,
            serving: true,
            terminating: false,
        })
        .collect::<Vec<_>>();
    let sp = ServicePort {
        frontends: vec![Frontend {
            addr: vip,
            port: 80,
            kind: FrontendKind::ClusterIp,
            on_node: false,
        }],
        cluster_backends: backends.clone(),
        external_backends: backends,
        ..Default::default()
    };
    (id, sp)
}

fn cluster() -> DesiredState {
    DesiredState {
        services: (0..SERVICES).map(|i| service(i, 0)).collect(),
        problems: Vec::new(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Cold sync time, then the median time of syncs that each change one
/// Service's endpoints (half of them replaced).
fn measure(w: &mut dyn ServiceMaps, mut syncer: Syncer) -> (Duration, Duration, usize) {
    let mut desired = cluster();
    let t = Instant::now();
    let report = syncer.sync(&desired, w).expect("cold sync");
    let cold = t.elapsed();
    assert_eq!(report.services, SERVICES as usize);
    let mut times = Vec::new();
    let mut writes = 0;
    for c in 0..CHANGES {
        let i = (c as u32 * 487) % SERVICES;
        let generation = 1 + (c as u32 % 2);
        let (id, sp) = service(i, generation);
        desired.services.insert(id, sp);
        let t = Instant::now();
        writes = syncer.sync(&desired, w).expect("incremental sync").writes;
        times.push(t.elapsed());
    }
    (cold, median(times), writes)
}

fn main() {
    let mut fake = FakeServiceMaps::new(1 << 24);
    fake.check = false;
    let syncer = Syncer::recover(&mut fake).unwrap();
    let (fake_cold, fake_one, fake_writes) = measure(&mut fake, syncer);

    if let Err(e) = testbed::netns::require_root("sync benchmark (real maps)") {
        panic!("{e:#}");
    }
    let mut dp = Datapath::load(&Capacities::default(), None).expect("load");
    let syncer = Syncer::recover(&mut dp.maps).unwrap();
    let (real_cold, real_one, real_writes) = measure(&mut dp.maps, syncer);

    println!("\nsync of {SERVICES} Services x {ENDPOINTS} endpoints (release build)");
    println!(
        "{:<16}{:>14}{:>26}{:>16}",
        "writer", "cold sync", "one EndpointSlice change", "writes/change"
    );
    println!(
        "{:<16}{:>12.0}ms{:>24.2}ms{:>16}",
        "in-memory",
        fake_cold.as_secs_f64() * 1e3,
        fake_one.as_secs_f64() * 1e3,
        fake_writes
    );
    println!(
        "{:<16}{:>12.0}ms{:>24.2}ms{:>16}",
        "kernel maps",
        real_cold.as_secs_f64() * 1e3,
        real_one.as_secs_f64() * 1e3,
        real_writes
    );
    println!("targets: cold < 2000 ms, one change < 10 ms (median of {CHANGES})");
}
